/// Accuracy, macro-F1, Matthews correlation and the confusion matrix of a classifier's predictions.
///
/// MCC is the multiclass form (Gorodkin 2004; scikit-learn's `matthews_corrcoef`):
/// `(c·s − Σ_k p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²))` with `c` correct, `s` samples, `p_k`/`t_k` predicted/true
/// counts of class k; it is 0 when either factor under the root is 0. Macro-F1 averages per-class F1 with F1 = 0
/// for a class that is neither predicted nor present (scikit-learn's `zero_division=0`).
public struct ClassificationMetrics: Sendable, Equatable {
    /// `confusion[true][predicted]`.
    public let confusion: [[Int]]
    public var count: Int { confusion.reduce(0) { $0 + $1.reduce(0, +) } }

    public init(labels: [Int], predictions: [Int], classes C: Int) {
        precondition(labels.count == predictions.count)
        var m = [[Int]](repeating: [Int](repeating: 0, count: C), count: C)
        for (t, p) in zip(labels, predictions) { m[t][p] += 1 }
        confusion = m
    }

    public var accuracy: Double {
        let n = count
        return n == 0 ? .nan : Double((0..<confusion.count).reduce(0) { $0 + confusion[$1][$1] }) / Double(n)
    }

    /// Per-class F1, `2·tp / (2·tp + fp + fn)`.
    public var f1PerClass: [Double] {
        let C = confusion.count
        return (0..<C).map { k in
            let tp = confusion[k][k]
            let fn = confusion[k].reduce(0, +) - tp
            let fp = (0..<C).reduce(0) { $0 + confusion[$1][k] } - tp
            let d = 2 * tp + fp + fn
            return d == 0 ? 0 : Double(2 * tp) / Double(d)
        }
    }

    public var macroF1: Double {
        let f = f1PerClass
        return f.isEmpty ? .nan : f.reduce(0, +) / Double(f.count)
    }

    public var mcc: Double {
        let C = confusion.count
        let s = Double(count)
        let c = Double((0..<C).reduce(0) { $0 + confusion[$1][$1] })
        let t = (0..<C).map { Double(confusion[$0].reduce(0, +)) }
        let p = (0..<C).map { k in Double((0..<C).reduce(0) { $0 + confusion[$1][k] }) }
        let num = c * s - zip(t, p).reduce(0) { $0 + $1.0 * $1.1 }
        let d1 = s * s - p.reduce(0) { $0 + $1 * $1 }
        let d2 = s * s - t.reduce(0) { $0 + $1 * $1 }
        return d1 == 0 || d2 == 0 ? 0 : num / (d1.squareRoot() * d2.squareRoot())
    }

    /// JSON-ready summary with the contract keys (DESIGN.md §5).
    public func json(classes: [String]) -> [String: Any] {
        ["accuracy": accuracy, "macro_f1": macroF1, "mcc": mcc, "classes": classes, "confusion_matrix": confusion,
         "f1_per_class": f1PerClass, "count": count]
    }
}
