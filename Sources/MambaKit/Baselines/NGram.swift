import Foundation

/// An interpolated Kneser–Ney n-gram model over a token vocabulary (Chen & Goodman 1999, "interpolated KN" with one
/// absolute discount per order, `D = n₁ / (n₁ + 2 n₂)` from that order's count-of-counts): the baseline a sequence
/// model must beat in bits per token (`mambakit ngram`; a sample trigram for audio, a byte n-gram for text).
///
///     P_n(w | u) = max(c(u w) − D_n, 0) / c(u) + D_n · N₁₊(u •) / c(u) · P_{n−1}(w | u′)     (c(u) > 0)
///     P_n(w | u) = P_{n−1}(w | u′)                                                          (c(u) = 0)
///
/// where `u′` drops the oldest token of `u`; the highest order counts occurrences, lower orders count distinct left
/// extensions (continuation counts `N₁₊(• u w)`); the lowest order interpolates with the uniform distribution over
/// the vocabulary, so every token has a probability > 0 and each distribution sums to 1. Counts never cross the
/// boundary of a stream; the first tokens of a stream use the orders their context allows.
public final class NGramModel {
    public let order: Int
    public let vocabulary: Int
    /// Per order n (index n − 1): context key → (token → count). Context keys pack n − 1 tokens base `vocabulary`.
    private var counts: [[Int: [Int32: Int]]]
    /// Per order: context key → (total count, distinct followers).
    private var totals: [[Int: (total: Int, distinct: Int)]] = []
    public private(set) var discounts: [Double] = []

    public init(order: Int, vocabulary: Int) throws {
        guard (1...6).contains(order) else { throw MambaKitError(.usage, "n-gram order must be in 1...6 (got \(order))") }
        guard vocabulary >= 2, vocabulary <= 1 << 16 else {
            throw MambaKitError(.usage, "n-gram vocabulary must be in 2...65536 (got \(vocabulary))")
        }
        // Context keys must fit an Int: vocabulary^(order − 1) ≤ 2^48.
        guard Double(order - 1) * log2(Double(vocabulary)) <= 48 else {
            throw MambaKitError(.usage, "n-gram order \(order) over \(vocabulary) tokens is too large")
        }
        self.order = order
        self.vocabulary = vocabulary
        counts = Array(repeating: [:], count: order)
    }

    private func key(_ s: UnsafeBufferPointer<Int32>, _ from: Int, _ to: Int) -> Int {
        var k = 0
        for i in from..<to { k = k * vocabulary + Int(s[i]) }
        return k
    }

    /// Counts every stream; tokens must lie in `0..<vocabulary`.
    public func fit(_ streams: [[Int32]]) throws {
        let N = order
        // Every token can add one n-gram type per order; a dictionary entry costs about 100 bytes.
        let tokens = streams.reduce(0) { $0 + $1.count }
        try MemoryBudget.check(bytes: MemoryBudget.product(MemoryBudget.product(tokens, N), 100),
                               "an order-\(N) n-gram model of \(tokens) tokens", hint: "less --train data or a lower --order")
        counts = Array(repeating: [:], count: N)
        // The n-grams (n < N) that open a stream: their left extension is the stream's start, counted once.
        var opening: [Set<[Int32]>] = Array(repeating: [], count: N)
        for (si, s) in streams.enumerated() {
            if let bad = s.first(where: { $0 < 0 || Int($0) >= vocabulary }) {
                throw MambaKitError(.usage, "token \(bad) outside the vocabulary of \(vocabulary) (stream \(si))")
            }
            s.withUnsafeBufferPointer { p in
                if p.count >= N {
                    for t in (N - 1)..<p.count { counts[N - 1][key(p, t - N + 1, t), default: [:]][p[t], default: 0] += 1 }
                }
            }
            for n in 1..<N where s.count >= n { opening[n].insert(Array(s[0..<n])) }
        }
        // Order n from order n + 1: one count per distinct (n+1)-gram x·v·w for v·w, plus the stream openings.
        for n in stride(from: N - 1, through: 1, by: -1) {
            let upper = counts[n]  // order n + 1: contexts of n tokens
            for (ctx, followers) in upper {
                // The context without its oldest token: ctx mod vocabulary^(n−1).
                var modulus = 1
                for _ in 0..<(n - 1) { modulus *= vocabulary }
                let lowerKey = ctx % modulus
                for w in followers.keys { counts[n - 1][lowerKey, default: [:]][w, default: 0] += 1 }
            }
            for g in opening[n] {
                var k = 0
                for t in g.dropLast() { k = k * vocabulary + Int(t) }
                counts[n - 1][k, default: [:]][g[n - 1], default: 0] += 1
            }
        }
        totals = counts.map { level in level.mapValues { f in (f.values.reduce(0, +), f.count) } }
        discounts = counts.map { level in
            var n1 = 0, n2 = 0
            for f in level.values { for c in f.values { if c == 1 { n1 += 1 } else if c == 2 { n2 += 1 } } }
            return n1 + n2 == 0 ? 0.5 : min(0.99, max(0.01, Double(n1) / Double(n1 + 2 * n2)))
        }
    }

    /// P(w | the `context` tokens before it), using the last `order − 1` of them (fewer at the start of a stream).
    public func probability(_ w: Int32, context: ArraySlice<Int32>) -> Double {
        let ctx = Array(context.suffix(order - 1))
        return probability(w, ctx, level: ctx.count + 1)
    }

    private func probability(_ w: Int32, _ ctx: [Int32], level n: Int) -> Double {
        let lower = n == 1 ? 1 / Double(vocabulary) : probability(w, ctx, level: n - 1)
        var k = 0
        for t in ctx.suffix(n - 1) { k = k * vocabulary + Int(t) }
        guard let tot = totals[n - 1][k], tot.total > 0 else { return lower }
        let c = Double(counts[n - 1][k]?[w] ?? 0)
        let D = discounts[n - 1]
        return max(c - D, 0) / Double(tot.total) + D * Double(tot.distinct) / Double(tot.total) * lower
    }

    /// Mean −log₂ P over the tokens of `streams` after the first of each (the first is context only, as in
    /// `Evaluator.nll`), and their count.
    public func bitsPerToken(_ streams: [[Int32]]) -> (bits: Double, tokens: Int) {
        var sum = 0.0, n = 0
        for s in streams where s.count >= 2 {
            for t in 1..<s.count {
                sum -= log2(probability(s[t], context: s[max(0, t - order + 1)..<t]))
                n += 1
            }
        }
        return (n > 0 ? sum / Double(n) : .nan, n)
    }
}
