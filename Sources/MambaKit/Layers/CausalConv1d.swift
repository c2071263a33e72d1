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
        // Taps transposed to (K, ED) so that every inner loop runs over contiguous channels; each 16-channel strip of
        // an output row is summed in registers and stored once (with its SiLU beside it).
        let wT = transposedTaps(weight, ED: ED, K: K)
        defer { wT.deallocate() }
        Parallel.forRanges(B * L, grain: max(1, 16_384 / max(1, ED * K))) { _, lo, hi in
            for row in lo..<hi {
                let b = row / L, t = row % L
                let o = out + row * ED
                var c = 0
                while c < ED {
                    let n = min(16, ED - c)
                    var acc = bias.map { loadF16x($0 + c, n) } ?? F16x()
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
                        acc = acc + loadF16x(wT + k * ED + c, n) * loadF16x(xr + c, n)
                    }
                    storeF16x(acc, o + c, n)
                    c += n
                }
                if let silu { siluRow(silu + row * ED, o, ED) }
            }
        }
    }

    /// dst = SiLU(src) over one row of n, 16 lanes at a time (`Activations.siluForward`'s arithmetic). Not inlined:
    /// compiled on its own, the exponential stays in vector registers (inlined into the larger loops around it,
    /// LLVM scalarised part of it).
    @inline(never)
    static func siluRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
        var j = 0
        while j + 16 <= n {
            storeF16x(siluSIMD(loadF16x(src + j, 16)), dst + j, 16)
            j += 16
        }
        if j < n { storeF16x(siluSIMD(loadF16x(src + j, n - j)), dst + j, n - j) }
    }

    /// dst = dout ⊙ SiLU′(pre) over one row of n (`Activations.siluBackward`'s arithmetic); not inlined, as `siluRow`.
    @inline(never)
    static func siluGradRow(_ dst: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
                            _ pre: UnsafePointer<Float>, _ n: Int) {
        @inline(__always) func one(_ j: Int, _ w: Int) {
            let x = loadF16x(pre + j, w)
            let s = sigmoidSIMD(x)
            storeF16x(loadF16x(dout + j, w) * s * (1 + x * (1 - s)), dst + j, w)
        }
        var j = 0
        while j + 16 <= n { one(j, 16); j += 16 }
        if j < n { one(j, n - j) }
    }

    /// dx += ∂L/∂x (rows of stride `lddx`; with `accumulate: false`, dx = ∂L/∂x, so the caller need not zero it),
    /// dweight += ∂L/∂w, dbias += ∂L/∂b. With `context` (the `(B, K−1, ED)` inputs before the sequence that forward
    /// read; nil: zeros), dweight includes the taps that read it, and with `dcontext`, dcontext += ∂L/∂context
    /// (a window that continues a carried state). With `siluPre` (the conv's output, saved by forward), `dout` is the gradient of SiLU(out) and
    /// SiLU′ is applied here, in blocks of rows kept in cache, instead of in a pass of its own.
    ///
    /// One pass: each worker takes a range of rows in blocks of 32; per block it forms the conv output gradient
    /// for the block and the K−1 rows after it, then dx of the block's rows (gathered from the K output rows each
    /// feeds, in tap order) and its partial dweight and dbias (in row order). Partials are added in worker order.
    public static func backward(dx: UnsafeMutablePointer<Float>, lddx: Int,
                                dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?,
                                dout: UnsafePointer<Float>, x: UnsafePointer<Float>, ldx: Int,
                                weight: UnsafePointer<Float>, B: Int, L: Int, ED: Int, K: Int,
                                accumulate: Bool = true, siluPre: UnsafePointer<Float>? = nil,
                                context: UnsafePointer<Float>? = nil, dcontext: UnsafeMutablePointer<Float>? = nil) {
        let rows = B * L
        guard rows > 0, ED > 0 else { return }
        let wT = transposedTaps(weight, ED: ED, K: K)
        defer { wT.deallocate() }
        let block = 32
        let grain = max(block, 16_384 / max(1, ED * K))
        let workers = Parallel.workers(for: rows, grain: grain)
        // Per worker: partial dweight (K, ED) and dbias (ED), then the block's SiLU′-scaled gradient rows.
        let stride = (K + 1) * ED + (siluPre == nil ? 0 : (block + K - 1) * ED)
        let scratch = FloatBuffer(count: workers * stride)
        Parallel.forRanges(rows, grain: grain) { wk, lo, hi in
            let acc = scratch.ptr + wk * stride
            acc.update(repeating: 0, count: (K + 1) * ED)
            let gbuf = acc + (K + 1) * ED
            var r0 = lo
            while r0 < hi {
                let r1 = min(r0 + block, hi)
                // The output gradient for rows r0 ..< r1 + K − 1 (dx of row r reads rows up to r + K − 1).
                let g1 = min(r1 + K - 1, rows)
                if let pre = siluPre {
                    for r in r0..<g1 { siluGradRow(gbuf + (r - r0) * ED, dout + r * ED, pre + r * ED, ED) }
                }
                @inline(__always) func grad(_ r: Int) -> UnsafePointer<Float> {
                    siluPre == nil ? dout + r * ED : UnsafePointer(gbuf + (r - r0) * ED)
                }
                for row in r0..<r1 {
                    let t = row % L
                    let gx = dx + row * lddx
                    let go = grad(row)
                    var c = 0
                    while c < ED {
                        let n = min(16, ED - c)
                        var v = accumulate ? loadF16x(gx + c, n) : F16x()
                        for k in 0..<K where t + (K - 1) - k < L {
                            v = v + loadF16x(wT + k * ED + c, n) * loadF16x(grad(row + (K - 1) - k) + c, n)
                        }
                        storeF16x(v, gx + c, n)
                        // dweight[k] += go ⊙ x[t − (K−1) + k];  dbias += go
                        let gv = loadF16x(go + c, n)
                        for k in 0..<K {
                            let src = t - (K - 1) + k
                            let a = acc + k * ED + c
                            if src >= 0 {
                                storeF16x(loadF16x(a, n) + gv * loadF16x(x + (row - (K - 1) + k) * ldx + c, n), a, n)
                            } else if let context {
                                let cr = context + ((row / L) * (K - 1) + (K - 1 + src)) * ED
                                storeF16x(loadF16x(a, n) + gv * loadF16x(cr + c, n), a, n)
                            }
                        }
                        let ab = acc + K * ED + c
                        storeF16x(loadF16x(ab, n) + gv, ab, n)
                        c += n
                    }
                }
                r0 = r1
            }
        }
        for wk in 0..<workers {
            let acc = scratch.ptr + wk * stride
            for d in 0..<ED {
                for k in 0..<K { dweight[d * K + k] += acc[k * ED + d] }
                dbias?[d] += acc[K * ED + d]
            }
        }
        // The context feeds the first K−1 outputs of each sequence: context row j (position j − (K−1)) reaches
        // output t ≤ j through tap j − t.
        if let dcontext, K > 1 {
            var g = [Float](repeating: 0, count: ED)
            for b in 0..<B {
                for t in 0..<min(K - 1, L) {
                    let row = b * L + t
                    if let pre = siluPre {
                        g.withUnsafeMutableBufferPointer { siluGradRow($0.baseAddress!, dout + row * ED, pre + row * ED, ED) }
                    } else {
                        for d in 0..<ED { g[d] = dout[row * ED + d] }
                    }
                    for j in t..<(K - 1) {
                        let tap = j - t
                        let dc = dcontext + (b * (K - 1) + j) * ED
                        for d in 0..<ED { dc[d] += weight[d * K + tap] * g[d] }
                    }
                }
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
