/// The recurrent step of generation (mamba_ssm's `Mamba.step`, HF `MambaMixer.slow_forward` with a cache at L = 1),
/// one token per sequence for B sequences, fused for speed:
///
///     h = RMSNorm(x);  [x | z] = in_proj(h);  conv state ← shift in x;  u = SiLU(Σ_k w_k · conv_k + b)
///     [dt_low | B | C] = x_proj(u);  Δ = softplus(dt_proj(dt_low));  s ← exp(Δ·A) ⊙ s + Δ·u·B;  y = C·s + D·u
///     x ← x + out_proj(y ⊙ SiLU(z));   logits = lm_head(RMSNorm_f(x))
///
/// It computes the maths of `MambaModel.forward` with L = 1 and a carried `RecurrentState` (to rounding: the
/// projections sum in another order; the tests hold the two together), but as five passes per layer instead of
/// eleven: the three projections are `MatVec` (W read once for all B rows), and the conv with SiLU, then dt_proj,
/// softplus, the scan update and the gate, each run in one sweep over 16-channel blocks while those channels are in
/// registers. Every pass is split over a `SpinTeam`. Tensors that the step reads transposed (A, the conv taps,
/// dt_proj) are laid out once when the stepper is made: it snapshots them, so make a new stepper after the
/// parameters change.
public final class RecurrentStepper {
    public let model: MambaModel
    public let batch: Int
    /// Per layer: A = −exp(A_log)ᵀ `(N, ED)`, conv taps `(K, ED)`, dt_proj weightᵀ `(R, ED)`.
    let At: [FloatBuffer], convT: [FloatBuffer], dtT: [FloatBuffer]
    /// Scratch rows: residual `(B, D)`, normed `(B, D)`, `[x | z]` `(B, 2ED)`, u `(B, ED)`, `[dt_low | B | C]`
    /// `(B, R + 2N)`, gated output `(B, ED)`, out_proj output `(B, D)`, logits `(B, V)`.
    let resid, normed, xz, u, xdbl, gated, mixOut: FloatBuffer
    public let logits: FloatBuffer
    /// Splits every loop of the step over `threads` members that spin between loops (see `SpinTeam`).
    let team: SpinTeam
    /// How the projections read their weights.
    public let weights: StepWeights
    /// With `.bf16`: per layer in_proj, x_proj and out_proj, and the LM head, rounded to bfloat16; and the split
    /// input rows `(B, stride)` they read.
    let bf16: [(inW: BF16Matrix, xW: BF16Matrix, outW: BF16Matrix)]
    let bf16Head: BF16Matrix?
    let split: FloatBuffer

    /// `threads` defaults to `Parallel.threads`, or 1 for models too small to gain from a second thread. The
    /// split is static, by output rows and channel blocks, so the results do not depend on it.
    public init(model: MambaModel, batch: Int, threads: Int? = nil, weights: StepWeights = .f32) {
        precondition(batch > 0)
        self.model = model
        self.batch = batch
        self.weights = weights
        team = SpinTeam(size: threads ?? (model.config.parameterCount * batch >= 200_000 ? Parallel.threads : 1))
        let c = model.config
        let (D, ED, N, R, K, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel,
                                   c.vocabSize)
        let p = model.params
        var at = [FloatBuffer](), ct = [FloatBuffer](), dt = [FloatBuffer]()
        for lv in model.layerViews {
            let a = FloatBuffer(count: N * ED), aLog = p.ptr(lv.aLog)
            for d in 0..<ED { for n in 0..<N { a.ptr[n * ED + d] = -expf(aLog[d * N + n]) } }
            let cw = FloatBuffer(count: K * ED), w = p.ptr(lv.convW)
            for d in 0..<ED { for k in 0..<K { cw.ptr[k * ED + d] = w[d * K + k] } }
            let tw = FloatBuffer(count: R * ED), dw = p.ptr(lv.dtW)
            for d in 0..<ED { for r in 0..<R { tw.ptr[r * ED + d] = dw[d * R + r] } }
            at.append(a); ct.append(cw); dt.append(tw)
        }
        (At, convT, dtT) = (at, ct, dt)
        if weights == .bf16 {
            bf16 = model.layerViews.map { lv in
                (BF16Matrix(p.ptr(lv.inW), rows: 2 * ED, cols: D), BF16Matrix(p.ptr(lv.xW), rows: R + 2 * N, cols: ED),
                 BF16Matrix(p.ptr(lv.outW), rows: D, cols: ED))
            }
            bf16Head = BF16Matrix(p.ptr(model.headView), rows: V, cols: D)
            split = FloatBuffer(count: batch * ((max(D, ED) + 31) & ~31))
        } else {
            (bf16, bf16Head, split) = ([], nil, FloatBuffer(count: 0))
        }
        resid = FloatBuffer(count: batch * D)
        normed = FloatBuffer(count: batch * D)
        xz = FloatBuffer(count: batch * 2 * ED)
        u = FloatBuffer(count: batch * ED)
        xdbl = FloatBuffer(count: batch * (R + 2 * N))
        gated = FloatBuffer(count: batch * ED)
        mixOut = FloatBuffer(count: batch * D)
        logits = FloatBuffer(count: batch * V)
    }

