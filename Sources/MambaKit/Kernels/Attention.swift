/// Causal multi-head softmax attention with grouped KV heads (GQA): the core of NemotronH's `full_attention`
/// (transformers `NemotronHAttention`, arXiv 2406.07887), no positional encoding; the q, k, v and o projections are
/// the caller's. Forward and backward follow FlashAttention-2 (arXiv 2307.08691, Algorithms 1 and 2).
///
/// Letters: B batch, H query heads, Hkv KV heads, G = H/Hkv (query head h reads KV head h / G), Dh head dim,
/// Lq queries, Lk keys, T = `tile` (64). Query i sits at position qOffset + i, key j at j; query i sees j ≤ qOffset + i.
///
///     s_ij = scale · q_i·k_j     lse_i = log Σ_{j ≤ qOffset+i} exp(s_ij)     p_ij = exp(s_ij − lse_i)
///     o_i  = Σ_j p_ij v_j
///     backward, given dO:  D_i = dO_i·o_i (= Σ_j p_ij dP_ij)   dP_ij = dO_i·v_j   dS_ij = p_ij (dP_ij − D_i)
///     dq_i += scale Σ_j dS_ij k_j     dk_j += scale Σ_i dS_ij q_i     dv_j += Σ_i p_ij dO_i
///     (dk and dv of a KV head sum over the G query heads of its group, in a fixed order)
///
/// Saved for backward: the output O `(B, Lq, H·Dh)` and lse `(B, H, Lq)`, both O(L). P is never stored: backward
/// recomputes it tile by tile as exp(S − lse).
///
/// Memory, never an Lq × Lk matrix. Forward, per thread: the state of one query tile for the G heads of a group
/// (Qᵀ and the output accumulator Oᵀ, Dh × T each, the running max and sum), one score tile (T × T) and one K and one
/// V tile (T × Dh) — G·(2·Dh + 2)·T + T² + 2·T·Dh floats whatever L. Backward, per thread: the packed queries of one
/// group (Qᵀ, dOᵀ, Q and dO rows, D, lse) and, on the one-pass schedule, their dq accumulators: O(G·L·Dh).
///
/// Forward (online softmax): per (b, KV head, query tile of T rows), key tiles run left to right up to the diagonal
/// (tiles above it are skipped: half the work) with a running max m and sum l per query: m' = max(m, max_j s_ij),
/// l' = e^(m−m')·l + Σ_j e^(s_ij−m'), O' = e^(m−m')·O + P·V; at the end O/l and lse = m + log l. Exponentials only see
/// arguments ≤ 0; a masked score is −∞, whose exponential is exactly 0. Calls with Lq ≤ `rowPathMaxQueries`
/// (generation) take one query row at a time, dot products over Dh, with the same recurrence.
///
/// Tile layout ("query lanes"): queries run along the 16 SIMD lanes. Qᵀ is packed once per query tile; Sᵀ = K·Qᵀ and
/// Oᵀ += Vᵀ·Pᵀ (in backward also dPᵀ = V·dOᵀ and dQᵀ += Kᵀ·dSᵀ) broadcast one K or V element against 16 queries, and
/// the softmax statistics (m, l, lse, D) are per-lane vectors: no horizontal sums, no per-tile transposes. dK += dSᵀ·Q
/// and dV += Pᵀ·dO put Dh on the lanes and read packed Q and dO rows. K and V tiles are first copied to contiguous
/// scratch (rows of a fused qkv projection lie a power of two apart and would share L1 sets). Every product is one
/// register-blocked micro-kernel (6 rows × 16 lanes held in registers, one fused multiply-add per term, in order), so
/// each element's bits depend only on its own inputs: results are the same for every thread count, and a chunked
/// forward (KV cache) gives the bits of the whole one.
///
/// Backward (training shapes: Lq = Lk, qOffset = 0): either one pass per (b, KV head) — key tiles in order, for each
/// the G heads and the query tiles at or below the diagonal, dS·K added into per-thread dQᵀ accumulators — or, when
/// B·Hkv would leave threads idle, two passes: dK/dV per (b, KV head, key tile), then dQ per (b, head, query tile),
/// each recomputing P. Both run every tile pair through the same code in the same order: the same bits.
///
/// `forwardReference` and `backwardReference` are the plain twins (whole score rows, one query at a time, Double).
public struct AttentionDims: Sendable, Equatable, CustomStringConvertible {
    public var B: Int
    public var H: Int
    public var Hkv: Int
    public var Dh: Int
    public var Lq: Int
    public var Lk: Int
    public var qOffset: Int

    /// A KV-cache call: Lq new queries at positions qOffset ..< qOffset + Lq against Lk cached keys.
    public init(B: Int, H: Int, Hkv: Int, Dh: Int, Lq: Int, Lk: Int, qOffset: Int) {
        self.B = B; self.H = H; self.Hkv = Hkv; self.Dh = Dh; self.Lq = Lq; self.Lk = Lk; self.qOffset = qOffset
    }

    /// A whole sequence (training): Lq = Lk = L, qOffset = 0.
    public init(B: Int, H: Int, Hkv: Int, Dh: Int, L: Int) {
        self.init(B: B, H: H, Hkv: Hkv, Dh: Dh, Lq: L, Lk: L, qOffset: 0)
    }

    /// Query heads per KV head.
    public var group: Int { H / Hkv }

    public var description: String {
        "B\(B) H\(H) Hkv\(Hkv) Dh\(Dh) Lq\(Lq) Lk\(Lk) qOffset\(qOffset)"
    }

    /// Every query must see at least one key and every key it may see must exist: the last query (position
    /// qOffset + Lq − 1) sees keys 0 ... qOffset + Lq − 1, so qOffset + Lq ≤ Lk. Keys past that are never read.
    func check() {
        precondition(B >= 0 && Lq >= 0 && Dh >= 1 && H >= 1 && Hkv >= 1, "attention: bad dims \(self)")
        precondition(H % Hkv == 0, "attention: H = \(H) is not a multiple of Hkv = \(Hkv)")
        precondition(qOffset >= 0 && qOffset + Lq <= Lk,
                     "attention: queries at positions \(qOffset) ..< \(qOffset + Lq) need qOffset + Lq ≤ Lk = \(Lk)")
    }
}

public enum Attention {
    /// Query and key tile size T (a multiple of 16).
    public static let tile = 64
    /// Calls with at most this many queries run row by row (dot products over Dh) instead of in 16-lane tiles.
    public static let rowPathMaxQueries = 4

