/// Matrix times a few vectors, `out[b, o] = Σ_i W[o, i] · x[b, i] (+ bias[o])` for b < B with B small: the
/// projections of a generation step (`Linear.forward` with M = B rows), where the work is reading W once.
///
/// W stays in PyTorch's `[O, I]` layout (no repacked copy). For B > 1 four rows at a time are dotted with each of
/// the B vectors, 16 lanes per FMA, so a block of four rows is read from memory once and from L1 for the other
/// B − 1 vectors, and four lane-wise partial sums are reduced together at the end (`reduce4`); for B = 1 rows are
/// read one after another (`row1`). The sum order differs from
/// BLAS, so results agree with `Linear.forward` to rounding, not bit for bit. `reference` is the plain
/// Double-accumulating twin the tests hold it to.
public enum MatVec {
    /// out `(B, O)` (rows of stride `ldo`) = x `(B, I)` (rows of stride `ldx`) · weightᵀ + bias.
    /// Threads over row blocks when one call is worth it (≥ ~½ M multiply-adds per thread).
    public static func forward(out: UnsafeMutablePointer<Float>, ldo: Int, x: UnsafePointer<Float>, ldx: Int,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, B: Int, I: Int, O: Int) {
        guard B > 0, O > 0 else { return }
        let quads = (O + 3) / 4
        let grain = max(1, (1 << 19) / max(1, 4 * I * B))
        Parallel.forRanges(quads, grain: grain) { _, lo, hi in
            rows(out: out, ldo: ldo, x: x, ldx: ldx, weight: weight, bias: bias, B: B, I: I,
                 from: lo * 4, to: min(O, hi * 4))
        }
    }

    /// Rows `o0..<o1` of `forward`, on the calling thread.
    @inline(__always)
    static func rows(out: UnsafeMutablePointer<Float>, ldo: Int, x: UnsafePointer<Float>, ldx: Int,
                     weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, B: Int, I: Int, from o0: Int, to o1: Int) {
        if B == 1 {
            row1(out: out, x: x, weight: weight, bias: bias, I: I, from: o0, to: o1)
            return
        }
        let full = I & ~15, tail = I - full
        var o = o0
        while o + 4 <= o1 {
            let w0 = weight + o * I, w1 = w0 + I, w2 = w1 + I, w3 = w2 + I
            for b in 0..<B {
                let xb = x + b * ldx
                var a0 = F16x(), a1 = F16x(), a2 = F16x(), a3 = F16x()
                var i = 0
                while i < full {
                    let xv = load16(xb + i)
                    a0 = a0.addingProduct(load16(w0 + i), xv)
                    a1 = a1.addingProduct(load16(w1 + i), xv)
                    a2 = a2.addingProduct(load16(w2 + i), xv)
                    a3 = a3.addingProduct(load16(w3 + i), xv)
                    i += 16
                }
                if tail > 0 {
                    let xv = loadF16x(xb + i, tail)
                    a0 = a0.addingProduct(loadF16x(w0 + i, tail), xv)
                    a1 = a1.addingProduct(loadF16x(w1 + i, tail), xv)
                    a2 = a2.addingProduct(loadF16x(w2 + i, tail), xv)
                    a3 = a3.addingProduct(loadF16x(w3 + i, tail), xv)
                }
                var s = reduce4(a0, a1, a2, a3)
                if let bias { s += UnsafeRawPointer(bias + o).loadUnaligned(as: SIMD4<Float>.self) }
                UnsafeMutableRawPointer(out + b * ldo + o).storeBytes(of: s, as: SIMD4<Float>.self)
            }
            o += 4
        }
        while o < o1 {
            let w0 = weight + o * I
            for b in 0..<B {
                let xb = x + b * ldx
                var a0 = F16x()
                var i = 0
                while i < full { a0 = a0.addingProduct(load16(w0 + i), load16(xb + i)); i += 16 }
                if tail > 0 { a0 = a0.addingProduct(loadF16x(w0 + i, tail), loadF16x(xb + i, tail)) }
                out[b * ldo + o] = laneSum(a0) + (bias?[o] ?? 0)
            }
            o += 1
        }
    }

    /// One vector: rows one at a time, front to back, four 16-lane partial sums per row. A single sequential
    /// stream is what DRAM prefetching serves best: on weights streamed from memory (the mamba-130m shape) four
    /// interleaved rows read at 17.8 GB/s on one core and 27.7 GB/s on two, one row at a time at 26.1 and 32.6
    /// (a C model of both loops, same machine and run). With B > 1 the four-row blocks pay off instead: each
    /// block is read from memory once and from L1 for the other vectors.
    @inline(__always)
    static func row1(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                     bias: UnsafePointer<Float>?, I: Int, from o0: Int, to o1: Int) {
        let wide = I & ~63, full = I & ~15, tail = I - full
        for o in o0..<o1 {
            let w = weight + o * I
            var a0 = F16x(), a1 = F16x(), a2 = F16x(), a3 = F16x()
            var i = 0
            while i < wide {
                a0 = a0.addingProduct(load16(w + i), load16(x + i))
                a1 = a1.addingProduct(load16(w + i + 16), load16(x + i + 16))
                a2 = a2.addingProduct(load16(w + i + 32), load16(x + i + 32))
                a3 = a3.addingProduct(load16(w + i + 48), load16(x + i + 48))
                i += 64
            }
            while i < full { a0 = a0.addingProduct(load16(w + i), load16(x + i)); i += 16 }
            if tail > 0 { a1 = a1.addingProduct(loadF16x(w + i, tail), loadF16x(x + i, tail)) }
            let a = (a0 + a1) + (a2 + a3)
            out[o] = laneSum(a) + (bias?[o] ?? 0)
        }
    }

