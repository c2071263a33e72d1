import Foundation

/// Fixed-length fragments cut from genomes for origin classification (the Mamba paper's great-apes task, §4.3.2:
/// which species does a fragment of length L come from?).
///
/// Each record of each source file is divided by position into consecutive train / validation / test stretches in the
/// given proportions, so fragments of different splits never overlap (nearby fragments of one split may). Fragment
/// starts are drawn uniformly (seeded) among the positions where a fragment fits inside one stretch of one record,
/// records weighted by how many such positions they have; fragments with more than `maxAmbiguous` of their bases
/// outside ACGT (either case) are redrawn. Output: `OUT/<split>/<class>.fa`, one record per fragment named
/// `<record>:<start>-<end>` (1-based, inclusive, as samtools writes regions).
public enum FragmentSampler {
    public struct Split: Sendable {
        public var name: String
        public var fraction: Double
        public var count: Int
        public init(name: String, fraction: Double, count: Int) {
            self.name = name
            self.fraction = fraction
            self.count = count
        }
    }

    /// Writes the fragments; returns the number written per split and class.
    @discardableResult
    public static func write(sources: [String], length: Int, splits: [Split], seed: UInt64, out: String,
                             maxAmbiguous: Double = 0.1) throws -> [String: [String: Int]] {
        guard length > 0 else { throw MambaKitError(.usage, "fragment length must be positive") }
        let total = splits.reduce(0) { $0 + $1.fraction }
        guard !splits.isEmpty, splits.allSatisfy({ $0.fraction > 0 && $0.count >= 0 }), abs(total - 1) < 1e-9 else {
            throw MambaKitError(.usage, "split fractions must be positive and sum to 1 (got \(splits.map(\.fraction)))")
        }
        var classes: [String: String] = [:]
        for s in sources {
            let c = ClassificationDataset.className(ofFile: (s as NSString).lastPathComponent)
            if let other = classes[c] { throw MambaKitError(.usage, "\(other) and \(s) both name the class '\(c)'") }
            classes[c] = s
        }
        var counts: [String: [String: Int]] = [:]
        var rng = RNG(seed: seed)
        for (c, path) in classes.sorted(by: { $0.key < $1.key }) {
            let records = try SequenceReader(path: path).readAll()
            for (k, split) in splits.enumerated() {
                // This split's stretch of every record: [lo, hi).
                let before = splits[..<k].reduce(0) { $0 + $1.fraction }
                let spans: [(rec: Int, lo: Int, hi: Int)] = records.indices.map { i in
                    let n = records[i].sequence.count
                    return (i, Int(Double(n) * before), Int(Double(n) * (before + split.fraction)))
                }
                let starts = spans.map { max(0, $0.hi - $0.lo - length + 1) }
                let available = starts.reduce(0, +)
                guard available > 0 || split.count == 0 else {
                    throw MambaKitError(.usage, "no room for a \(length)-base fragment in the \(split.name) part (\(Int(split.fraction * 100)) %) of any record", at: path)
                }
                var text = ""
                var written = 0
                var attempts = 0
                while written < split.count {
                    attempts += 1
                    if attempts > 50 * split.count + 1000 {
                        throw MambaKitError(.usage, "too few fragments with at most \(Int(maxAmbiguous * 100)) % non-ACGT bases in the \(split.name) part", at: path)
                    }
                    var pos = rng.int(below: available)
                    var r = 0
                    while pos >= starts[r] { pos -= starts[r]; r += 1 }
                    let start = spans[r].lo + pos
                    let seq = records[spans[r].rec].sequence[start..<(start + length)]
                    let ambiguous = seq.reduce(0) { n, b in
                        switch b | 0x20 {
                        case UInt8(ascii: "a"), UInt8(ascii: "c"), UInt8(ascii: "g"), UInt8(ascii: "t"): return n
                        default: return n + 1
                        }
                    }
                    if Double(ambiguous) > maxAmbiguous * Double(length) { continue }
                    text += ">\(records[spans[r].rec].name):\(start + 1)-\(start + length)\n"
                    text += String(decoding: seq, as: UTF8.self) + "\n"
                    written += 1
                }
                try ensureDirectory(out + "/" + split.name)
                try AtomicFile.writeText(text, to: out + "/" + split.name + "/" + c + ".fa")
                counts[split.name, default: [:]][c] = written
            }
        }
        return counts
    }
}
