/// Softmax cross-entropy over rows of logits (PyTorch `F.cross_entropy`, `ignore_index = -100`).
///
/// Forward returns the summed negative log-likelihood in Double and the number of counted rows; with `dlogits` it
/// also writes the gradient of `scale · Σ NLL`, i.e. `scale · (softmax − onehot)` (0 on ignored rows), so a mean
/// loss passes `scale = 1/count`. The log-sum-exp subtracts the row maximum and sums in Double. With `rowLoss`,
/// each row's NLL is also stored there (0 on ignored rows): the terms of the returned sum.
public enum CrossEntropy {
    public static let ignoreIndex: Int32 = -100

    public static func forwardBackward(
        logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, M: Int, V: Int,
        dlogits: UnsafeMutablePointer<Float>?, scale: Float, rowLoss: UnsafeMutablePointer<Double>? = nil
    ) -> (sum: Double, count: Int) {
        let workers = Parallel.workers(for: M)
        var sums = [Double](repeating: 0, count: workers)
        var counts = [Int](repeating: 0, count: workers)
        sums.withUnsafeMutableBufferPointer { sp in
            counts.withUnsafeMutableBufferPointer { cp in
                Parallel.forRanges(M) { wk, lo, hi in
                    var s = 0.0
                    var c = 0
                    for m in lo..<hi {
                        let row = logits + m * V
                        let tgt = targets[m]
                        if tgt == ignoreIndex {
                            rowLoss?[m] = 0
                            if let dlogits { (dlogits + m * V).update(repeating: 0, count: V) }
                            continue
                        }
                        precondition(tgt >= 0 && Int(tgt) < V, "target \(tgt) outside vocabulary of \(V)")
                        var mx = -Float.infinity
                        for v in 0..<V { mx = max(mx, row[v]) }
                        var z = 0.0
                        for v in 0..<V { z += Double(expf(row[v] - mx)) }
                        let lse = Double(mx) + log(z)
                        s += lse - Double(row[Int(tgt)])
                        rowLoss?[m] = lse - Double(row[Int(tgt)])
                        c += 1
                        if let dlogits {
                            let g = dlogits + m * V
                            let inv = 1 / z
                            for v in 0..<V { g[v] = scale * Float(Double(expf(row[v] - mx)) * inv) }
                            g[Int(tgt)] -= scale
                        }
                    }
                    sp[wk] = s
                    cp[wk] = c
                }
            }
        }
        return (sums.reduce(0, +), counts.reduce(0, +))
    }
}

#if canImport(Glibc)
import Glibc
#endif
