/// Token streams for language-model training: one stream per input file (or record), each split into a training part
/// and a held-out tail (`valFraction` of its tokens, at least one token). With `.wholeStreams`, whole streams are
/// held out instead (every ⌈1/valFraction⌉-th, at least one, never all): the right split for many short clips
/// (audio), where a tail of each would leave no clip long enough for a training window.
///
/// Training batches are random windows of L+1 tokens (inputs t…t+L−1, targets t+1…t+L) drawn with the run's RNG:
/// the stream with probability proportional to its training length, then a uniform start. Windows never cross
/// from one stream into another, nor from the training part into the held-out part.
public final class TokenCorpus {
    public struct Stream {
        public let name: String
        public let tokens: [Int32]
        /// Tokens [0, trainEnd) train; [trainEnd, count) are held out.
        public let trainEnd: Int
    }

    public let streams: [Stream]

    public enum Holdout: Sendable { case tails, wholeStreams }

    public init(streams named: [(name: String, tokens: [Int32])], valFraction: Double, holdout: Holdout = .tails) throws {
        guard !named.isEmpty else { throw MambaKitError(.usage, "no training data given") }
        if holdout == .wholeStreams && valFraction > 0 && named.count >= 2 {
            let every = max(2, Int((1 / valFraction).rounded(.up)))
            // Every `every`-th stream, or the last one when there are fewer than `every`.
            let held = named.count >= every ? Set(stride(from: every - 1, to: named.count, by: every)) : [named.count - 1]
            streams = named.enumerated().map { i, s in
                Stream(name: s.name, tokens: s.tokens, trainEnd: held.contains(i) ? 0 : s.tokens.count)
            }
            return
        }
        streams = named.map { s in
            let hold = valFraction > 0 ? max(1, Int((Double(s.tokens.count) * valFraction).rounded())) : 0
            return Stream(name: s.name, tokens: s.tokens, trainEnd: max(0, s.tokens.count - hold))
        }
    }

    public var trainTokens: Int { streams.reduce(0) { $0 + $1.trainEnd } }
    public var validationTokens: Int { streams.reduce(0) { $0 + ($1.tokens.count - $1.trainEnd) } }

    /// Fills `ids` and `targets` (each B·L) with B random windows of the training parts.
    public func sampleBatch(B: Int, L: Int, rng: inout RNG, ids: inout [Int32], targets: inout [Int32]) throws {
        // Streams long enough for one window of L+1 tokens.
        let usable = streams.filter { $0.trainEnd >= L + 1 }
        guard !usable.isEmpty else {
            let longest = streams.map(\.trainEnd).max() ?? 0
            throw MambaKitError(.usage, "sequence length \(L) needs at least \(L + 1) training tokens in one file; the longest training part has \(longest) (lower --seq-len or --val-fraction)")
        }
        // Each valid start position is equally likely: stream k has trainEnd − L of them.
        let weights = usable.map { $0.trainEnd - L }
        let total = weights.reduce(0, +)
        for b in 0..<B {
            var start = rng.int(below: total)
            var k = 0
            while start >= weights[k] { start -= weights[k]; k += 1 }
            let s = usable[k]
            for t in 0..<L {
                ids[b * L + t] = s.tokens[start + t]
                targets[b * L + t] = s.tokens[start + t + 1]
            }
        }
    }
}
