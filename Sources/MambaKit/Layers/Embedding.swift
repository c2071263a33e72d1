/// Token embedding (PyTorch `nn.Embedding`, weight `[V, D]`): `out[i] = weight[ids[i]]`.
///
/// Backward scatters rows of `dout` into `dweight` in token order (deterministic). Ids are validated by the data
/// layer; here an out-of-range id is a programming error.
public enum Embedding {
    /// out `(M, D)` = weight[ids].
    public static func forward(out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>,
                               weight: UnsafePointer<Float>, M: Int, D: Int, V: Int) {
        for m in 0..<M {
            let id = Int(ids[m])
            precondition(id >= 0 && id < V, "token id \(id) outside vocabulary of \(V)")
            (out + m * D).update(from: weight + id * D, count: D)
        }
    }

    /// dweight[ids[m]] += dout[m].
    public static func backward(dweight: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                ids: UnsafePointer<Int32>, M: Int, D: Int) {
        for m in 0..<M {
            let row = dweight + Int(ids[m]) * D
            let g = dout + m * D
            for j in 0..<D { row[j] += g[j] }
        }
    }
}