    /// How backward spreads its work over threads; all three give the same bits.
    public enum BackwardSchedule: Sendable {
        /// One pass unless B·Hkv units would leave threads idle, then two.
        case automatic
        /// Threads over (b, KV head); dq, dk and dv in one sweep (5 tile products per tile pair).
        case onePass
        /// dK/dV over (b, KV head, key tile), then dQ over (b, head, query tile) (7 tile products per pair).
        case twoPass
    }

    public static func defaultScale(headDim: Int) -> Float { Float(1 / Double(headDim).squareRoot()) }

    // MARK: - Forward

    /// Floats of `scratch` that `forward` uses: per thread one query tile's state for the G heads of a group and
    /// one K and one V tile, (2·G·Dh + T + 2·G + 2·Dh)·T floats, whatever Lq and Lk (once the threads are busy).
    public static func forwardScratchCount(dims d: AttentionDims) -> Int {
        forwardPlan(d).workers * forwardPerWorker(d)
    }

    /// out = softmax(scale·q·kᵀ + causal mask)·v, and lse = log Σ_j exp(s_ij).
    ///
    /// - out: `(B, Lq, H·Dh)`, rows of stride `ldo` (batch stride Lq·ldo); must not overlap the inputs.
    /// - lse: `(B, H, Lq)` contiguous, or nil.
    /// - q: `(B, Lq, H·Dh)`, rows of stride `ldq` (batch stride Lq·ldq); head h is columns h·Dh ..< (h+1)·Dh.
    /// - k, v: `(B, Lk, Hkv·Dh)`, rows of stride `ldkv`, batch stride `kvBatchStride` ≥ Lk·ldkv (a KV cache with
    ///   room for more keys has a larger one); KV head g is columns g·Dh ..< (g+1)·Dh.
    /// - dims: query i is at position qOffset + i and sees keys 0 ... qOffset + i (needs qOffset + Lq ≤ Lk).
    /// - scale: nil for Dh^−½.
    /// - scratch: `forwardScratchCount(dims:)` floats are taken from it.
    public static func forward(
        out: UnsafeMutablePointer<Float>, ldo: Int, lse: UnsafeMutablePointer<Float>?,
        q: UnsafePointer<Float>, ldq: Int,
        k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int, kvBatchStride: Int,
        dims d: AttentionDims, scale: Float? = nil, scratch: Scratch = Scratch()
    ) {
        d.check()
        precondition(ldq >= d.H * d.Dh && ldo >= d.H * d.Dh && ldkv >= d.Hkv * d.Dh && kvBatchStride >= d.Lk * ldkv,
                     "attention forward: strides ldq \(ldq), ldo \(ldo), ldkv \(ldkv), kvBatchStride \(kvBatchStride) too small for \(d)")
        guard d.B > 0, d.Lq > 0 else { return }
        let plan = forwardPlan(d)
        let per = forwardPerWorker(d)
        let base = scratch.floats(plan.workers * per)
        let f = ForwardArgs(out: out, ldo: ldo, lse: lse, q: q, ldq: ldq, k: k, v: v, ldkv: ldkv,
                            kvBatchStride: kvBatchStride, d: d, scale: scale ?? defaultScale(headDim: d.Dh))
        if plan.rows {
            Parallel.forRanges(plan.items, grain: plan.grain) { w, lo, hi in
                for item in lo..<hi { forwardRow(f, bkv: item / d.Lq, i: item % d.Lq, ws: base + w * per) }
            }
        } else {
            let nT = (d.Lq + tile - 1) / tile
            Parallel.forRanges(plan.items, grain: plan.grain) { w, lo, hi in
                for item in lo..<hi {
                    forwardTile(f, bkv: item / nT, qt: zigzag(item % nT, nT), ws: base + w * per)
                }
            }
        }
    }

    private struct ForwardArgs {
        let out: UnsafeMutablePointer<Float>, ldo: Int, lse: UnsafeMutablePointer<Float>?
        let q: UnsafePointer<Float>, ldq: Int
        let k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int, kvBatchStride: Int
        let d: AttentionDims, scale: Float
    }

    /// Work items — (b, KV head, query tile), or (b, KV head, query) on the row path — and the threads they are worth.
    private static func forwardPlan(_ d: AttentionDims) -> (rows: Bool, items: Int, grain: Int, workers: Int) {
        let rows = d.Lq <= rowPathMaxQueries
        let items = d.B * d.Hkv * (rows ? d.Lq : (d.Lq + tile - 1) / tile)
        // Multiply-adds per item (about): keys seen × Dh × 2 products × query lanes × G. A thread is worth ½ M of
        // them on the tiled path; a generation step (rows) is split only from 2 M (measured: at B = 1, Lk = 2048 two
        // threads took 117 µs where one took 83 — the wake-up, and each KV head's cache in the other core's L2).
        let keys = d.qOffset + (rows ? 1 : min(d.Lq, tile)) + d.Lq / 2
        let lanes = rows ? 1 : min(tile, padded(d.Lq))
        let grain = max(1, (rows ? 1 << 21 : 1 << 19) / max(1, 2 * keys * d.Dh * lanes * d.group))
        return (rows, items, grain, Parallel.workers(for: items, grain: grain))
    }

    private static func forwardPerWorker(_ d: AttentionDims) -> Int {
        let G = d.group, T = tile
        return max(2 * T * d.Dh + T * T + G * (2 * d.Dh + 2) * T, G * (T + padded(d.Dh) + 16))
    }

