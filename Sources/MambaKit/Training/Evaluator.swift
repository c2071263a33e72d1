/// Exact negative log-likelihood of a whole token stream in constant memory: the stream is read piece by piece and
/// run through the model in chunks of `chunk` tokens with the recurrent state carried from one chunk to the next,
/// which gives the same numbers as one forward pass over the whole stream (tested). Token i+1 is predicted from
/// tokens 0…i; the first token is context only.
public enum Evaluator {
    public struct Result: Sendable {
        /// Σ −log p over predicted tokens (nats), and how many were predicted.
        public var sum: Double
        public var count: Int
        public var meanLoss: Double { count > 0 ? sum / Double(count) : .nan }
        public var bitsPerToken: Double { meanLoss / log(2.0) }
    }

    /// `read(max)` returns up to `max` next tokens, an empty array at the end.
    public static func nll(model: MambaModel, chunk: Int = 2048, progress: ((Int) -> Void)? = nil,
                           read: (Int) throws -> [Int32]) throws -> Result {
        let c = model.config
        // A chunk's workspace (its logits are chunk × vocabulary floats) stays within 256 MB: longer chunks are
        // split, which the carried state makes the same computation.
        // (A multiple of P for the multi-scale backbone, whose state continues only from one.)
        let chunk = c.chunkLength(min(max(1, chunk), Workspace.maxTokens(config: c, B: 1)))
        let state = RecurrentState(config: c, batch: 1)
        var wsFull: Workspace? = nil
        var pending = try read(chunk + 1)
        var result = Result(sum: 0, count: 0)
        var targets = [Int32](repeating: 0, count: chunk)
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
            let ce = targets.withUnsafeBufferPointer {
                CrossEntropy.forwardBackward(logits: ws.logits.ptr, targets: $0.baseAddress!, M: n, V: c.vocabSize,
                                             dlogits: nil, scale: 0)
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
    public static func nll(model: MambaModel, tokens: [Int32], chunk: Int = 2048) throws -> Result {
        var pos = 0
        return try nll(model: model, chunk: chunk) { maxCount in
            let n = min(maxCount, tokens.count - pos)
            defer { pos += n }
            return Array(tokens[pos..<(pos + n)])
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
