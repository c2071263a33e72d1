import Foundation
import MambaKit
import Testing

/// The sampler draws from the distribution it promises: softmax(logits / T), then top-k, then top-p.
@Suite struct SamplerTests {
    static let logits: [Float] = [0, 1, 2, -1, 0.5]

    static func frequencies(_ s: Sampler, draws: Int, seed: UInt64) -> [Double] {
        var rng = RNG(seed: seed)
        var n = [Int](repeating: 0, count: logits.count)
        logits.withUnsafeBufferPointer { p in
            for _ in 0..<draws { n[Int(s.sample(p.baseAddress!, V: logits.count, rng: &rng))] += 1 }
        }
        return n.map { Double($0) / Double(draws) }
    }

    static func softmax(_ x: [Double]) -> [Double] {
        let m = x.max()!
        let e = x.map { exp($0 - m) }
        let z = e.reduce(0, +)
        return e.map { $0 / z }
    }

    /// Every frequency within 5 standard errors of its probability (a false failure has probability < 1e-5).
    func expectMatches(_ f: [Double], _ p: [Double], draws: Int, _ label: String) {
        for (i, (fi, pi)) in zip(f, p).enumerated() {
            let se = (pi * (1 - pi) / Double(draws)).squareRoot()
            #expect(abs(fi - pi) <= 5 * se + 1e-12, "\(label): token \(i) frequency \(fi), probability \(pi)")
        }
    }

    @Test func temperatureSamplingFollowsSoftmax() throws {
        let draws = 40_000
        for t in [1.0, 0.5, 2.0] {
            let f = Self.frequencies(try Sampler(temperature: t), draws: draws, seed: 7)
            expectMatches(f, Self.softmax(Self.logits.map { Double($0) / t }), draws: draws, "T = \(t)")
        }
    }

    @Test func topKAndTopPRestrictTheSupport() throws {
        let draws = 40_000
        // top-k 2: tokens 2 and 1 only, renormalised.
        let k = Self.frequencies(try Sampler(temperature: 1, topK: 2), draws: draws, seed: 8)
        let pk = Self.softmax([1, 2])
        expectMatches(k, [0, pk[0], pk[1], 0, 0], draws: draws, "top-k 2")
        // top-p 0.5: the most likely token alone holds ≥ 0.5 of the mass (softmax gives it 0.57).
        #expect(Self.softmax(Self.logits.map { Double($0) })[2] > 0.5)
        let p = Self.frequencies(try Sampler(temperature: 1, topP: 0.5), draws: 1000, seed: 9)
        #expect(p == [0, 0, 1, 0, 0])
        // Greedy: the first maximum.
        var rng = RNG(seed: 1)
        let tied: [Float] = [1, 3, 3, 0]
        #expect(tied.withUnsafeBufferPointer { try! Sampler(temperature: 0).sample($0.baseAddress!, V: 4, rng: &rng) } == 1)
    }
}