    /// One query tile (rows qt·T ..< qt·T + nq) of the G heads that share KV head bkv % Hkv of batch bkv / Hkv.
    private static func forwardTile(_ f: ForwardArgs, bkv: Int, qt: Int, ws: UnsafeMutablePointer<Float>) {
        let d = f.d, Dh = d.Dh, T = tile, G = d.group
        let b = bkv / d.Hkv, kvh = bkv % d.Hkv
        let i0 = qt * T, nq = min(T, d.Lq - i0), nv = (nq + 15) / 16, W = nv * 16
        // Workspace: K and V tiles (T × Dh), Sᵀ then Pᵀ (T × W), and per head g: Qᵀ (Dh × W), Oᵀ (Dh × W), m, l (W).
        let Kt = ws, Vt = Kt + T * Dh, S = Vt + T * Dh, heads = S + T * T
        let per = (2 * Dh + 2) * T
        for g in 0..<G {
            let QT = heads + g * per, OT = QT + Dh * T, mv = OT + Dh * T, lv = mv + T
            let qb = f.q + (b * d.Lq + i0) * f.ldq + (kvh * G + g) * Dh
            for i in 0..<nq { for c in 0..<Dh { QT[c * W + i] = qb[i * f.ldq + c] } }
            if nq < W { for c in 0..<Dh { (QT + c * W + nq).update(repeating: 0, count: W - nq) } }
            OT.update(repeating: 0, count: Dh * W)
            mv.update(repeating: -.infinity, count: W)
            lv.update(repeating: 0, count: W)
        }
        let kb = f.k + b * f.kvBatchStride + kvh * Dh, vb = f.v + b * f.kvBatchStride + kvh * Dh
        let pos0 = d.qOffset + i0          // position of the tile's first query
        let jEnd = pos0 + nq               // keys 0 ..< jEnd are seen by some query of the tile
        let scale = f.scale
        var j0 = 0
        while j0 < jEnd {
            let nk = min(T, jEnd - j0)
            // Contiguous copies: rows of a fused projection lie a power of two apart and would share L1 sets.
            copyRows(Kt, kb + j0 * f.ldkv, f.ldkv, rows: nk, cols: Dh)
            copyRows(Vt, vb + j0 * f.ldkv, f.ldkv, rows: nk, cols: Dh)
            for g in 0..<G {
                let QT = heads + g * per, OT = QT + Dh * T, mv = OT + Dh * T, lv = mv + T
                product(S, W, Kt, Dh, 1, QT, W, m: nk, n: W, k: Dh, accumulate: false)
                // Key j is hidden from lanes i < j − pos0.
                if j0 + nk - 1 > pos0 {
                    for r in max(0, pos0 + 1 - j0)..<nk {
                        let t = j0 + r - pos0
                        for c in 0..<min(nv, (t + 15) / 16) {
                            let p = S + r * W + c * 16
                            store(load(p).replacing(with: -.infinity, where: laneIndex .< Float(t - c * 16)), p)
                        }
                    }
                }
                for c in 0..<nv {
                    var mx = F16x(repeating: -.infinity)
                    for r in 0..<nk {
                        let s = load(S + r * W + c * 16)
                        mx = mx.replacing(with: s, where: mx .< s)
                    }
                    let mOld = load(mv + c * 16)
                    let ms = mx * scale
                    let mNew = mOld.replacing(with: ms, where: mOld .< ms)
                    let alpha = expSIMD(mOld - mNew)   // 0 on the first tile (m = −∞)
                    var sum = F16x()
                    for r in 0..<nk {
                        let p = S + r * W + c * 16
                        let e = expSIMD((-mNew).addingProduct(load(p), scale))
                        store(e, p)
                        sum += e
                    }
                    store(load(lv + c * 16) * alpha + sum, lv + c * 16)
                    store(mNew, mv + c * 16)
                    for r in 0..<Dh { store(load(OT + r * W + c * 16) * alpha, OT + r * W + c * 16) }
                }
                product(OT, W, Vt, 1, Dh, S, W, m: Dh, n: W, k: nk, accumulate: true)
            }
            j0 += T
        }
        for g in 0..<G {
            let h = kvh * G + g
            let QT = heads + g * per, OT = QT + Dh * T, mv = OT + Dh * T, lv = mv + T
            let ob = f.out + (b * d.Lq + i0) * f.ldo + h * Dh
            for i in 0..<nq {
                let inv = 1 / lv[i]
                for c in 0..<Dh { ob[i * f.ldo + c] = OT[c * W + i] * inv }
            }
            if let lse = f.lse {
                let lp = lse + (b * d.H + h) * d.Lq + i0
                for i in 0..<nq { lp[i] = mv[i] + logf(lv[i]) }
            }
        }
    }

    /// Query i of the G heads sharing KV head bkv % Hkv (the path for a few queries per call, e.g. generation):
    /// scores as dot products over Dh, four keys at a time, then the same online softmax over key tiles of T as
    /// `forwardTile`. Each key and value row is read from memory once for the G heads.
    private static func forwardRow(_ f: ForwardArgs, bkv: Int, i: Int, ws: UnsafeMutablePointer<Float>) {
        let d = f.d, Dh = d.Dh, T = tile, G = d.group
        let b = bkv / d.Hkv, kvh = bkv % d.Hkv
        let full = Dh & ~15, tail = Dh - full, dhp = padded(Dh)
        // Workspace: scores (G × T), output accumulators (G × Dhp), m and l (G each).
        let sv = ws, ov = sv + G * T, mv = ov + G * dhp, lv = mv + G
        ov.update(repeating: 0, count: G * dhp)
        mv.update(repeating: -.infinity, count: G)
        lv.update(repeating: 0, count: G)
        let qb = f.q + (b * d.Lq + i) * f.ldq + kvh * G * Dh
        let kb = f.k + b * f.kvBatchStride + kvh * Dh, vb = f.v + b * f.kvBatchStride + kvh * Dh
        let nKeys = d.qOffset + i + 1
        let scale = f.scale
        var j0 = 0
        while j0 < nKeys {
            let nk = min(T, nKeys - j0), nv = (nk + 15) / 16
            var r = 0
            while r + 4 <= nk {
                let k0 = kb + (j0 + r) * f.ldkv, k1 = k0 + f.ldkv, k2 = k1 + f.ldkv, k3 = k2 + f.ldkv
                for g in 0..<G {
                    let qr = qb + g * Dh
                    var a0 = F16x(), a1 = F16x(), a2 = F16x(), a3 = F16x()
                    var c = 0
                    while c < full {
                        let x = load(qr + c)
                        a0 = a0.addingProduct(x, load(k0 + c)); a1 = a1.addingProduct(x, load(k1 + c))
                        a2 = a2.addingProduct(x, load(k2 + c)); a3 = a3.addingProduct(x, load(k3 + c))
                        c += 16
                    }
                    if tail > 0 {
                        let x = loadF16x(qr + c, tail)
                        a0 = a0.addingProduct(x, loadF16x(k0 + c, tail)); a1 = a1.addingProduct(x, loadF16x(k1 + c, tail))
                        a2 = a2.addingProduct(x, loadF16x(k2 + c, tail)); a3 = a3.addingProduct(x, loadF16x(k3 + c, tail))
                    }
                    UnsafeMutableRawPointer(sv + g * T + r).storeBytes(of: reduce4(a0, a1, a2, a3), as: SIMD4<Float>.self)
                }
                r += 4
            }
            while r < nk {
                let k0 = kb + (j0 + r) * f.ldkv
                for g in 0..<G {
                    let qr = qb + g * Dh
                    var a0 = F16x()
                    var c = 0
                    while c < full { a0 = a0.addingProduct(load(qr + c), load(k0 + c)); c += 16 }
                    if tail > 0 { a0 = a0.addingProduct(loadF16x(qr + c, tail), loadF16x(k0 + c, tail)) }
                    sv[g * T + r] = laneSum(a0)
                }
                r += 1
            }
            for g in 0..<G {
                let s = sv + g * T
                (s + nk).update(repeating: -.infinity, count: nv * 16 - nk)
                var mx = F16x(repeating: -.infinity)
                for c in 0..<nv { let x = load(s + c * 16); mx = mx.replacing(with: x, where: mx .< x) }
                let mNew = max(mv[g], mx.max() * scale)
                let alpha = expf(mv[g] - mNew)   // 0 on the first tile (m = −∞)
                var sum = F16x()
                for c in 0..<nv {
                    let e = expSIMD(F16x(repeating: -mNew).addingProduct(load(s + c * 16), scale))
                    store(e, s + c * 16)
                    sum += e
                }
                lv[g] = lv[g] * alpha + laneSum(sum)
                mv[g] = mNew
                accumulateRows(ov + g * dhp, alpha: alpha, p: s, v: vb + j0 * f.ldkv, ldv: f.ldkv, rows: nk, Dh: Dh)
            }
            j0 += T
        }
        for g in 0..<G {
            let h = kvh * G + g
            let orow = f.out + (b * d.Lq + i) * f.ldo + h * Dh, o = ov + g * dhp
            let inv = 1 / lv[g]
            for c in 0..<Dh { orow[c] = o[c] * inv }
            f.lse?[(b * d.H + h) * d.Lq + i] = mv[g] + logf(lv[g])
        }
    }

