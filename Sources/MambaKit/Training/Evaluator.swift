/// Exact negative log-likelihood of a whole token stream in constant memory: the stream is read piece by piece and
/// run through the model in chunks of `chunk` tokens with the recurrent state carried from one chunk to the next,
/// which gives the same numbers as one forward pass over the whole stream (tested). Token i+1 is predicted from
/// tokens 0…i; the first token is context only.
public enum Evaluator {
    public struct Result: Sendable {
        /// Σ −log p over predicted tokens (nats), and how many were predicted.
        public var sum: Double
        public var count: Int
        /// With position buckets: the same sums per bucket of positions within the stream.
        public var byPosition: [Bucket] = []
        public var meanLoss: Double { count > 0 ? sum / Double(count) : .nan }
        public var bitsPerToken: Double { meanLoss / log(2.0) }

        public init(sum: Double, count: Int, byPosition: [Bucket] = []) {
            self.sum = sum; self.count = count; self.byPosition = byPosition
        }

        /// Adds another stream's result (with the same buckets).
        public mutating func add(_ other: Result) {
            sum += other.sum
            count += other.count
            if byPosition.isEmpty { byPosition = other.byPosition; return }
            for i in byPosition.indices where i < other.byPosition.count {
                byPosition[i].sum += other.byPosition[i].sum
                byPosition[i].count += other.byPosition[i].count
            }
        }
    }

    /// Predicted tokens at positions [from, to) of their stream (position i: the token with i tokens before it;
    /// `to` nil: no upper end).
    public struct Bucket: Sendable, Equatable {
        public var from: Int, to: Int?
        public var sum = 0.0, count = 0
        public var meanLoss: Double { count > 0 ? sum / Double(count) : .nan }
        public var bitsPerToken: Double { meanLoss / log(2.0) }

        /// Buckets [0, b₀), [b₀, b₁), …, [b_last, ∞) from increasing positive boundaries.
        public static func from(boundaries b: [Int]) -> [Bucket] {
            guard !b.isEmpty else { return [] }
            return zip([0] + b, b.map { Optional($0) } + [nil]).map { Bucket(from: $0, to: $1) }
        }

        /// Parses `1k,4k,16k,64k` (k = 1024, M = 1024²): increasing positive boundaries, at most 64.
        public static func parseBoundaries(_ text: String, at location: String? = nil) throws -> [Int] {
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !parts.isEmpty, parts.count <= 64 else {
                throw MambaKitError(.usage, "position buckets must be 1 to 64 boundaries (got \(parts.count))", at: location)
            }
            var out: [Int] = []
            for p in parts {
                var digits = Substring(p)
                var unit = 1
                if let last = digits.last, "kKmM".contains(last) {
                    unit = "kK".contains(last) ? 1024 : 1 << 20
                    digits = digits.dropLast()
                }
                guard let n = Int(digits), n > 0, n <= (1 << 40) / unit else {
                    throw MambaKitError(.usage, "position bucket boundary '\(p)' must be a positive count of tokens up to 2^40, like 4096 or 4k", at: location)
                }
                guard out.last.map({ n * unit > $0 }) ?? true else {
                    throw MambaKitError(.usage, "position bucket boundaries must increase (got \(text))", at: location)
                }
                out.append(n * unit)
            }
            return out
        }
    }

    /// `read(max)` returns up to `max` next tokens, an empty array at the end. With `buckets` (increasing
    /// boundaries, `Bucket.from(boundaries:)`), the result also holds the sums per bucket of positions.
    public static func nll(model: MambaModel, chunk: Int = 2048, buckets: [Int] = [], progress: ((Int) -> Void)? = nil,
                           read: (Int) throws -> [Int32]) throws -> Result {
        let c = model.config
        // A chunk's workspace (its logits are chunk × vocabulary floats) stays within 256 MB: longer chunks are
        // split, which the carried state makes the same computation.
        // (A multiple of P for the multi-scale backbone, whose state continues only from one.)
        let chunk = c.chunkLength(min(max(1, chunk), Workspace.maxTokens(config: c, B: 1)))
        let state = RecurrentState(config: c, batch: 1)
        var wsFull: Workspace? = nil
        var pending = try read(chunk + 1)
        var result = Result(sum: 0, count: 0, byPosition: Bucket.from(boundaries: buckets))
        var targets = [Int32](repeating: 0, count: chunk)
        var rowLoss = [Double](repeating: 0, count: buckets.isEmpty ? 0 : chunk)
        while pending.count >= 2 {
            // Inputs pending[0..<n], targets pending[1...n]; pending[n] starts the next chunk.
            let n = min(chunk, pending.count - 1)
            let ws: Workspace
            if n == chunk {
                if wsFull == nil {
                    wsFull = Workspace(config: c, B: 1, L: chunk, training: false)
                    wsFull!.parametersFrozen = true
                }
                ws = wsFull!
            } else {
                ws = Workspace(config: c, B: 1, L: n, training: false)
            }
            for t in 0..<n {
                let id = pending[t + 1]
                guard id >= 0 && Int(id) < c.vocabSize else {
                    throw MambaKitError(.usage, "token \(id) outside the model's vocabulary of \(c.vocabSize)",
                                        at: "token \(result.count + t + 1)")
                }
                targets[t] = id
            }
            if Int(pending[0]) >= c.vocabSize || pending[0] < 0 {
                throw MambaKitError(.usage, "token \(pending[0]) outside the model's vocabulary of \(c.vocabSize)")
            }
            pending.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: state) }
            let ce = targets.withUnsafeBufferPointer { t in
                rowLoss.withUnsafeMutableBufferPointer { r in
                    CrossEntropy.forwardBackward(logits: ws.logits.ptr, targets: t.baseAddress!, M: n, V: c.vocabSize,
                                                 dlogits: nil, scale: 0, rowLoss: r.isEmpty ? nil : r.baseAddress!)
                }
            }
            if !buckets.isEmpty {
                // Target t of this chunk is the stream's token result.count + t + 1.
                var k = 0
                for t in 0..<n {
                    let position = result.count + t + 1
                    while let to = result.byPosition[k].to, position >= to { k += 1 }
                    result.byPosition[k].sum += rowLoss[t]
                    result.byPosition[k].count += 1
                }
            }
            result.sum += ce.sum
            result.count += ce.count
            progress?(result.count)
            pending = Array(pending[n...])
            pending += try read(chunk + 1 - pending.count)
        }
        return result
    }

    /// Convenience over an in-memory stream.
    public static func nll(model: MambaModel, tokens: [Int32], chunk: Int = 2048, buckets: [Int] = []) throws -> Result {
        var pos = 0
        return try nll(model: model, chunk: chunk, buckets: buckets) { maxCount in
            let n = min(maxCount, tokens.count - pos)
            defer { pos += n }
            return Array(tokens[pos..<(pos + n)])
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