    /// Bytes of the transposed tensors, scratch rows and bfloat16 weights.
    public var bytes: Int {
        let bufs = At + convT + dtT + [resid, normed, xz, u, xdbl, gated, mixOut, logits, split]
        let halves = bf16.reduce(bf16Head?.bytes ?? 0) { $0 + $1.inW.bytes + $1.xW.bytes + $1.outW.bytes }
        return bufs.reduce(0) { $0 + $1.count } * 4 + halves
    }

    /// Parameters in the projections that `.bf16` rounds: in_proj, x_proj, out_proj per layer and the LM head.
    public static func projectionParameters(_ c: MambaConfig) -> Int {
        let (D, ED, N, R, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.vocabSize)
        return c.numHiddenLayers * (2 * ED * D + (R + 2 * N) * ED + D * ED) + V * D
    }

    /// Weight bytes one step reads in those projections (most of what bounds a step at batch 1).
    public var projectionWeightBytes: Int {
        if weights == .bf16 { return bf16.reduce(bf16Head!.bytes) { $0 + $1.inW.bytes + $1.xW.bytes + $1.outW.bytes } }
        return RecurrentStepper.projectionParameters(model.config) * 4
    }

    /// Feeds `ids[b]` to sequence b, advancing `state`; leaves the next logits `(B, V)` in `logits`.
    public func step(ids: UnsafePointer<Int32>, state: RecurrentState) {
        precondition(state.batch == batch, "state batch \(state.batch) != batch \(batch)")
        let m = model, c = m.config, p = m.params
        let B = batch
        let (D, ED, N, R, K, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel,
                                   c.vocabSize)
        let ldbc = R + 2 * N
        Embedding.forward(out: resid.ptr, ids: ids, weight: p.ptr(m.embedView), M: B, D: D, V: V)
        let blocks = (ED + 15) / 16
        let team = self.team
        let xs = split.ptr
        /// out (B, O) = x (B, I) · Wᵀ + b, output rows split over the team; `half` replaces W with `.bf16`.
        func project(_ out: UnsafeMutablePointer<Float>, _ ldo: Int, _ x: UnsafePointer<Float>, _ ldx: Int,
                     _ w: UnsafePointer<Float>, _ half: BF16Matrix?, _ bias: UnsafePointer<Float>?, I: Int, O: Int) {
            if let half {
                MatVec.splitPairs(x, ldx: ldx, B: B, I: I, stride: half.stride, into: xs)
                team.forRanges((O + 3) / 4) { lo, hi in
                    MatVec.rowsBF16(out: out, ldo: ldo, xs: xs, weight: half, bias: bias, B: B,
                                    from: lo * 4, to: min(O, hi * 4))
                }
                return
            }
            team.forRanges((O + 3) / 4) { lo, hi in
                MatVec.rows(out: out, ldo: ldo, x: x, ldx: ldx, weight: w, bias: bias, B: B, I: I,
                            from: lo * 4, to: min(O, hi * 4))
            }
        }
        let halves = bf16
        for (l, lv) in m.layerViews.enumerated() {
            RMSNorm.forward(out: normed.ptr, rstd: nil, inp: resid.ptr, weight: p.ptr(lv.norm), M: B, D: D,
                            eps: c.layerNormEpsilon)
            let half = halves.isEmpty ? nil : halves[l]
            project(xz.ptr, 2 * ED, normed.ptr, D, p.ptr(lv.inW), half?.inW, lv.inB.map { p.ptr($0) }, I: D, O: 2 * ED)
            // u = SiLU(conv1d(x)) from the K − 1 previous inputs in the state, which then shift by one.
            let (ctxAll, cw, cb) = (state.conv[l].ptr, UnsafePointer(convT[l].ptr), lv.convB.map { UnsafePointer(p.ptr($0)) })
            let (xzp, up) = (UnsafePointer(xz.ptr), u.ptr)
            team.forRanges(B * blocks) { lo, hi in
                for item in lo..<hi {
                    let b = item / blocks, d0 = (item % blocks) * 16
                    let w = min(16, ED - d0)
                    let ctx = ctxAll + b * (K - 1) * ED + d0
                    let xv = loadF16x(xzp + b * 2 * ED + d0, w)
                    var acc = cb.map { loadF16x($0 + d0, w) } ?? F16x()
                    for k in 0..<(K - 1) { acc = acc + loadF16x(cw + k * ED + d0, w) * loadF16x(ctx + k * ED, w) }
                    acc = acc + loadF16x(cw + (K - 1) * ED + d0, w) * xv
                    if K > 1 {
                        for k in 0..<(K - 2) { storeF16x(loadF16x(ctx + (k + 1) * ED, w), ctx + k * ED, w) }
                        storeF16x(xv, ctx + (K - 2) * ED, w)
                    }
                    storeF16x(siluSIMD(acc), up + b * ED + d0, w)
                }
            }
            project(xdbl.ptr, ldbc, u.ptr, ED, p.ptr(lv.xW), half?.xW, nil, I: ED, O: ldbc)
            // Δ = softplus(dt_proj(dt_low)); the scan's one step; y ⊙ SiLU(z).
            let (at, dtw, dtb, dd) = (UnsafePointer(At[l].ptr), UnsafePointer(dtT[l].ptr), UnsafePointer(p.ptr(lv.dtB)),
                                      UnsafePointer(p.ptr(lv.d)))
            let (xd, hs, g) = (UnsafePointer(xdbl.ptr), state.ssm[l].ptr, gated.ptr)
            let uq = UnsafePointer(up)
            team.forRanges(B * blocks) { lo, hi in
                for item in lo..<hi {
                    let b = item / blocks, d0 = (item % blocks) * 16
                    let w = min(16, ED - d0)
                    let row = xd + b * ldbc
                    var dt = loadF16x(dtb + d0, w)
                    for r in 0..<R { dt = dt + loadF16x(dtw + r * ED + d0, w) * row[r] }
                    let dl = softplusSIMD(dt)
                    let uv = loadF16x(uq + b * ED + d0, w)
                    let dlu = dl * uv
                    var acc = loadF16x(dd + d0, w) * uv
                    let h = hs + b * N * ED + d0
                    let bp = row + R, cp = row + R + N
                    for n in 0..<N {
                        let a = expSIMD(dl * loadF16x(at + n * ED + d0, w))
                        let hn = a * loadF16x(h + n * ED, w) + dlu * bp[n]
                        storeF16x(hn, h + n * ED, w)
                        acc = acc + hn * cp[n]
                    }
                    let zv = loadF16x(xzp + b * 2 * ED + ED + d0, w)
                    storeF16x(acc * siluSIMD(zv), g + b * ED + d0, w)
                }
            }
            // x ← x + out_proj(gated)
            project(mixOut.ptr, D, gated.ptr, ED, p.ptr(lv.outW), half?.outW, lv.outB.map { p.ptr($0) }, I: ED, O: D)
            let (r, o) = (resid.ptr, mixOut.ptr)
            for i in 0..<(B * D) { r[i] = o[i] + r[i] }
        }
        RMSNorm.forward(out: normed.ptr, rstd: nil, inp: resid.ptr, weight: p.ptr(m.normFView), M: B, D: D,
                        eps: c.layerNormEpsilon)
        project(logits.ptr, V, normed.ptr, D, p.ptr(m.headView), bf16Head, nil, I: D, O: V)
    }
}

/// The precision the step reads its projection weights in.
public enum StepWeights: String, CaseIterable, Sendable {
    /// The parameters as they are (exactly `forward`'s maths).
    case f32
    /// in_proj, x_proj, out_proj and the LM head rounded to bfloat16 (half the bytes per step); everything else,
    /// and all arithmetic, stays Float32. On a trained byte model the logits moved by ~2e-3 of the largest one
    /// (BENCHMARKS.md).
    case bf16
}

#if canImport(Glibc)
import Glibc
#endif