    /// o (Dh, padded to 16) = alpha·o + Σ_r p[r]·v_r over `rows` rows of v (stride ldv), 64 lanes in registers at a time.
    @inline(__always)
    private static func accumulateRows(_ o: UnsafeMutablePointer<Float>, alpha: Float, p: UnsafePointer<Float>,
                                       v: UnsafePointer<Float>, ldv: Int, rows: Int, Dh: Int) {
        let full = Dh & ~15, tail = Dh - full
        var c = 0
        while c + 64 <= full {
            var o0 = load(o + c) * alpha, o1 = load(o + c + 16) * alpha
            var o2 = load(o + c + 32) * alpha, o3 = load(o + c + 48) * alpha
            var vr = v + c
            for r in 0..<rows {
                let pr = p[r]
                o0 = o0.addingProduct(pr, load(vr)); o1 = o1.addingProduct(pr, load(vr + 16))
                o2 = o2.addingProduct(pr, load(vr + 32)); o3 = o3.addingProduct(pr, load(vr + 48))
                vr += ldv
            }
            store(o0, o + c); store(o1, o + c + 16); store(o2, o + c + 32); store(o3, o + c + 48)
            c += 64
        }
        while c < full + (tail > 0 ? 16 : 0) {
            let n = min(16, Dh - c)
            var o0 = load(o + c) * alpha
            var vr = v + c
            for r in 0..<rows { o0 = o0.addingProduct(p[r], n == 16 ? load(vr) : loadF16x(vr, n)); vr += ldv }
            store(o0, o + c)
            c += 16
        }
    }

    // MARK: - Backward

    /// Floats of `scratch` that `backward` uses: per thread, K, V, P, dS, dK and dV tiles and the packed query tiles
    /// (Qᵀ, dOᵀ, Q and dO rows, D, lse) of the G heads of one group, plus, on the one-pass schedule, their dq
    /// accumulators: O(G·L·Dh) per thread, never L².
    public static func backwardScratchCount(dims d: AttentionDims, schedule: BackwardSchedule = .automatic) -> Int {
        let p = backwardPlan(d, schedule)
        return p.workers * p.perWorker
    }

    /// Gradients of `forward` for training shapes only (Lq = Lk = L, qOffset = 0, kvBatchStride = L·ldkv): ADDS
    /// (+=) into dq, dk and dv and writes nothing else, so they may be interleaved columns of one wider buffer.
    ///
    /// - dq: `(B, L, H·Dh)`, rows of stride `lddq`.   dk, dv: `(B, L, Hkv·Dh)`, rows of stride `lddkv`.
    /// - dout: `(B, L, H·Dh)`, rows of stride `lddo` (the gradient of the loss with respect to `out`).
    /// - q `(B, L, H·Dh)` stride `ldq`; k, v `(B, L, Hkv·Dh)` stride `ldkv`: the forward's inputs.
    /// - out `(B, L, H·Dh)` stride `ldo` and lse `(B, H, L)`: what the forward wrote.
    /// - scratch: `backwardScratchCount(dims:schedule:)` floats are taken from it.
    /// - schedule: how work is spread over threads; every choice gives the same bits.
    public static func backward(
        dq: UnsafeMutablePointer<Float>, lddq: Int,
        dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, lddkv: Int,
        dout: UnsafePointer<Float>, lddo: Int,
        q: UnsafePointer<Float>, ldq: Int,
        k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int,
        out: UnsafePointer<Float>, ldo: Int, lse: UnsafePointer<Float>,
        dims d: AttentionDims, scale: Float? = nil, scratch: Scratch = Scratch(),
        schedule: BackwardSchedule = .automatic
    ) {
        d.check()
        precondition(d.Lq == d.Lk && d.qOffset == 0, "attention backward: training shapes only (Lq = Lk, qOffset = 0), got \(d)")
        let hd = d.H * d.Dh, kd = d.Hkv * d.Dh
        precondition(lddq >= hd && lddo >= hd && ldq >= hd && ldo >= hd && lddkv >= kd && ldkv >= kd,
                     "attention backward: a row stride is smaller than its row for \(d)")
        guard d.B > 0, d.Lq > 0 else { return }
        let p = backwardPlan(d, schedule)
        let base = scratch.floats(p.workers * p.perWorker)
        let a = BackwardArgs(dq: dq, lddq: lddq, dk: dk, dv: dv, lddkv: lddkv, dout: dout, lddo: lddo, q: q, ldq: ldq,
                             k: k, v: v, ldkv: ldkv, out: out, ldo: ldo, lse: lse, d: d,
                             scale: scale ?? defaultScale(headDim: d.Dh))
        let nT = a.nT
        if p.onePass {
            Parallel.forRanges(d.B * d.Hkv, grain: p.grain) { w, lo, hi in
                for item in lo..<hi { onePassItem(a, bkv: item, ws: base + w * p.perWorker) }
            }
        } else {
            Parallel.forRanges(d.B * d.Hkv * nT, grain: p.grain) { w, lo, hi in
                for item in lo..<hi { keyTileItem(a, bkv: item / nT, kt: zigzag(item % nT, nT), ws: base + w * p.perWorker) }
            }
            Parallel.forRanges(d.B * d.H * nT, grain: p.grain) { w, lo, hi in
                for item in lo..<hi { queryTileItem(a, bh: item / nT, qt: zigzag(item % nT, nT), ws: base + w * p.perWorker) }
            }
        }
    }

