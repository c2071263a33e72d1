/// RMSNorm (HF `MambaRMSNorm`, mamba_ssm `RMSNorm`): `out = w ⊙ x · rstd`, `rstd = 1/√(mean(x²) + eps)`.
///
/// Saves `rstd` per row for backward; the input itself is the residual stream the model keeps anyway.
/// Mean of squares: Float products in 16 lanes, the lanes summed in Double. Backward:
/// `dx = rstd·(w⊙dy) − x·rstd³·⟨w⊙dy, x⟩/D`, `dw += Σ_rows dy ⊙ x·rstd`.
public enum RMSNorm {
    /// Rows per thread worth a thread of their own (a row costs ~D ns).
    @inline(__always) static func grain(_ D: Int) -> Int { max(1, 16_384 / max(D, 1)) }

    /// Σ a_j·b_j over j < D: 16 lanes of Float products and sums, the lanes added in Double.
    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ D: Int) -> Double {
        var acc = F16x()
        var j = 0
        while j + 16 <= D { acc = acc + loadF16x(a + j, 16) * loadF16x(b + j, 16); j += 16 }
        var s = 0.0
        for l in 0..<16 { s += Double(acc[l]) }
        while j < D { s += Double(a[j]) * Double(b[j]); j += 1 }
        return s
    }

    /// o = w ⊙ (x · r) over one row, 16 lanes at a time (the same products, in the same order, as a scalar loop).
    @inline(__always) static func scaleRow(_ o: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
                                           _ w: UnsafePointer<Float>, _ r: Float, _ D: Int) {
        var j = 0
        while j < D {
            let n = min(16, D - j)
            storeF16x(loadF16x(w + j, n) * (loadF16x(x + j, n) * r), o + j, n)
            j += n
        }
    }

    /// out `(M, D)`, rstd `(M)`. Rows are split over threads (above a few dozen rows).
    public static func forward(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?,
                               inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                               M: Int, D: Int, eps: Float) {
        Parallel.forRanges(M, grain: grain(D)) { _, lo, hi in
            for m in lo..<hi {
                let x = inp + m * D
                let ss = dot(x, x, D)
                let r = Float(1 / (ss / Double(D) + Double(eps)).squareRoot())
                rstd?[m] = r
                scaleRow(out + m * D, x, weight, r, D)
            }
        }
    }

    /// out = w ⊙ x · rstd from a saved rstd: `forward`'s output again, bit for bit (backward recomputes it).
    public static func apply(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                             weight: UnsafePointer<Float>, M: Int, D: Int) {
        Parallel.forRanges(M, grain: grain(D)) { _, lo, hi in
            for m in lo..<hi { scaleRow(out + m * D, inp + m * D, weight, rstd[m], D) }
        }
    }

    /// dinp += ∂L/∂x; dweight += ∂L/∂w. Rows are split over threads; dweight sums per-thread partials in thread
    /// order (deterministic for a given thread count).
    public static func backward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                weight: UnsafePointer<Float>, M: Int, D: Int) {
        let g = grain(D)
        let workers = Parallel.workers(for: M, grain: g)
        let partial = FloatBuffer(count: workers * D)
        Parallel.forRanges(M, grain: g) { wk, lo, hi in
            let dw = partial.ptr + wk * D
            withUnsafeTemporaryAllocation(of: Float.self, capacity: D) { wdyBuf in
                let wdy = wdyBuf.baseAddress!
                for m in lo..<hi {
                    let x = inp + m * D, dy = dout + m * D, dx = dinp + m * D
                    let r = rstd[m]
                    var j = 0
                    while j < D {
                        let n = min(16, D - j)
                        storeF16x(loadF16x(weight + j, n) * loadF16x(dy + j, n), wdy + j, n)
                        j += n
                    }
                    let c = Float(dot(wdy, x, D) / Double(D)) * r * r * r
                    j = 0
                    while j < D {
                        let n = min(16, D - j)
                        let xv = loadF16x(x + j, n), dyv = loadF16x(dy + j, n)
                        storeF16x(loadF16x(dx + j, n) + (r * loadF16x(weight + j, n) * dyv - c * xv), dx + j, n)
                        storeF16x(loadF16x(dw + j, n) + dyv * xv * r, dw + j, n)
                        j += n
                    }
                }
            }
        }
        for wk in 0..<workers {
            let dw = partial.ptr + wk * D
            for j in 0..<D { dweight[j] += dw[j] }
        }
    }
}
