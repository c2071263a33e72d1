import Foundation
import MambaKit
import Testing

/// The n-gram baseline (Baselines/NGram.swift): every conditional distribution sums to one, the bits agree with an
/// independent Python implementation (scripts/ngram_reference.py), more context helps on text, and the command.
@Suite struct NGramTests {
    /// Streams over a small vocabulary with structure (a noisy cycle), some shorter than the order.
    static func streams(seed: UInt64, count: Int, vocabulary: Int) -> [[Int32]] {
        var rng = RNG(seed: seed)
        return (0..<count).map { i in
            let n = i % 7 == 0 ? rng.int(below: 3) : 20 + rng.int(below: 60)
            var s: [Int32] = []
            var x = rng.int(below: vocabulary)
            for _ in 0..<n {
                x = rng.uniform() < 0.7 ? (x + 1) % vocabulary : rng.int(below: vocabulary)
                s.append(Int32(x))
            }
            return s
        }
    }

    @Test(arguments: [1, 2, 3, 4])
    func distributionsSumToOne(order: Int) throws {
        let V = 7
        let m = try NGramModel(order: order, vocabulary: V)
        try m.fit(Self.streams(seed: 1, count: 40, vocabulary: V))
        var rng = RNG(seed: 9)
        for _ in 0..<50 {
            // Contexts seen and unseen, of every length up to the order.
            let ctx = (0..<rng.int(below: order)).map { _ in Int32(rng.int(below: V)) }
            let total = (0..<V).reduce(0.0) { $0 + m.probability(Int32($1), context: ctx[...]) }
            #expect(abs(total - 1) < 1e-12, "context \(ctx): \(total)")
        }
    }

    @Test(arguments: [1, 2, 3, 5])
    func bitsMatchThePythonReference(order: Int) throws {
        let python = "/usr/bin/python3"
        try #require(FileManager.default.isExecutableFile(atPath: python), "\(python) is missing: \(NotebookTests.installHint)")
        let V = 6
        let train = Self.streams(seed: 2, count: 60, vocabulary: V), test = Self.streams(seed: 3, count: 20, vocabulary: V)
        let m = try NGramModel(order: order, vocabulary: V)
        try m.fit(train)
        let ours = m.bitsPerToken(test)
        let tmp = TempDir()
        let input = tmp.file("streams.json")
        let json = try JSONSerialization.data(withJSONObject: ["train": train.map { $0.map(Int.init) }, "test": test.map { $0.map(Int.init) }])
        try json.write(to: URL(fileURLWithPath: input))
        let r = try NotebookTests.run("/bin/sh", ["-c", "\(python) scripts/ngram_reference.py \(order) \(V) < '\(input)'"], timeout: 60)
        try #require(r.status == 0, "\(r.stderr)")
        let ref = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(ref["tokens"] as? Int == ours.tokens)
        let bits = try #require(ref["bits"] as? Double)
        #expect(abs(bits - ours.bits) < 1e-9, "order \(order): \(ours.bits) vs \(bits)")
        let d = ref["discounts"] as? [Double] ?? []
        #expect(d.count == order && zip(m.discounts, d).allSatisfy { abs($0 - $1) < 1e-15 }, "\(m.discounts) vs \(d)")
    }

    @Test func refusesWhatItCannotCount() throws {
        #expect(throws: MambaKitError.self) { _ = try NGramModel(order: 0, vocabulary: 256) }
        #expect(throws: MambaKitError.self) { _ = try NGramModel(order: 3, vocabulary: 1) }
        let m = try NGramModel(order: 2, vocabulary: 4)
        #expect(throws: MambaKitError.self) { try m.fit([[0, 1, 4]]) }
    }

    @Test(.serialized) func command() throws {
        var bits: [Double] = []
        for order in [1, 3] {
            let r = try CLI.run(["ngram", "--train", "samples/text/genesis.txt", "--data", "samples/text/ruth.txt",
                                 "--order", "\(order)", "--json"])
            try #require(r.status == 0, "\(r.stderr)")
            let j = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            bits.append(try #require(j["bits_per_byte"] as? Double))
        }
        #expect(bits[1] < bits[0] - 1, "a trigram reads text better than byte frequencies: \(bits)")
        let a = try CLI.run(["ngram", "--format", "audio", "--train", "samples/audio/fsdd/train", "--data",
                             "samples/audio/fsdd/test", "--order", "2", "--json"])
        #expect(a.status == 0, "\(a.stderr)")
        let j = try #require(try JSONSerialization.jsonObject(with: a.stdout) as? [String: Any])
        #expect(j["sample_rate"] as? Int == 8000 && (j["bits_per_sample"] as? Double ?? 9) < 8)
        let bad = try CLI.run(["ngram", "--train", "samples/text/genesis.txt", "--data", "samples/text/ruth.txt", "--order", "9"])
        #expect(bad.status != 0 && bad.stderr.contains("--order"), "\(bad.stderr)")
    }
}
