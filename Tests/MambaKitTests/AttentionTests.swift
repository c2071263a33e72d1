import Foundation
import MambaKit
import Testing

// Attention (Kernels/Attention.swift): the tiled forward and backward against their plain references, the references
// against central finite differences of a Double forward, KV-cache and chunked calls, memory and determinism.
//
// Tolerances. Inputs are N(0, 1); in the "peaky" cases q is scaled ×4, so scores reach ±15–35 and the running max
// matters. The kernels sum in Float32 (one fused multiply-add per term, in a fixed order; exp is the polynomial
// `expSIMD`, ~2 ulp) where the references sum in Double from the same Float inputs, so they differ by rounding only.
// Measured worst cases: out 2.4e-6 (|out| ≲ 4), lse 3.8e-6 (|lse| ≈ 37: one ulp), gradients 2e-6 of the largest
// gradient (peaky; ulp(s) of a score of 15 is 1e-6 and enters every p), backward vs finite differences 3e-7 of the
// largest. Checks: forward |diff| ≤ 1e-5 + 1e-5·|want|; backward ≤ 5e-6·max|want| + 2e-5·|want|; finite differences
// ≤ 2e-5·max|want| + 1e-4·|want| — 2.5–10× the measured errors, far below what a wrong mask, scale or index gives.

// MARK: - Inputs

extension RNG {
    /// n normal values × scale (the project's seeded generator: every case reproduces from its seed).
    mutating func normals(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in Float(normal()) * scale } }
}

/// One training-shaped call (Lq = Lk = L). q, k, v are columns of one fused projection row
/// `[q (H·Dh) | k (Hkv·Dh) | v (Hkv·Dh) | 3 spare]`, as the model lays them out, or three contiguous buffers.
struct AttentionCase: Sendable, CustomTestStringConvertible {
    var B: Int, H: Int, Hkv: Int, Dh: Int, L: Int
    var fused = true
    var qScale: Float = 1
    var seed: UInt64 = 7

    var dims: AttentionDims { AttentionDims(B: B, H: H, Hkv: Hkv, Dh: Dh, L: L) }
    var testDescription: String {
        "B\(B) H\(H) Hkv\(Hkv) Dh\(Dh) L\(L)\(fused ? " fused" : "")\(qScale != 1 ? " peaky" : "")"
    }

    func make() -> AttentionInputs { AttentionInputs(self) }
}

final class AttentionInputs {
    let c: AttentionCase
    let ld: Int          // row stride of the fused buffer
    let qkv: FloatBuffer // fused (B, L, ld), or q alone
    let kb: FloatBuffer?, vb: FloatBuffer?
    let ldq: Int, ldkv: Int
    let q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>

    init(_ c: AttentionCase) {
        self.c = c
        var rng = RNG(seed: c.seed)
        let (qd, kd) = (c.H * c.Dh, c.Hkv * c.Dh)
        ld = qd + 2 * kd + 3
        if c.fused {
            qkv = FloatBuffer(rng.normals(c.B * c.L * ld))
            for r in 0..<(c.B * c.L) { for j in 0..<qd { qkv[r * ld + j] *= c.qScale } }
            (kb, vb) = (nil, nil)
            (ldq, ldkv) = (ld, ld)
            (q, k, v) = (qkv.ptr, qkv.ptr + qd, qkv.ptr + qd + kd)
        } else {
            qkv = FloatBuffer(rng.normals(c.B * c.L * qd, scale: c.qScale))
            kb = FloatBuffer(rng.normals(c.B * c.L * kd))
            vb = FloatBuffer(rng.normals(c.B * c.L * kd))
            (ldq, ldkv) = (qd, kd)
            (q, k, v) = (qkv.ptr, kb!.ptr, vb!.ptr)
        }
    }

