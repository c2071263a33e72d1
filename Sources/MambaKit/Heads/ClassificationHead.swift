#if canImport(Glibc)
import Glibc
#endif

/// Sequence classification on the Mamba backbone: pool the final hidden states `h = RMSNorm_f(x_L)` `(B, L, D)` over
/// each sequence's valid positions, then `logits = pooled · Wᵀ + b` `(B, C)` with `W = classifier.weight [C, D]`,
/// `b = classifier.bias [C]`, and a (class-weighted) softmax cross-entropy.
///
/// Padded batches are right-padded: the backbone is causal, so positions after a sequence's end never reach its
/// valid positions, and pooling reads valid positions only; a padded batch therefore gives each sequence exactly its
/// own result (tested), with no masking inside the backbone. Saved for backward: nothing beyond `h` itself.
public enum Pooling: String, CaseIterable, Sendable {
    /// The mean of `h` over the sequence's positions (Caduceus's and HyenaDNA's default).
    case mean
    /// `h` at the last valid position: the state that has read the whole sequence.
    case last
}

/// How a DNA classifier treats the two strands at inference (DESIGN.md §3).
public enum StrandStrategy: String, CaseIterable, Sendable {
    /// The sequence as given.
    case none
    /// The mean of the logits of the sequence and of its reverse complement, so f(x) == f(rc(x)) exactly
    /// (Caduceus's post-hoc conjoining).
    case rcAverage = "rc-average"
}

public enum ClassificationHead {
    /// The head's tensors, added to a model's layout when its config names classes: `classifier.weight [C, D]`
    /// (decayed) and `classifier.bias [C]` (not decayed).
    static func addTensors(for c: MambaConfig, to lay: inout ArenaLayout) {
        guard !c.classLabels.isEmpty else { return }
        lay.add("classifier.weight", [c.classLabels.count, c.hiddenSize], decay: true)
        lay.add("classifier.bias", [c.classLabels.count], decay: false)
    }

    /// `out[b] = mean_{t < len_b} h[b, t]` (mean) or `h[b, len_b − 1]` (last); `h` `(B, L, D)`, `out` `(B, D)`.
    /// The mean sums in Double in time order.
    public static func poolForward(out: UnsafeMutablePointer<Float>, h: UnsafePointer<Float>, lengths: [Int], L: Int,
                                   D: Int, pooling: Pooling) {
        var acc = [Double](repeating: 0, count: D)
        for (b, n) in lengths.enumerated() {
            precondition(n >= 1 && n <= L, "sequence length \(n) outside 1...\(L)")
            let o = out + b * D
            switch pooling {
            case .last:
                o.update(from: h + (b * L + n - 1) * D, count: D)
            case .mean:
                for j in 0..<D { acc[j] = 0 }
                for t in 0..<n {
                    let row = h + (b * L + t) * D
                    for j in 0..<D { acc[j] += Double(row[j]) }
                }
                for j in 0..<D { o[j] = Float(acc[j] / Double(n)) }
            }
        }
    }

    /// Backward of `poolForward`: accumulates `∂/∂h` from `dpooled` `(B, D)`; padded positions get nothing.
    public static func poolBackward(dh: UnsafeMutablePointer<Float>, dpooled: UnsafePointer<Float>, lengths: [Int],
                                    L: Int, D: Int, pooling: Pooling) {
        for (b, n) in lengths.enumerated() {
            let g = dpooled + b * D
            switch pooling {
            case .last:
                let row = dh + (b * L + n - 1) * D
                for j in 0..<D { row[j] += g[j] }
            case .mean:
                let inv = 1 / Float(n)
                for t in 0..<n {
                    let row = dh + (b * L + t) * D
                    for j in 0..<D { row[j] += g[j] * inv }
                }
            }
        }
    }

    /// Class-weighted softmax cross-entropy (PyTorch `F.cross_entropy(weight:)`): the loss is
    /// `Σ_b w[y_b]·nll_b / Σ_b w[y_b]`; with `dlogits` it writes its gradient. `logits` `(B, C)`.
    /// Returns the weighted mean loss and the unweighted NLL sum.
    @discardableResult
    public static func crossEntropy(logits: UnsafePointer<Float>, labels: [Int], C: Int, classWeights: [Float]?,
                                    weightTotal: Float? = nil,
                                    dlogits: UnsafeMutablePointer<Float>?) -> (loss: Double, nllSum: Double) {
        let w = labels.map { classWeights?[$0] ?? 1 }
        // The weight of the whole batch (this process's rows are part of a larger batch in data-parallel training).
        let total = weightTotal ?? w.reduce(0, +)
        var loss = 0.0, nll = 0.0
        for (b, y) in labels.enumerated() {
            precondition(y >= 0 && y < C, "label \(y) outside 0..<\(C)")
            var t = Int32(y)
            let r = CrossEntropy.forwardBackward(logits: logits + b * C, targets: &t, M: 1, V: C,
                                                 dlogits: dlogits.map { $0 + b * C }, scale: w[b] / total)
            nll += r.sum
            loss += Double(w[b]) * r.sum
        }
        return (loss / Double(total), nll)
    }

    /// Row-wise softmax of `(B, C)` logits, in Double.
    public static func softmax(_ logits: [Float]) -> [Double] {
        let m = logits.max() ?? 0
        let e = logits.map { exp(Double($0 - m)) }
        let z = e.reduce(0, +)
        return e.map { $0 / z }
    }
}