    private struct BackwardArgs {
        let dq: UnsafeMutablePointer<Float>, lddq: Int
        let dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, lddkv: Int
        let dout: UnsafePointer<Float>, lddo: Int
        let q: UnsafePointer<Float>, ldq: Int
        let k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int
        let out: UnsafePointer<Float>, ldo: Int, lse: UnsafePointer<Float>
        let d: AttentionDims, scale: Float

        var L: Int { d.Lq }
        var nT: Int { (d.Lq + tile - 1) / tile }
        var Dhp: Int { padded(d.Dh) }
        var packSize: Int { packFloats(d.Dh) }
        var tileFloats: Int { fixedTileFloats(d.Dh) }
    }

    /// Floats of one packed query tile: Qᵀ (Dh × T), dOᵀ (Dh × T), Q rows (T × Dhp), dO rows (T × Dhp), D (T),
    /// lse (T). Padded lanes have Qᵀ = dOᵀ = D = 0 and lse = +∞, so their P and dS are 0.
    private static func packFloats(_ Dh: Int) -> Int { 2 * Dh * tile + 2 * tile * padded(Dh) + 2 * tile }

    /// The fixed tiles of a backward worker: K and V (T × Dh), P and dS (T × T), dK and dV (T × Dhp).
    private static func fixedTileFloats(_ Dh: Int) -> Int { 2 * tile * Dh + 2 * tile * tile + 2 * tile * padded(Dh) }

    private static func backwardPlan(_ d: AttentionDims, _ schedule: BackwardSchedule)
        -> (onePass: Bool, grain: Int, workers: Int, perWorker: Int) {
        let T = tile, nT = (d.Lq + T - 1) / T, G = d.group
        let packSize = packFloats(d.Dh), tiles = fixedTileFloats(d.Dh)
        // Multiply-adds of one (b, KV head): G heads × ~nT²/2 tile pairs × 5 products of T·T·Dh.
        let unitWork = G * max(1, nT * (nT + 1) / 2) * 5 * T * T * d.Dh
        let units = d.B * d.Hkv
        let unitGrain = max(1, (1 << 22) / unitWork)
        let grain = max(1, (1 << 22) / max(1, unitWork / nT))
        let onePass: Bool
        switch schedule {
        case .onePass: onePass = true
        case .twoPass: onePass = false
        case .automatic:
            // One pass runs 5 tile products per tile pair, two passes 7 plus repeated packing: measured 1.75× the
            // time. One pass hands each thread ⌈units / t⌉ whole units, two passes spread evenly over t threads.
            let t = Parallel.workers(for: units * nT, grain: grain)
            let rounds = (units + t - 1) / t
            onePass = 4 * t * rounds <= 7 * units
        }
        if onePass {
            return (true, unitGrain, Parallel.workers(for: units, grain: unitGrain),
                    tiles + G * nT * packSize + G * nT * d.Dh * T)
        }
        let workers = max(Parallel.workers(for: units * nT, grain: grain), Parallel.workers(for: d.B * d.H * nT, grain: grain))
        return (false, grain, workers, tiles + max(G * nT * packSize, packSize + d.Dh * T))
    }

    /// Packs query tile qt of head bh (see `packFloats`) into `dst`; D = rowsum(dO ∘ O) in Float, in order.
    private static func packQueryTile(_ a: BackwardArgs, bh: Int, qt: Int, dst: UnsafeMutablePointer<Float>) {
        let d = a.d, Dh = d.Dh, T = tile, Dhp = a.Dhp
        let b = bh / d.H, h = bh % d.H
        let i0 = qt * T, nq = min(T, a.L - i0)
        let QT = dst, dOT = QT + Dh * T, Qr = dOT + Dh * T, dOr = Qr + T * Dhp, D = dOr + T * Dhp, ls = D + T
        let qb = a.q + (b * a.L + i0) * a.ldq + h * Dh
        let gb = a.dout + (b * a.L + i0) * a.lddo + h * Dh
        let ob = a.out + (b * a.L + i0) * a.ldo + h * Dh
        for i in 0..<nq {
            var s: Float = 0
            for c in 0..<Dh {
                let x = qb[i * a.ldq + c], g = gb[i * a.lddo + c]
                QT[c * T + i] = x
                dOT[c * T + i] = g
                Qr[i * Dhp + c] = x
                dOr[i * Dhp + c] = g
                s += g * ob[i * a.ldo + c]
            }
            for c in Dh..<Dhp { Qr[i * Dhp + c] = 0; dOr[i * Dhp + c] = 0 }
            D[i] = s
            ls[i] = a.lse[bh * a.L + i0 + i]
        }
        if nq < T {
            for c in 0..<Dh {
                (QT + c * T + nq).update(repeating: 0, count: T - nq)
                (dOT + c * T + nq).update(repeating: 0, count: T - nq)
            }
            (D + nq).update(repeating: 0, count: T - nq)
            (ls + nq).update(repeating: .infinity, count: T - nq)
        }
    }

