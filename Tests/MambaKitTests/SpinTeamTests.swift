import Foundation
import MambaKit
import Testing

/// The step's thread team: every member runs every loop exactly once, over its own static range, whether the
/// helpers were spinning or asleep when the loop was published, and a dropped team stops its threads.
@Suite struct SpinTeamTests {
    @Test(arguments: [1, 2, 3])
    func everyLoopCoversItsRangeOnce(size: Int) {
        let team = SpinTeam(size: size)
        let count = 37
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
        defer { hits.deallocate() }
        hits.initialize(repeating: 0, count: count)
        // Many short loops back to back, as a generation step publishes them (size 3 oversubscribes 2 cores:
        // slow, as spinning then is, but it must still be right).
        for _ in 0..<5_000 {
            team.forRanges(count) { lo, hi in for i in lo..<hi { hits[i] += 1 } }
        }
        #expect((0..<count).allSatisfy { hits[$0] == 5_000 }, "\((0..<count).map { hits[$0] })")
        // Each member's range is the same every time (static split).
        let owner = UnsafeMutablePointer<Int>.allocate(capacity: count)
        defer { owner.deallocate() }
        team.run { w in
            let lo = count * w / size, hi = count * (w + 1) / size
            for i in lo..<hi { owner[i] = w }
        }
        let expected = (0..<count).map { i in (0..<size).first { count * ($0 + 1) / size > i }! }
        #expect((0..<count).map { owner[$0] } == expected)
    }

    @Test func helpersThatFellAsleepWakeForTheNextLoop() throws {
        // A tiny spin limit: helpers go to sleep almost at once, so every loop after a pause has to wake them.
        let team = SpinTeam(size: 3, spinLimit: 10)
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 3)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0, count: 3)
        for round in 0..<50 {
            if round % 5 == 0 { usleep(2_000) }
            team.run { w in counts[w] += 1 }
        }
        #expect((0..<3).map { counts[$0] } == [50, 50, 50])
    }
}
