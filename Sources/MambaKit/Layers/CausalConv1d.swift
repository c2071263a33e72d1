/// Causal depthwise conv1d over time (HF `MambaMixer.conv1d`: `nn.Conv1d(ED, ED, K, groups=ED, padding=K−1)`
/// truncated to the first L outputs), weight `[ED, 1, K]`, optional bias `[ED]`:
/// `out[t, d] = bias[d] + Σ_k w[d, k] · x[t − (K−1) + k, d]`, with x before the sequence taken from `context`
/// (the previous K−1 inputs, for chunked evaluation and prefill) or zero (left zero padding).
///
/// Layout is time-major: x rows have stride `ldx` (in_proj's output is `[x | z]`, so x is read in place), out is
/// `(B, L, ED)`. Saves nothing: backward reads x again. `step` is forward with L = 1 and a context ring.
public enum CausalConv1d {
    /// out `(B, L, ED)`; x `(B, L, ldx)`; context `(B, K−1, ED)` or nil for zeros. With `silu`, also writes
    /// SiLU(out) `(B, L, ED)` there in the same pass over each row (what the Mamba mixers apply next).
    public static func forward(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, ldx: Int,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                               context: UnsafePointer<Float>?,
                               B: Int, L: Int, ED: Int, K: Int, silu: UnsafeMutablePointer<Float>? = nil) {
        if B * L <= 2 {
            // A generation step: one or two rows, where transposing the taps would cost more than the rows.
            for row in 0..<(B * L) {
                let b = row / L, t = row % L
                let o = out + row * ED
                for d in 0..<ED {
                    var acc = bias?[d] ?? 0
                    for k in 0..<K {
                        let src = t - (K - 1) + k
                        if src >= 0 {
                            acc += weight[d * K + k] * x[(b * L + src) * ldx + d]
                        } else if let context {
                            acc += weight[d * K + k] * context[(b * (K - 1) + (K - 1 + src)) * ED + d]
                        }
                    }
                    o[d] = acc
                }
                if let silu { siluRow(silu + row * ED, o, ED) }
            }
            return
        }
        // Taps transposed to (K, ED) so that every inner loop runs over contiguous channels.
        let wT = transposedTaps(weight, ED: ED, K: K)
        defer { wT.deallocate() }
        Parallel.forRanges(B * L, grain: max(1, 16_384 / max(1, ED * K))) { _, lo, hi in
            for row in lo..<hi {
                let b = row / L, t = row % L
                let o = out + row * ED
                if let bias { o.update(from: bias, count: ED) } else { o.update(repeating: 0, count: ED) }
                for k in 0..<K {
                    let src = t - (K - 1) + k
                    let xr: UnsafePointer<Float>
                    if src >= 0 {
                        xr = x + (b * L + src) * ldx
                    } else if let context {
                        xr = context + (b * (K - 1) + (K - 1 + src)) * ED
                    } else {
                        continue
                    }
                    let w = wT + k * ED
                    for d in 0..<ED { o[d] += w[d] * xr[d] }
                }
                if let silu { siluRow(silu + row * ED, o, ED) }
            }
        }
    }