    /// Copies key tile kt of (b, KV head) bkv into Kt and Vt (nk rows of Dh), returns nk.
    @inline(__always)
    private static func loadKeyTile(_ a: BackwardArgs, bkv: Int, kt: Int,
                                    Kt: UnsafeMutablePointer<Float>, Vt: UnsafeMutablePointer<Float>) -> Int {
        let d = a.d, b = bkv / d.Hkv, kvh = bkv % d.Hkv
        let j0 = kt * tile, nk = min(tile, a.L - j0)
        let off = (b * a.L + j0) * a.ldkv + kvh * d.Dh
        copyRows(Kt, a.k + off, a.ldkv, rows: nk, cols: d.Dh)
        copyRows(Vt, a.v + off, a.ldkv, rows: nk, cols: d.Dh)
        return nk
    }

    /// Pᵀ and dSᵀ (nk × W each, rows of W = 16·nv floats) of key tile kt (Kt, Vt) against query tile qt (its
    /// pack `pk`): Sᵀ = K·Qᵀ, Pᵀ = exp(scale·Sᵀ − lse), dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − D).
    @inline(__always)
    private static func tilePair(_ a: BackwardArgs, kt: Int, qt: Int, nk: Int, nv: Int,
                                 Kt: UnsafePointer<Float>, Vt: UnsafePointer<Float>, pk: UnsafeMutablePointer<Float>,
                                 P: UnsafeMutablePointer<Float>, dS: UnsafeMutablePointer<Float>) {
        let Dh = a.d.Dh, T = tile, W = nv * 16
        let QT = pk, dOT = QT + Dh * T, D = dOT + Dh * T + 2 * T * a.Dhp, ls = D + T
        product(P, W, Kt, Dh, 1, QT, T, m: nk, n: W, k: Dh, accumulate: false)
        product(dS, W, Vt, Dh, 1, dOT, T, m: nk, n: W, k: Dh, accumulate: false)
        let scale = a.scale
        for c in 0..<nv {
            let negL = -load(ls + c * 16), Dc = load(D + c * 16)
            for r in 0..<nk {
                let pp = P + r * W + c * 16, sp = dS + r * W + c * 16
                var p = expSIMD(negL.addingProduct(load(pp), scale))
                // On the diagonal tile key j0 + r is hidden from queries i0 + 16c + lane < j0 + r.
                if kt == qt { p = p.replacing(with: 0, where: laneIndex .< Float(r - c * 16)) }
                store(p, pp)
                store(p * (load(sp) - Dc), sp)
            }
        }
    }

    /// Key tile kt of (b, KV head) bkv: dk, dv += its sums over the G heads and the query tiles qt ≥ kt, whose packs
    /// are at packs + (g·nTiles + qt − firstTile)·packSize; with `dQT` also dQᵀ(g, qt) += Kᵀ·dSᵀ (G·nT tiles of
    /// Dh × T).
    private static func keyTile(_ a: BackwardArgs, bkv: Int, kt: Int, ws: UnsafeMutablePointer<Float>,
                                packs: UnsafeMutablePointer<Float>, firstTile: Int, dQT: UnsafeMutablePointer<Float>?) {
        let d = a.d, T = tile, Dh = d.Dh, Dhp = a.Dhp, L = a.L, nT = a.nT
        let Kt = ws, Vt = Kt + T * Dh, P = Vt + T * Dh, dS = P + T * T, dK = dS + T * T, dV = dK + T * Dhp
        let nk = loadKeyTile(a, bkv: bkv, kt: kt, Kt: Kt, Vt: Vt)
        dK.update(repeating: 0, count: nk * Dhp)
        dV.update(repeating: 0, count: nk * Dhp)
        for g in 0..<d.group {
            for qt in kt..<nT {
                let nq = min(T, L - qt * T), nv = (nq + 15) / 16, W = nv * 16
                let pk = packs + (g * (nT - firstTile) + qt - firstTile) * a.packSize
                tilePair(a, kt: kt, qt: qt, nk: nk, nv: nv, Kt: Kt, Vt: Vt, pk: pk, P: P, dS: dS)
                let Qr = pk + 2 * Dh * T, dOr = Qr + T * Dhp
                product(dV, Dhp, P, W, 1, dOr, Dhp, m: nk, n: Dhp, k: nq, accumulate: true)
                product(dK, Dhp, dS, W, 1, Qr, Dhp, m: nk, n: Dhp, k: nq, accumulate: true)
                if let dQT {
                    product(dQT + (g * nT + qt) * Dh * T, T, Kt, 1, Dh, dS, W, m: Dh, n: W, k: nk, accumulate: true)
                }
            }
        }
        let b = bkv / d.Hkv, kvh = bkv % d.Hkv, scale = a.scale
        let off = (b * L + kt * T) * a.lddkv + kvh * Dh
        let dkb = a.dk + off, dvb = a.dv + off
        for r in 0..<nk {
            for c in 0..<Dh {
                dkb[r * a.lddkv + c] += scale * dK[r * Dhp + c]
                dvb[r * a.lddkv + c] += dV[r * Dhp + c]
            }
        }
    }

    /// dq += scale · dQᵀ for query tile qt of head bh (dQT: Dh × T).
    private static func addDQ(_ a: BackwardArgs, bh: Int, qt: Int, dQT: UnsafePointer<Float>) {
        let d = a.d, b = bh / d.H, h = bh % d.H, scale = a.scale, T = tile
        let i0 = qt * T, nq = min(T, a.L - i0)
        let dqb = a.dq + (b * a.L + i0) * a.lddq + h * d.Dh
        for i in 0..<nq { for c in 0..<d.Dh { dqb[i * a.lddq + c] += scale * dQT[c * T + i] } }
    }

    /// One pass for (b, KV head) bkv: every key tile in order; dq of the group's heads accumulates on the way.
    private static func onePassItem(_ a: BackwardArgs, bkv: Int, ws: UnsafeMutablePointer<Float>) {
        let d = a.d, G = d.group, nT = a.nT, T = tile
        let packs = ws + a.tileFloats, dQT = packs + G * nT * a.packSize
        let b = bkv / d.Hkv, kvh = bkv % d.Hkv
        for g in 0..<G {
            for qt in 0..<nT {
                packQueryTile(a, bh: b * d.H + kvh * G + g, qt: qt, dst: packs + (g * nT + qt) * a.packSize)
            }
        }
        dQT.update(repeating: 0, count: G * nT * d.Dh * T)
        for kt in 0..<nT { keyTile(a, bkv: bkv, kt: kt, ws: ws, packs: packs, firstTile: 0, dQT: dQT) }
        for g in 0..<G {
            for qt in 0..<nT { addDQ(a, bh: b * d.H + kvh * G + g, qt: qt, dQT: dQT + (g * nT + qt) * d.Dh * T) }
        }
    }