    /// The plain twin: Double accumulation, one output at a time.
    public static func reference(out: UnsafeMutablePointer<Float>, ldo: Int, x: UnsafePointer<Float>, ldx: Int,
                                 weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, B: Int, I: Int, O: Int) {
        for b in 0..<B {
            for o in 0..<O {
                var s = Double(bias?[o] ?? 0)
                for i in 0..<I { s += Double(weight[o * I + i]) * Double(x[b * ldx + i]) }
                out[b * ldo + o] = Float(s)
            }
        }
    }

    @inline(__always)
    static func load16(_ p: UnsafePointer<Float>) -> F16x { UnsafeRawPointer(p).loadUnaligned(as: F16x.self) }

    /// The sum of 16 lanes by halving adds (shuffles, not a scalar add per lane).
    @inline(__always)
    static func laneSum(_ a: F16x) -> Float {
        let h = a.lowHalf + a.highHalf
        let q = h.lowHalf + h.highHalf
        let p = q.lowHalf + q.highHalf
        return p[0] + p[1]
    }

    /// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`: halving adds and even/odd pair adds, which lower to
    /// a few shuffles instead of a scalar add per lane.
    @inline(__always)
    static func reduce4(_ a: F16x, _ b: F16x, _ c: F16x, _ d: F16x) -> SIMD4<Float> {
        @inline(__always) func pairs(_ v: SIMD8<Float>) -> SIMD4<Float> { v.evenHalf + v.oddHalf }
        let a8 = a.lowHalf + a.highHalf, b8 = b.lowHalf + b.highHalf
        let c8 = c.lowHalf + c.highHalf, d8 = d.lowHalf + d.highHalf
        let ab = SIMD8(lowHalf: pairs(a8), highHalf: pairs(b8))  // [a a a a b b b b] partial sums
        let cd = SIMD8(lowHalf: pairs(c8), highHalf: pairs(d8))
        let abcd = SIMD8(lowHalf: pairs(ab), highHalf: pairs(cd))  // [a a b b c c d d]
        return pairs(abcd)
    }
}

/// A weight matrix `[O, I]` rounded to bfloat16 (`BFloat16.bits`) for reading half the bytes
/// in generation: a step at batch 1 is bound by streaming the weights, so this is up to 2× faster where they come
/// from memory. Only the weights are rounded; products and sums stay in Float32, so the step computes
/// exactly Σ bf16(W)·x. Rows are padded to a multiple of 32 with zeros.
///
/// Layout for the kernel: 32-bit word j of a row holds columns 2j (low half) and 2j + 1 (high half), as bfloat16
/// is laid out in memory, so one 64-byte load gives 16 even and 16 odd columns: `word << 16` is the even
/// column's Float32 and `word & 0xFFFF0000` the odd one's (two integer operations, no conversion instruction).
/// The input vector is split into the same even/odd order once per call (`splitPairs`).
public final class BF16Matrix {
    public let rows: Int, cols: Int
    /// Row stride in bfloat16 values (`cols` rounded up to a multiple of 32).
    public let stride: Int
    let data: UnsafeMutablePointer<UInt16>

    public init(_ weight: UnsafePointer<Float>, rows: Int, cols: Int) {
        self.rows = rows
        self.cols = cols
        stride = (cols + 31) & ~31
        data = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, rows * stride))
        data.initialize(repeating: 0, count: max(1, rows * stride))
        for o in 0..<rows { for i in 0..<cols { data[o * stride + i] = BFloat16.bits(weight[o * cols + i]) } }
    }

    deinit { data.deallocate() }

    public var bytes: Int { rows * stride * 2 }

    /// The Float32 values the matrix holds (for the reference and tests).
    public func decoded() -> [Float] {
        var w = [Float](repeating: 0, count: rows * cols)
        for o in 0..<rows { for i in 0..<cols { w[o * cols + i] = BFloat16.float(data[o * stride + i]) } }
        return w
    }
}