    /// dst = SiLU(src) over one row of n, 16 lanes at a time (`Activations.siluForward`'s arithmetic).
    @inline(__always)
    static func siluRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
        var j = 0
        while j < n {
            let w = min(16, n - j)
            storeF16x(siluSIMD(loadF16x(src + j, w)), dst + j, w)
            j += w
        }
    }

    /// dx += ∂L/∂x (rows of stride `lddx`; with `accumulate: false`, dx = ∂L/∂x, so the caller need not zero it),
    /// dweight += ∂L/∂w, dbias += ∂L/∂b. Gradients into the context are not needed (training always starts from
    /// zeros).
    public static func backward(dx: UnsafeMutablePointer<Float>, lddx: Int,
                                dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?,
                                dout: UnsafePointer<Float>, x: UnsafePointer<Float>, ldx: Int,
                                weight: UnsafePointer<Float>, B: Int, L: Int, ED: Int, K: Int,
                                accumulate: Bool = true) {
        let wT = transposedTaps(weight, ED: ED, K: K)
        defer { wT.deallocate() }
        // dx: each input row gathers from the K output rows it feeds; rows are independent → parallel.
        Parallel.forRanges(B * L, grain: max(1, 16_384 / max(1, ED * K))) { _, lo, hi in
            for row in lo..<hi {
                let b = row / L, t = row % L
                let g = dx + row * lddx
                if !accumulate { g.update(repeating: 0, count: ED) }
                for k in 0..<K {
                    let dst = t + (K - 1) - k
                    if dst >= L { continue }
                    let go = dout + (b * L + dst) * ED
                    let w = wT + k * ED
                    for d in 0..<ED { g[d] += w[d] * go[d] }
                }
            }
        }
        // dweight, dbias: per-worker partial sums over its rows, in (K, ED) layout, added in worker order.
        let workers = Parallel.workers(for: B * L, grain: 64)
        let partial = FloatBuffer(count: workers * (K + 1) * ED)
        Parallel.forRanges(B * L, grain: 64) { wk, lo, hi in
            let acc = partial.ptr + wk * (K + 1) * ED
            for row in lo..<hi {
                let b = row / L, t = row % L
                let go = dout + row * ED
                for k in 0..<K {
                    let src = t - (K - 1) + k
                    if src < 0 { continue }
                    let xr = x + (b * L + src) * ldx
                    let a = acc + k * ED
                    for d in 0..<ED { a[d] += go[d] * xr[d] }
                }
                let ab = acc + K * ED
                for d in 0..<ED { ab[d] += go[d] }
            }
        }
        for wk in 0..<workers {
            let acc = partial.ptr + wk * (K + 1) * ED
            for d in 0..<ED {
                for k in 0..<K { dweight[d * K + k] += acc[k * ED + d] }
                dbias?[d] += acc[K * ED + d]
            }
        }
    }

    /// weight `(ED, K)` → `(K, ED)`; the caller deallocates.
    static func transposedTaps(_ weight: UnsafePointer<Float>, ED: Int, K: Int) -> UnsafeMutablePointer<Float> {
        let wT = UnsafeMutablePointer<Float>.allocate(capacity: max(1, K * ED))
        for d in 0..<ED { for k in 0..<K { wT[k * ED + d] = weight[d * K + k] } }
        return wT
    }

    /// The plain version: one output at a time, straight from the definition.
    public static func forwardReference(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, ldx: Int,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                        context: UnsafePointer<Float>?,
                                        B: Int, L: Int, ED: Int, K: Int) {
        for b in 0..<B {
            for t in 0..<L {
                for d in 0..<ED {
                    var s = Double(bias?[d] ?? 0)
                    for k in 0..<K {
                        let src = t - (K - 1) + k
                        let v: Float
                        if src >= 0 { v = x[(b * L + src) * ldx + d] }
                        else if let context { v = context[(b * (K - 1) + (K - 1 + src)) * ED + d] }
                        else { v = 0 }
                        s += Double(weight[d * K + k]) * Double(v)
                    }
                    out[(b * L + t) * ED + d] = Float(s)
                }
            }
        }
    }

    /// One recurrent step of the conv and the SiLU after it, for channels c0 ..< c0 + w (w ≤ 16) of one sequence:
    /// out = SiLU(bias + Σ_k w_k · context_k + w_{K−1} · x), then the context (the last K−1 inputs, `(K−1, C)` rows
    /// of C channels) shifts by one and takes x. `tapsT` is the weight transposed to `(K, C)`.
    @inline(__always)
    static func stepSiLU(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, context: UnsafeMutablePointer<Float>,
                         tapsT: UnsafePointer<Float>, bias: UnsafePointer<Float>?, C: Int, K: Int, c0: Int, w: Int) {
        let c = context + c0
        let xv = loadF16x(x + c0, w)
        var acc = bias.map { loadF16x($0 + c0, w) } ?? F16x()
        for k in 0..<(K - 1) { acc = acc + loadF16x(tapsT + k * C + c0, w) * loadF16x(c + k * C, w) }
        acc = acc + loadF16x(tapsT + (K - 1) * C + c0, w) * xv
        if K > 1 {
            for k in 0..<(K - 2) { storeF16x(loadF16x(c + (k + 1) * C, w), c + k * C, w) }
            storeF16x(xv, c + (K - 2) * C, w)
        }
        storeF16x(siluSIMD(acc), out + c0, w)
    }

    /// The last K−1 inputs of each sequence, `(B, K−1, ED)`, continuing `context` when L < K−1: the context for
    /// the next chunk (or the conv state for recurrent steps).
    public static func nextContext(into next: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, ldx: Int,
                                   context: UnsafePointer<Float>?, B: Int, L: Int, ED: Int, K: Int) {
        let C = K - 1
        if C == 0 { return }
        for b in 0..<B {
            let dst = next + b * C * ED
            if L >= C {
                for j in 0..<C { (dst + j * ED).update(from: x + (b * L + L - C + j) * ldx, count: ED) }
            } else {
                // Shift the old context left by L (memmove semantics: `next` may be `context`), then append x.
                let keep = C - L
                if let context {
                    let src = context + b * C * ED + L * ED
                    memmove(dst, src, keep * ED * 4)
                } else {
                    dst.update(repeating: 0, count: keep * ED)
                }
                for j in 0..<L { (dst + (keep + j) * ED).update(from: x + (b * L + j) * ldx, count: ED) }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