    /// Two-pass schedule, first pass: dk, dv of key tile kt of (b, KV head) bkv.
    private static func keyTileItem(_ a: BackwardArgs, bkv: Int, kt: Int, ws: UnsafeMutablePointer<Float>) {
        let d = a.d, G = d.group, nT = a.nT
        let packs = ws + a.tileFloats
        let b = bkv / d.Hkv, kvh = bkv % d.Hkv
        for g in 0..<G {
            for qt in kt..<nT {
                packQueryTile(a, bh: b * d.H + kvh * G + g, qt: qt, dst: packs + (g * (nT - kt) + qt - kt) * a.packSize)
            }
        }
        keyTile(a, bkv: bkv, kt: kt, ws: ws, packs: packs, firstTile: kt, dQT: nil)
    }

    /// Two-pass schedule, second pass: dq of query tile qt of head bh, key tiles 0 ... qt in order.
    private static func queryTileItem(_ a: BackwardArgs, bh: Int, qt: Int, ws: UnsafeMutablePointer<Float>) {
        let d = a.d, T = tile, Dh = d.Dh
        let Kt = ws, Vt = Kt + T * Dh, P = Vt + T * Dh, dS = P + T * T
        let pk = ws + a.tileFloats, dQT = pk + a.packSize
        packQueryTile(a, bh: bh, qt: qt, dst: pk)
        dQT.update(repeating: 0, count: Dh * T)
        let nq = min(T, a.L - qt * T), nv = (nq + 15) / 16, W = nv * 16
        let bkv = (bh / d.H) * d.Hkv + (bh % d.H) / d.group
        for kt in 0...qt {
            let nk = loadKeyTile(a, bkv: bkv, kt: kt, Kt: Kt, Vt: Vt)
            tilePair(a, kt: kt, qt: qt, nk: nk, nv: nv, Kt: Kt, Vt: Vt, pk: pk, P: P, dS: dS)
            product(dQT, T, Kt, 1, Dh, dS, W, m: Dh, n: W, k: nk, accumulate: true)
        }
        addDQ(a, bh: bh, qt: qt, dQT: dQT)
    }

    // MARK: - Plain references

    /// The reference forward: the contract of `forward` with whole score rows, one query at a time, in Double.
    public static func forwardReference(
        out: UnsafeMutablePointer<Float>, ldo: Int, lse: UnsafeMutablePointer<Float>?,
        q: UnsafePointer<Float>, ldq: Int,
        k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int, kvBatchStride: Int,
        dims d: AttentionDims, scale: Float? = nil
    ) {
        d.check()
        precondition(ldq >= d.H * d.Dh && ldo >= d.H * d.Dh && ldkv >= d.Hkv * d.Dh && kvBatchStride >= d.Lk * ldkv)
        let sc = Double(scale ?? defaultScale(headDim: d.Dh))
        var s = [Double](repeating: 0, count: d.Lk)
        var o = [Double](repeating: 0, count: d.Dh)
        for b in 0..<d.B {
            for h in 0..<d.H {
                let kvh = h / d.group
                let kb = k + b * kvBatchStride + kvh * d.Dh, vb = v + b * kvBatchStride + kvh * d.Dh
                for i in 0..<d.Lq {
                    let qi = q + (b * d.Lq + i) * ldq + h * d.Dh
                    let n = d.qOffset + i + 1
                    var m = -Double.infinity
                    for j in 0..<n {
                        var dot = 0.0
                        for c in 0..<d.Dh { dot += Double(qi[c]) * Double(kb[j * ldkv + c]) }
                        s[j] = sc * dot
                        m = max(m, s[j])
                    }
                    var sum = 0.0
                    for c in 0..<d.Dh { o[c] = 0 }
                    for j in 0..<n {
                        let p = exp(s[j] - m)
                        sum += p
                        for c in 0..<d.Dh { o[c] += p * Double(vb[j * ldkv + c]) }
                    }
                    for c in 0..<d.Dh { out[(b * d.Lq + i) * ldo + h * d.Dh + c] = Float(o[c] / sum) }
                    lse?[(b * d.H + h) * d.Lq + i] = Float(m + log(sum))
                }
            }
        }
    }

    /// The reference backward: the contract of `backward` (training shapes, accumulates), in Double, with P from
    /// the given lse and D from the given out, as the fast kernel does.
    public static func backwardReference(
        dq: UnsafeMutablePointer<Float>, lddq: Int,
        dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, lddkv: Int,
        dout: UnsafePointer<Float>, lddo: Int,
        q: UnsafePointer<Float>, ldq: Int,
        k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldkv: Int,
        out: UnsafePointer<Float>, ldo: Int, lse: UnsafePointer<Float>,
        dims d: AttentionDims, scale: Float? = nil
    ) {
        d.check()
        precondition(d.Lq == d.Lk && d.qOffset == 0, "attention backward: training shapes only (Lq = Lk, qOffset = 0), got \(d)")
        let L = d.Lq, Dh = d.Dh
        let sc = Double(scale ?? defaultScale(headDim: Dh))
        var gq = [Double](repeating: 0, count: Dh)
        var gk = [Double](repeating: 0, count: L * Dh), gv = [Double](repeating: 0, count: L * Dh)
        for b in 0..<d.B {
            for kvh in 0..<d.Hkv {
                for j in 0..<(L * Dh) { gk[j] = 0; gv[j] = 0 }
                let kb = k + b * L * ldkv + kvh * Dh, vb = v + b * L * ldkv + kvh * Dh
                for h in (kvh * d.group)..<((kvh + 1) * d.group) {
                    for i in 0..<L {
                        let qi = q + (b * L + i) * ldq + h * Dh
                        let gi = dout + (b * L + i) * lddo + h * Dh, oi = out + (b * L + i) * ldo + h * Dh
                        var D = 0.0
                        for c in 0..<Dh { D += Double(gi[c]) * Double(oi[c]); gq[c] = 0 }
                        let l = Double(lse[(b * d.H + h) * L + i])
                        for j in 0...i {
                            var s = 0.0, dp = 0.0
                            for c in 0..<Dh {
                                s += Double(qi[c]) * Double(kb[j * ldkv + c])
                                dp += Double(gi[c]) * Double(vb[j * ldkv + c])
                            }
                            let p = exp(sc * s - l)
                            let ds = p * (dp - D)
                            for c in 0..<Dh {
                                gq[c] += sc * ds * Double(kb[j * ldkv + c])
                                gk[j * Dh + c] += sc * ds * Double(qi[c])
                                gv[j * Dh + c] += p * Double(gi[c])
                            }
                        }
                        for c in 0..<Dh { dq[(b * L + i) * lddq + h * Dh + c] += Float(gq[c]) }
                    }
                }
                for j in 0..<L {
                    for c in 0..<Dh {
                        dk[(b * L + j) * lddkv + kvh * Dh + c] += Float(gk[j * Dh + c])
                        dv[(b * L + j) * lddkv + kvh * Dh + c] += Float(gv[j * Dh + c])
                    }
                }
            }
        }
    }

