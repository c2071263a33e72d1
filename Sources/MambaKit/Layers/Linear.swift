import COpenBLAS

/// Linear layer `out = inp · Wᵀ + b` (PyTorch `nn.Linear`, weight `[O, I]`).
///
/// Forward and backward are one `cblas_sgemm` over all `M = B·L` rows. Leading dimensions let a layer read or write
/// a column slice of a wider matrix (x_proj's `dt_low` columns, in_proj's `x` half) without copies. Backward
/// accumulates into `dinp`, `dweight` and `dbias`. Saves nothing: backward takes the forward's input again.
public enum Linear {
    /// out `(M, O)` (leading dim `ldo`) = inp `(M, I)` (leading dim `ldi`) · weightᵀ + bias.
    public static func forward(
        out: UnsafeMutablePointer<Float>, ldo: Int,
        inp: UnsafePointer<Float>, ldi: Int,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        M: Int, I: Int, O: Int
    ) {
        guard M > 0, O > 0 else { return }
        if M == 1 {
            // One row (a step at batch 1, the last position of a prefill): W is read once, and MatVec does that
            // without sgemv's thread hand-offs, which cost more than a small product.
            MatVec.forward(out: out, ldo: ldo, x: inp, ldx: ldi, weight: weight, bias: bias, B: 1, I: I, O: O)
            return
        }
        if let bias {
            for m in 0..<M { (out + m * ldo).update(from: bias, count: O) }
        }
        if I == 0 {
            if bias == nil { for m in 0..<M { (out + m * ldo).update(repeating: 0, count: O) } }
            return
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(M), Int32(O), Int32(I),
                    1, inp, Int32(ldi), weight, Int32(I), bias == nil ? 0 : 1, out, Int32(ldo))
    }

    /// dinp += dout · W; dweight += doutᵀ · inp; dbias += Σ_rows dout. Any of the outputs may be nil.
    public static func backward(
        dinp: UnsafeMutablePointer<Float>?, lddi: Int,
        dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
        dout: UnsafePointer<Float>, lddo: Int,
        inp: UnsafePointer<Float>, ldi: Int,
        weight: UnsafePointer<Float>,
        M: Int, I: Int, O: Int
    ) {
        guard M > 0, O > 0, I > 0 || dbias != nil else { return }
        if let dinp, I > 0 {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(M), Int32(I), Int32(O),
                        1, dout, Int32(lddo), weight, Int32(I), 1, dinp, Int32(lddi))
        }
        if let dweight, I > 0 {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(O), Int32(I), Int32(M),
                        1, dout, Int32(lddo), inp, Int32(ldi), 1, dweight, Int32(I))
        }
        if let dbias {
            for m in 0..<M {
                let row = dout + m * lddo
                for o in 0..<O { dbias[o] += row[o] }
            }
        }
    }

    /// Plain loops with Double accumulation: the reference the BLAS path is tested against.
    public static func forwardReference(
        out: UnsafeMutablePointer<Float>, ldo: Int,
        inp: UnsafePointer<Float>, ldi: Int,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        M: Int, I: Int, O: Int
    ) {
        for m in 0..<M {
            for o in 0..<O {
                var s = Double(bias?[o] ?? 0)
                for i in 0..<I { s += Double(inp[m * ldi + i]) * Double(weight[o * I + i]) }
                out[m * ldo + o] = Float(s)
            }
        }
    }

    public static func backwardReference(
        dinp: UnsafeMutablePointer<Float>?, lddi: Int,
        dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
        dout: UnsafePointer<Float>, lddo: Int,
        inp: UnsafePointer<Float>, ldi: Int,
        weight: UnsafePointer<Float>,
        M: Int, I: Int, O: Int
    ) {
        if let dinp {
            for m in 0..<M {
                for i in 0..<I {
                    var s = 0.0
                    for o in 0..<O { s += Double(dout[m * lddo + o]) * Double(weight[o * I + i]) }
                    dinp[m * lddi + i] += Float(s)
                }
            }
        }
        if let dweight {
            for o in 0..<O {
                for i in 0..<I {
                    var s = 0.0
                    for m in 0..<M { s += Double(dout[m * lddo + o]) * Double(inp[m * ldi + i]) }
                    dweight[o * I + i] += Float(s)
                }
            }
        }
        if let dbias {
            for o in 0..<O {
                var s = 0.0
                for m in 0..<M { s += Double(dout[m * lddo + o]) }
                dbias[o] += Float(s)
            }
        }
    }
}
