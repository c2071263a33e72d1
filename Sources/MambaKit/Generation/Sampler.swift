/// Picks the next token from a row of logits: greedy at temperature 0, otherwise softmax(logits / T) restricted
/// to the `topK` most likely tokens and then to the smallest set whose probability reaches `topP` (the order of HF's
/// logits warpers: temperature, top-k, top-p), sampled with the run's seeded RNG.
public struct Sampler: Sendable {
    public var temperature: Double = 1
    public var topK: Int = 0
    public var topP: Double = 1

    public init(temperature: Double = 1, topK: Int = 0, topP: Double = 1) throws {
        guard temperature >= 0, temperature.isFinite else {
            throw MambaKitError(.usage, "--temperature must be ≥ 0 (got \(temperature))")
        }
        guard topK >= 0 else { throw MambaKitError(.usage, "--top-k must be ≥ 0 (got \(topK))") }
        guard topP > 0, topP <= 1 else { throw MambaKitError(.usage, "--top-p must be in (0, 1] (got \(topP))") }
        self.temperature = temperature; self.topK = topK; self.topP = topP
    }

    public func sample(_ logits: UnsafePointer<Float>, V: Int, rng: inout RNG) -> Int32 {
        if temperature == 0 {
            // Greedy: the first maximum, as torch.argmax.
            var best = 0
            for v in 1..<V where logits[v] > logits[best] { best = v }
            return Int32(best)
        }
        if topK == 0 && topP >= 1 {
            // Plain sampling needs no order: draw from the unsorted distribution (the same distribution, without
            // sorting V tokens per step; a different token for the same random number than the sorted path).
            var mx = logits[0]
            for v in 1..<V { mx = max(mx, logits[v]) }
            let invT = 1 / temperature
            return withUnsafeTemporaryAllocation(of: Double.self, capacity: V) { p in
                var z = 0.0
                for v in 0..<V {
                    p[v] = exp((Double(logits[v]) - Double(mx)) * invT)
                    z += p[v]
                }
                var r = rng.uniform() * z
                for v in 0..<V {
                    r -= p[v]
                    if r < 0 { return Int32(v) }
                }
                // Rounding left r ≥ 0 after the last token: the last token with non-zero probability.
                var last = V - 1
                while last > 0 && p[last] == 0 { last -= 1 }
                return Int32(last)
            }
        }
        var order = Array(0..<V)
        let scaled = (0..<V).map { Double(logits[$0]) / temperature }
        order.sort { scaled[$0] > scaled[$1] || (scaled[$0] == scaled[$1] && $0 < $1) }
        var keep = topK > 0 ? min(topK, V) : V
        let mx = scaled[order[0]]
        var probs = order.prefix(keep).map { exp(scaled[$0] - mx) }
        var z = probs.reduce(0, +)
        if topP < 1 {
            var cum = 0.0
            var n = 0
            while n < keep {
                cum += probs[n] / z
                n += 1
                if cum >= topP { break }
            }
            keep = n
            probs = Array(probs.prefix(keep))
            z = probs.reduce(0, +)
        }
        var r = rng.uniform() * z
        for i in 0..<keep {
            r -= probs[i]
            if r < 0 { return Int32(order[i]) }
        }
        return Int32(order[keep - 1])
    }
}

#if canImport(Glibc)
import Glibc
#endif