    // MARK: - The micro-kernel and small helpers

    /// C (m × n) = [C +] A (m × k) · B (k × n). A(r, x) is `a[r·ai + x·ak]` (any strides: one element is broadcast
    /// at a time); B has rows of n contiguous floats (n a multiple of 16) at stride `ldb`; C rows have stride `ldc`.
    /// Blocks of 6 (then 4, then 1) rows × 16 columns stay in AVX registers for the whole sum. Each element is one
    /// fused multiply-add per term, x in order, from 0 or its old value: its bits depend only on its own inputs.
    @inline(__always)
    private static func product(_ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                                _ a: UnsafePointer<Float>, _ ai: Int, _ ak: Int,
                                _ b: UnsafePointer<Float>, _ ldb: Int,
                                m: Int, n: Int, k: Int, accumulate: Bool) {
        var col = 0
        while col < n {
            var r = 0
            while r + 6 <= m {
                let c0 = c + r * ldc + col, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc, c4 = c3 + ldc, c5 = c4 + ldc
                var s0 = F16x(), s1 = F16x(), s2 = F16x(), s3 = F16x(), s4 = F16x(), s5 = F16x()
                if accumulate {
                    s0 = load(c0); s1 = load(c1); s2 = load(c2); s3 = load(c3); s4 = load(c4); s5 = load(c5)
                }
                var pa = a + r * ai, pb = b + col
                for _ in 0..<k {
                    let bv = load(pb)
                    s0 = s0.addingProduct(pa[0], bv)
                    s1 = s1.addingProduct(pa[ai], bv)
                    s2 = s2.addingProduct(pa[2 * ai], bv)
                    s3 = s3.addingProduct(pa[3 * ai], bv)
                    s4 = s4.addingProduct(pa[4 * ai], bv)
                    s5 = s5.addingProduct(pa[5 * ai], bv)
                    pa += ak
                    pb += ldb
                }
                store(s0, c0); store(s1, c1); store(s2, c2); store(s3, c3); store(s4, c4); store(s5, c5)
                r += 6
            }
            if r + 4 <= m {
                let c0 = c + r * ldc + col, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc
                var s0 = F16x(), s1 = F16x(), s2 = F16x(), s3 = F16x()
                if accumulate { s0 = load(c0); s1 = load(c1); s2 = load(c2); s3 = load(c3) }
                var pa = a + r * ai, pb = b + col
                for _ in 0..<k {
                    let bv = load(pb)
                    s0 = s0.addingProduct(pa[0], bv)
                    s1 = s1.addingProduct(pa[ai], bv)
                    s2 = s2.addingProduct(pa[2 * ai], bv)
                    s3 = s3.addingProduct(pa[3 * ai], bv)
                    pa += ak
                    pb += ldb
                }
                store(s0, c0); store(s1, c1); store(s2, c2); store(s3, c3)
                r += 4
            }
            while r < m {
                let c0 = c + r * ldc + col
                var s0 = accumulate ? load(c0) : F16x()
                var pa = a + r * ai, pb = b + col
                for _ in 0..<k {
                    s0 = s0.addingProduct(pa[0], load(pb))
                    pa += ak
                    pb += ldb
                }
                store(s0, c0)
                r += 1
            }
            col += 16
        }
    }

    /// dst (rows × cols, contiguous) = rows of `src` at stride ld.
    @inline(__always)
    private static func copyRows(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ ld: Int,
                                 rows: Int, cols: Int) {
        for r in 0..<rows { (dst + r * cols).update(from: src + r * ld, count: cols) }
    }

    /// 0, 1, …, 15: lane l of vector c of a tile is query 16c + l of the tile.
    private static let laneIndex = F16x(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

    /// Item t of n in the order 0, n−1, 1, n−2, …: causal tiles cost ∝ their index, so contiguous ranges of this
    /// order (what `Parallel.forRanges` hands each thread) carry about equal work.
    @inline(__always)
    private static func zigzag(_ t: Int, _ n: Int) -> Int { t & 1 == 0 ? t / 2 : n - 1 - t / 2 }

    @inline(__always)
    private static func padded(_ n: Int) -> Int { (n + 15) / 16 * 16 }

    @inline(__always)
    private static func load(_ p: UnsafePointer<Float>) -> F16x { UnsafeRawPointer(p).loadUnaligned(as: F16x.self) }

    @inline(__always)
    private static func load(_ p: UnsafeMutablePointer<Float>) -> F16x { load(UnsafePointer(p)) }

    @inline(__always)
    private static func store(_ x: F16x, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: x, as: F16x.self)
    }

    /// The four lane sums of a, b, c, d.
    @inline(__always)
    private static func reduce4(_ a: F16x, _ b: F16x, _ c: F16x, _ d: F16x) -> SIMD4<Float> {
        @inline(__always) func pairs(_ v: SIMD8<Float>) -> SIMD4<Float> { v.evenHalf + v.oddHalf }
        let a8 = a.lowHalf + a.highHalf, b8 = b.lowHalf + b.highHalf
        let c8 = c.lowHalf + c.highHalf, d8 = d.lowHalf + d.highHalf
        let ab = SIMD8(lowHalf: pairs(a8), highHalf: pairs(b8))
        let cd = SIMD8(lowHalf: pairs(c8), highHalf: pairs(d8))
        return pairs(SIMD8(lowHalf: pairs(ab), highHalf: pairs(cd)))
    }

    @inline(__always)
    private static func laneSum(_ x: F16x) -> Float {
        let h = x.lowHalf + x.highHalf
        let q = h.lowHalf + h.highHalf
        let p = q.lowHalf + q.highHalf
        return p[0] + p[1]
    }
}

#if canImport(Glibc)
import Glibc
#else
import Foundation
#endif