    /// `(B, L, H·Dh)` from the forward, written with a row stride of H·Dh + 1, and lse `(B, H, L)`.
    func forward(fast: Bool, scratch: Scratch = Scratch()) -> (out: [Float], lse: [Float]) {
        let d = c.dims, hd = c.H * c.Dh, ldo = hd + 1
        let out = FloatBuffer(count: c.B * c.L * ldo), lse = FloatBuffer(count: c.B * c.H * c.L)
        if fast {
            Attention.forward(out: out.ptr, ldo: ldo, lse: lse.ptr, q: q, ldq: ldq, k: k, v: v, ldkv: ldkv,
                              kvBatchStride: c.L * ldkv, dims: d, scratch: scratch)
        } else {
            Attention.forwardReference(out: out.ptr, ldo: ldo, lse: lse.ptr, q: q, ldq: ldq, k: k, v: v, ldkv: ldkv,
                                       kvBatchStride: c.L * ldkv, dims: d)
        }
        return (compactRows(out, rows: c.B * c.L, cols: hd, ld: ldo), lse.array)
    }

    /// dq, dk, dv as interleaved columns of one `(B, L, (H + 2·Hkv)·Dh + 2)` buffer that starts at random values (the
    /// last two columns are guards), after one backward (or `calls` backwards) given dout, out and lse. Returns the
    /// whole buffer; `#expect`s that the guard columns are untouched.
    func backward(dout: [Float], out: [Float], lse: [Float], fast: Bool, calls: Int = 1,
                  schedule: Attention.BackwardSchedule = .automatic,
                  sourceLocation: SourceLocation = #_sourceLocation) -> [Float] {
        let d = c.dims, (qd, kd) = (c.H * c.Dh, c.Hkv * c.Dh), ldg = qd + 2 * kd + 2
        var rng = RNG(seed: 99)
        let g = FloatBuffer(rng.normals(c.B * c.L * ldg))
        for r in 0..<(c.B * c.L) { g[r * ldg + ldg - 2] = 12345; g[r * ldg + ldg - 1] = -6789 }
        let go = FloatBuffer(dout), o = FloatBuffer(out), ls = FloatBuffer(lse)
        for _ in 0..<calls {
            if fast {
                Attention.backward(dq: g.ptr, lddq: ldg, dk: g.ptr + qd, dv: g.ptr + qd + kd, lddkv: ldg,
                                   dout: go.ptr, lddo: qd, q: q, ldq: ldq, k: k, v: v, ldkv: ldkv,
                                   out: o.ptr, ldo: qd, lse: ls.ptr, dims: d, schedule: schedule)
            } else {
                Attention.backwardReference(dq: g.ptr, lddq: ldg, dk: g.ptr + qd, dv: g.ptr + qd + kd, lddkv: ldg,
                                            dout: go.ptr, lddo: qd, q: q, ldq: ldq, k: k, v: v, ldkv: ldkv,
                                            out: o.ptr, ldo: qd, lse: ls.ptr, dims: d)
            }
        }
        let guards = (0..<(c.B * c.L)).allSatisfy { g[$0 * ldg + ldg - 2] == 12345 && g[$0 * ldg + ldg - 1] == -6789 }
        #expect(guards, "backward wrote outside its columns", sourceLocation: sourceLocation)
        return g.array
    }
}

private func compactRows(_ b: FloatBuffer, rows: Int, cols: Int, ld: Int) -> [Float] {
    (0..<(rows * cols)).map { b[($0 / cols) * ld + $0 % cols] }
}

private func peak(_ x: [Float]) -> Float { x.reduce(0) { max($0, abs($1)) } }

// MARK: - A Double oracle for finite differences

/// Causal GQA attention in Double on contiguous q `(B, L, H·Dh)`, k, v `(B, L, Hkv·Dh)`: the loss Σ w ∘ out.
private func attentionLoss(q: [Double], k: [Double], v: [Double], w: [Double],
                           B: Int, L: Int, H: Int, Hkv: Int, Dh: Int) -> Double {
    let scale = 1 / Double(Dh).squareRoot(), G = H / Hkv
    var loss = 0.0
    for b in 0..<B {
        for h in 0..<H {
            for i in 0..<L {
                let qi = (b * L + i) * H * Dh + h * Dh
                let s = (0...i).map { j -> Double in
                    let kj = (b * L + j) * Hkv * Dh + (h / G) * Dh
                    return scale * (0..<Dh).reduce(0.0) { $0 + q[qi + $1] * k[kj + $1] }
                }
                let m = s.max()!
                let e = s.map { exp($0 - m) }
                let z = e.reduce(0, +)
                for c in 0..<Dh {
                    var o = 0.0
                    for j in 0...i { o += e[j] / z * v[(b * L + j) * Hkv * Dh + (h / G) * Dh + c] }
                    loss += w[qi + c] * o
                }
            }
        }
    }
    return loss
}