extension MatVec {
    /// x `(B, I)` (rows of stride `ldx`) → xs `(B, stride)`: within each 32 columns, the 16 even then the 16 odd
    /// ones, zero-padded to `stride`; the order `BF16Matrix` rows are read in.
    public static func splitPairs(_ x: UnsafePointer<Float>, ldx: Int, B: Int, I: Int, stride: Int,
                                  into xs: UnsafeMutablePointer<Float>) {
        for b in 0..<B {
            let src = x + b * ldx, dst = xs + b * stride
            dst.update(repeating: 0, count: stride)
            for i in 0..<I { dst[(i & ~31) + (i & 1) * 16 + (i & 31) / 2] = src[i] }
        }
    }

    /// Rows `o0..<o1` of out `(B, O)` = x · bf16(W)ᵀ + bias, with x given split (`splitPairs`, rows of
    /// `w.stride`). Four rows per pass as in `rows`; 32 columns per 64-byte load.
    @inline(__always)
    static func rowsBF16(out: UnsafeMutablePointer<Float>, ldo: Int, xs: UnsafePointer<Float>, weight w: BF16Matrix,
                         bias: UnsafePointer<Float>?, B: Int, from o0: Int, to o1: Int) {
        let S = w.stride
        let base = UnsafeRawPointer(w.data)
        @inline(__always) func pair(_ p: UnsafeRawPointer) -> (F16x, F16x) {
            let v = p.loadUnaligned(as: SIMD16<UInt32>.self)
            return (unsafeBitCast(v &<< 16, to: F16x.self), unsafeBitCast(v & 0xFFFF_0000, to: F16x.self))
        }
        if B == 1 {
            // One vector: rows one after another, one sequential stream (see `row1`).
            for o in o0..<o1 {
                let r = base + o * S * 2
                var a0 = F16x(), a1 = F16x(), a2 = F16x(), a3 = F16x()
                var i = 0
                while i + 64 <= S {
                    let (e0, d0) = pair(r + i * 2), (e1, d1) = pair(r + i * 2 + 64)
                    a0 = a0.addingProduct(e0, load16(xs + i))
                    a1 = a1.addingProduct(d0, load16(xs + i + 16))
                    a2 = a2.addingProduct(e1, load16(xs + i + 32))
                    a3 = a3.addingProduct(d1, load16(xs + i + 48))
                    i += 64
                }
                if i < S {
                    let (e0, d0) = pair(r + i * 2)
                    a0 = a0.addingProduct(e0, load16(xs + i))
                    a1 = a1.addingProduct(d0, load16(xs + i + 16))
                }
                let a = (a0 + a1) + (a2 + a3)
                out[o] = laneSum(a) + (bias?[o] ?? 0)
            }
            return
        }
        var o = o0
        while o + 4 <= o1 {
            let r0 = base + o * S * 2, r1 = r0 + S * 2, r2 = r1 + S * 2, r3 = r2 + S * 2
            for b in 0..<B {
                let xb = xs + b * S
                // Two rows per sweep: four rows' accumulators, inputs and unpacked weights would need more than
                // the 16 vector registers and spill.
                @inline(__always) func two(_ ra: UnsafeRawPointer, _ rb: UnsafeRawPointer) -> (F16x, F16x) {
                    var a = F16x(), b = F16x()
                    var i = 0
                    while i < S {
                        let xe = load16(xb + i), xo = load16(xb + i + 16)
                        let (ea, da) = pair(ra + i * 2), (eb, db) = pair(rb + i * 2)
                        a = a.addingProduct(ea, xe).addingProduct(da, xo)
                        b = b.addingProduct(eb, xe).addingProduct(db, xo)
                        i += 32
                    }
                    return (a, b)
                }
                let (a0, a1) = two(r0, r1), (a2, a3) = two(r2, r3)
                var s = reduce4(a0, a1, a2, a3)
                if let bias { s += UnsafeRawPointer(bias + o).loadUnaligned(as: SIMD4<Float>.self) }
                UnsafeMutableRawPointer(out + b * ldo + o).storeBytes(of: s, as: SIMD4<Float>.self)
            }
            o += 4
        }
        while o < o1 {
            let r0 = base + o * S * 2
            for b in 0..<B {
                let xb = xs + b * S
                var a0 = F16x()
                var i = 0
                while i < S {
                    let (e0, d0) = pair(r0 + i * 2)
                    a0 = a0.addingProduct(e0, load16(xb + i)).addingProduct(d0, load16(xb + i + 16))
                    i += 32
                }
                out[b * ldo + o] = laneSum(a0) + (bias?[o] ?? 0)
            }
            o += 1
        }
    }

    /// out `(B, O)` = x `(B, I)` · bf16(W)ᵀ + bias on the calling thread (tests, and callers without a team).
    public static func forwardBF16(out: UnsafeMutablePointer<Float>, ldo: Int, x: UnsafePointer<Float>, ldx: Int,
                                   weight: BF16Matrix, bias: UnsafePointer<Float>?, B: Int) {
        let xs = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * weight.stride))
        defer { xs.deallocate() }
        splitPairs(x, ldx: ldx, B: B, I: weight.cols, stride: weight.stride, into: xs)
        rowsBF16(out: out, ldo: ldo, xs: xs, weight: weight, bias: bias, B: B, from: 0, to: weight.rows)
    }
}