// MARK: - Tests

@Suite struct AttentionTests {
    static let forwardCases: [AttentionCase] = [
        AttentionCase(B: 1, H: 1, Hkv: 1, Dh: 8, L: 1),
        AttentionCase(B: 1, H: 2, Hkv: 1, Dh: 16, L: 2, fused: false),
        AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 5, L: 3),
        AttentionCase(B: 1, H: 4, Hkv: 4, Dh: 16, L: 4, fused: false),       // the last row-path length
        AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 16, L: 5),                     // the first tiled length
        AttentionCase(B: 1, H: 6, Hkv: 3, Dh: 24, L: 64),                    // exactly one tile
        AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 64, L: 100),
        AttentionCase(B: 1, H: 6, Hkv: 3, Dh: 24, L: 130, qScale: 4),
        AttentionCase(B: 3, H: 4, Hkv: 1, Dh: 5, L: 129, fused: false, qScale: 4),
        AttentionCase(B: 1, H: 2, Hkv: 2, Dh: 33, L: 200),
    ]

    @Test("tiled forward == reference (out, lse)", arguments: forwardCases)
    func forwardMatchesReference(_ c: AttentionCase) {
        let x = c.make()
        let fast = x.forward(fast: true), ref = x.forward(fast: false)
        expectClose("\(c.testDescription) out", fast.out, ref.out, atol: 1e-5, rtol: 1e-5)
        expectClose("\(c.testDescription) lse", fast.lse, ref.lse, atol: 1e-5, rtol: 1e-5)
    }

    /// Generation and chunked evaluation: Lq new queries at positions qOffset ..< qOffset + Lq against a KV cache of
    /// capacity 160 rows per sequence (batch stride 160·ldkv) holding Lk keys. Every slot the call must not read —
    /// past Lk, and past the last query's position — holds NaN.
    @Test("KV cache: kvBatchStride > Lk·ldkv, qOffset > 0 == reference",
          arguments: [(Lq: 37, qOffset: 63, Lk: 100), (Lq: 1, qOffset: 99, Lk: 100), (Lq: 3, qOffset: 40, Lk: 43),
                      (Lq: 20, qOffset: 30, Lk: 100), (Lq: 70, qOffset: 1, Lk: 71), (Lq: 1, qOffset: 0, Lk: 1)])
    func kvCacheMatchesReference(_ p: (Lq: Int, qOffset: Int, Lk: Int)) {
        let (B, H, Hkv, Dh, capacity) = (2, 4, 2, 24, 160)
        let d = AttentionDims(B: B, H: H, Hkv: Hkv, Dh: Dh, Lq: p.Lq, Lk: p.Lk, qOffset: p.qOffset)
        var rng = RNG(seed: 5)
        let ldq = H * Dh + 2, ldkv = Hkv * Dh, ldo = H * Dh
        let q = FloatBuffer(rng.normals(B * p.Lq * ldq, scale: 2))
        let k = FloatBuffer(rng.normals(B * capacity * ldkv)), v = FloatBuffer(rng.normals(B * capacity * ldkv))
        for b in 0..<B {
            for j in (p.qOffset + p.Lq)..<capacity {
                for c in 0..<ldkv { k[(b * capacity + j) * ldkv + c] = .nan; v[(b * capacity + j) * ldkv + c] = .nan }
            }
        }
        func run(_ fast: Bool) -> ([Float], [Float]) {
            let out = FloatBuffer(count: B * p.Lq * ldo), lse = FloatBuffer(count: B * H * p.Lq)
            if fast {
                Attention.forward(out: out.ptr, ldo: ldo, lse: lse.ptr, q: q.ptr, ldq: ldq, k: k.ptr, v: v.ptr,
                                  ldkv: ldkv, kvBatchStride: capacity * ldkv, dims: d)
            } else {
                Attention.forwardReference(out: out.ptr, ldo: ldo, lse: lse.ptr, q: q.ptr, ldq: ldq, k: k.ptr,
                                           v: v.ptr, ldkv: ldkv, kvBatchStride: capacity * ldkv, dims: d)
            }
            return (out.array, lse.array)
        }
        let (out, lse) = run(true), (rout, rlse) = run(false)
        #expect(out.allSatisfy { $0.isFinite } && lse.allSatisfy { $0.isFinite }, "\(d): read a slot it must not")
        expectClose("\(d) out", out, rout, atol: 1e-5, rtol: 1e-5)
        expectClose("\(d) lse", lse, rlse, atol: 1e-5, rtol: 1e-5)
    }

    /// Evaluation of a long file: queries [0, L1) with the first L1 keys, then [L1, L) against all L, equal the whole
    /// call bit for bit (every query meets the same key tiles in the same order and each score is one in-order sum);
    /// a generation loop, one query at a time (the row path: another summation order), agrees to rounding.
    @Test("chunked == whole (bits); one query at a time == whole (rounding)", arguments: [64, 50, 5])
    func chunkedEqualsWhole(_ L1: Int) {
        let c = AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 16, L: 150, qScale: 2)
        let x = c.make()
        let whole = x.forward(fast: true)
        let ldo = c.H * c.Dh
        let out = FloatBuffer(count: c.B * c.L * ldo)
        var chunkLse = [Float](repeating: .nan, count: c.B * c.H * c.L)
        func call(_ start: Int, _ end: Int) {
            // A chunk's queries and outputs are rows start ..< end of each sequence: batch strides L·ld, so one call
            // per sequence keeps the (B, Lq, ·) layout the kernel expects.
            for b in 0..<c.B {
                let d = AttentionDims(B: 1, H: c.H, Hkv: c.Hkv, Dh: c.Dh, Lq: end - start, Lk: end, qOffset: start)
                let l = FloatBuffer(count: c.H * (end - start))
                Attention.forward(out: out.ptr + (b * c.L + start) * ldo, ldo: ldo, lse: l.ptr,
                                  q: x.q + (b * c.L + start) * x.ldq, ldq: x.ldq,
                                  k: x.k + b * c.L * x.ldkv, v: x.v + b * c.L * x.ldkv, ldkv: x.ldkv,
                                  kvBatchStride: c.L * x.ldkv, dims: d)
                for h in 0..<c.H {
                    for i in start..<end { chunkLse[(b * c.H + h) * c.L + i] = l[h * (end - start) + i - start] }
                }
            }
        }
        call(0, L1)
        call(L1, c.L)
        #expect(out.array == whole.out, "chunks [0, \(L1)) + [\(L1), \(c.L)): out differs from the whole call")
        #expect(chunkLse == whole.lse, "chunks [0, \(L1)) + [\(L1), \(c.L)): lse differs from the whole call")
        out.zero()
        for t in 0..<c.L { call(t, t + 1) }
        expectClose("one query at a time: out", out.array, whole.out, atol: 1e-5, rtol: 1e-5)
        expectClose("one query at a time: lse", chunkLse, whole.lse, atol: 1e-5, rtol: 1e-5)
    }

    /// Causality: huge values in the last key and value rows change no bit before the last query. (Finite ones:
    /// a masked score's probability is exactly 0, but 0 · NaN would still be NaN in a tile product, as on GPUs.)
    @Test func futureKeysChangeNothing() {
        let c = AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 16, L: 130)
        let x = c.make()
        let before = x.forward(fast: true)
        for b in 0..<c.B {
            for j in 0..<(c.Hkv * c.Dh) { x.k[(b * c.L + c.L - 1) * x.ldkv + j] = 1e30; x.v[(b * c.L + c.L - 1) * x.ldkv + j] = -1e30 }
        }
        let after = x.forward(fast: true)
        let hd = c.H * c.Dh
        var lastChanged = false
        for b in 0..<c.B {
            let rows = (b * c.L * hd)..<((b * c.L + c.L - 1) * hd), last = rows.upperBound..<(rows.upperBound + hd)
            #expect(Array(after.out[rows]) == Array(before.out[rows]), "batch \(b): an earlier query read key L − 1")
            lastChanged = lastChanged || Array(after.out[last]) != Array(before.out[last])
        }
        #expect(lastChanged, "the last queries do not see key L − 1")
    }

    static let backwardCases: [AttentionCase] = [
        AttentionCase(B: 1, H: 1, Hkv: 1, Dh: 8, L: 1),
        AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 5, L: 3),
        AttentionCase(B: 2, H: 6, Hkv: 3, Dh: 24, L: 70),
        AttentionCase(B: 1, H: 4, Hkv: 1, Dh: 64, L: 130, qScale: 4),
        AttentionCase(B: 3, H: 2, Hkv: 2, Dh: 16, L: 64, fused: false),
        AttentionCase(B: 1, H: 2, Hkv: 1, Dh: 33, L: 150),
    ]

    /// dq, dk, dv interleaved in one wider buffer with random starting values: the tiled backward adds what the
    /// reference adds, and writes nothing else (guard columns).
    @Test("tiled backward == reference backward (accumulating, interleaved)", arguments: backwardCases)
    func backwardMatchesReference(_ c: AttentionCase) {
        let x = c.make()
        let (out, lse) = x.forward(fast: true)
        var rng = RNG(seed: 17)
        let dout = rng.normals(out.count)
        let start = x.backward(dout: dout, out: out, lse: lse, fast: true, calls: 0)
        let fast = zip(x.backward(dout: dout, out: out, lse: lse, fast: true), start).map { $0 - $1 }
        let ref = zip(x.backward(dout: dout, out: out, lse: lse, fast: false), start).map { $0 - $1 }
        expectClose("\(c.testDescription) dq|dk|dv", fast, ref, atol: 5e-6 * peak(ref), rtol: 2e-5)
    }

    /// Calling backward twice adds the gradient twice.
    @Test func backwardAccumulates() {
        let c = AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 16, L: 90)
        let x = c.make()
        let (out, lse) = x.forward(fast: true)
        var rng = RNG(seed: 23)
        let dout = rng.normals(out.count)
        let start = x.backward(dout: dout, out: out, lse: lse, fast: true, calls: 0)
        let once = x.backward(dout: dout, out: out, lse: lse, fast: true, calls: 1)
        let twice = x.backward(dout: dout, out: out, lse: lse, fast: true, calls: 2)
        let g1 = zip(once, start).map { $0 - $1 }, g2 = zip(twice, start).map { $0 - $1 }
        #expect(peak(g1) > 0.1, "the gradient is not negligible")
        expectClose("second call adds it again", g2, g1.map { 2 * $0 }, atol: 2e-6 * peak(start), rtol: 1e-5)
    }

    /// The gradients of Σ w ∘ out: both backwards against central differences of a Double forward (h = 1e-5;
    /// truncation and cancellation ≪ 1e-6), with GQA, Dh not a multiple of 16 and L not one of the tile.
    @Test func gradientsMatchFiniteDifferences() {
        let c = AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 3, L: 5, fused: false, qScale: 2)
        let x = c.make()
        let (qd, kd, n) = (c.H * c.Dh, c.Hkv * c.Dh, c.B * c.L)
        let inputs = [(0..<(n * qd)).map { Double(x.q[$0]) }, (0..<(n * kd)).map { Double(x.k[$0]) },
                      (0..<(n * kd)).map { Double(x.v[$0]) }]
        var rng = RNG(seed: 31)
        let w = rng.normals(n * qd)
        let wd = w.map(Double.init)
        func loss(_ a: [[Double]]) -> Double {
            attentionLoss(q: a[0], k: a[1], v: a[2], w: wd, B: c.B, L: c.L, H: c.H, Hkv: c.Hkv, Dh: c.Dh)
        }
        let h = 1e-5
        var want: [Float] = []
        for t in 0..<3 {
            for i in 0..<inputs[t].count {
                var a = inputs
                a[t][i] = inputs[t][i] + h
                let up = loss(a)
                a[t][i] = inputs[t][i] - h
                want.append(Float((up - loss(a)) / (2 * h)))
            }
        }
        // The forward references agree with the oracle: Σ w ∘ out.
        let ref = x.forward(fast: false)
        let refLoss = zip(ref.out, w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let exact = loss(inputs)
        #expect(abs(refLoss - exact) < 1e-5 * max(1, abs(exact)), "forwardReference: Σ w∘out \(refLoss) vs \(exact)")
        for fast in [true, false] {
            let (out, lse) = x.forward(fast: fast)
            let start = x.backward(dout: w, out: out, lse: lse, fast: fast, calls: 0)
            let g = x.backward(dout: w, out: out, lse: lse, fast: fast)
            // Split the interleaved (B, L, [dq | dk | dv | 2 guards]) rows into dq, dk, dv.
            let ldg = qd + 2 * kd + 2
            var got: [Float] = []
            for (lo, width) in [(0, qd), (qd, kd), (qd + kd, kd)] {
                for r in 0..<n { for j in 0..<width { got.append(g[r * ldg + lo + j] - start[r * ldg + lo + j]) } }
            }
            expectClose("\(fast ? "backward" : "backwardReference") vs finite differences", got, want,
                        atol: 2e-5 * peak(want), rtol: 1e-4)
        }
    }

    /// The thread count and the backward schedule never change a bit; nor does running again.
    @Test func threadsAndSchedulesGiveTheSameBits() {
        withThreadSettingsLock {
            let saved = Parallel.threads
            defer { Parallel.setThreads(saved) }
            let c = AttentionCase(B: 2, H: 4, Hkv: 2, Dh: 16, L: 200)  // big enough to be split over threads
            let x = c.make()
            var rng = RNG(seed: 41)
            let dout = rng.normals(c.B * c.L * c.H * c.Dh)
            Parallel.setThreads(1)
            let f1 = x.forward(fast: true)
            let g1 = x.backward(dout: dout, out: f1.out, lse: f1.lse, fast: true)
            let scratch1 = (Attention.forwardScratchCount(dims: c.dims),
                            Attention.backwardScratchCount(dims: c.dims, schedule: .onePass),
                            Attention.backwardScratchCount(dims: c.dims, schedule: .twoPass))
            for t in [1, 2, 3] {
                Parallel.setThreads(t)
                if t == 2 {
                    // Scratch is per worker: twice as much means the work really is split over two threads.
                    #expect(Attention.forwardScratchCount(dims: c.dims) == 2 * scratch1.0, "forward not split")
                    #expect(Attention.backwardScratchCount(dims: c.dims, schedule: .onePass) == 2 * scratch1.1,
                            "one-pass backward not split")
                    #expect(Attention.backwardScratchCount(dims: c.dims, schedule: .twoPass) == 2 * scratch1.2,
                            "two-pass backward not split")
                }
                for _ in 0..<2 {
                    let f = x.forward(fast: true)
                    #expect(f.out == f1.out && f.lse == f1.lse, "threads \(t): forward differs from one thread")
                }
                for s in [Attention.BackwardSchedule.automatic, .onePass, .twoPass] {
                    let g = x.backward(dout: dout, out: f1.out, lse: f1.lse, fast: true, schedule: s)
                    #expect(g == g1, "threads \(t), \(s): backward differs from one thread")
                }
            }
        }
    }

    /// Memory: the forward's scratch does not grow with L (one query tile's state per thread), the backward's grows
    /// linearly; and a long call is still right.
    @Test func longSequencesUseBoundedScratch() {
        withThreadSettingsLock {
            let saved = Parallel.threads
            defer { Parallel.setThreads(saved) }
            Parallel.setThreads(2)
            func dims(_ L: Int) -> AttentionDims { AttentionDims(B: 1, H: 2, Hkv: 1, Dh: 16, L: L) }
            let f = [256, 2048, 8192].map { Attention.forwardScratchCount(dims: dims($0)) }
            #expect(f[0] == f[1] && f[1] == f[2], "forward scratch \(f) for L = 256, 2048, 8192")
            #expect(f[1] <= 2 * 40_000, "forward scratch \(f[1]) floats for two threads")
            let b = [2048, 4096].map { Attention.backwardScratchCount(dims: dims($0)) }
            #expect(Double(b[1]) / Double(b[0]) < 2.1, "backward scratch \(b) for L = 2048, 4096: not linear")
            let c = AttentionCase(B: 1, H: 2, Hkv: 1, Dh: 16, L: 2048)
            let x = c.make()
            let scratch = Scratch()
            let fast = x.forward(fast: true, scratch: scratch), ref = x.forward(fast: false)
            expectClose("L = 2048 out", fast.out, ref.out, atol: 1e-5, rtol: 1e-5)
            expectClose("L = 2048 lse", fast.lse, ref.lse, atol: 1e-5, rtol: 1e-5)
        }
    }
}
