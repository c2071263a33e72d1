/// The recurrent step of generation, one token per sequence for B sequences:
///
///     x = embeddings[id];  per layer: x ← x + block.step(RMSNorm(x));   logits = lm_head(RMSNorm_f(x))
///
/// It computes the maths of `MambaModel.forward` with L = 1 and a carried `RecurrentState` (to rounding: the
/// projections sum in another order; the tests hold the two together). Each block runs its own fused step
/// (`Block.makeStepper`), whose passes are split over one `SpinTeam`. Blocks lay out the tensors they read
/// transposed when the stepper is made: it snapshots them, so make a new stepper after the parameters change.
public final class RecurrentStepper {
    public let model: MambaModel
    public let batch: Int
    let steppers: [BlockStepper]
    /// Scratch rows: residual `(B, D)`, normed `(B, D)`, block output `(B, D)`, logits `(B, V)`.
    let resid, normed, mixOut: FloatBuffer
    public let logits: FloatBuffer
    /// Splits every loop of the step over `threads` members that spin between loops (see `SpinTeam`).
    let ctx: StepContext
    /// How the projections read their weights.
    public let weights: StepWeights
    /// With `.bf16`: the LM head rounded to bfloat16.
    let bf16Head: BF16Matrix?
    /// The multi-scale backbone's rows per stage k: u_k, v_k, the stream and z_k, each `(B, H_k)`.
    let uRows, vRows, xRows, zRows: [FloatBuffer]

    /// `threads` defaults to `Parallel.threads`, or 1 for models too small to gain from a second thread. The
    /// split is static, by output rows and channel blocks, so the results do not depend on it.
    public init(model: MambaModel, batch: Int, threads: Int? = nil, weights: StepWeights = .f32) {
        precondition(batch > 0)
        self.model = model
        self.batch = batch
        self.weights = weights
        let team = SpinTeam(size: threads ?? (model.config.parameterCount * batch >= 200_000 ? Parallel.threads : 1))
        ctx = StepContext(team: team, batch: batch)
        let c = model.config
        let (D, V) = (c.hiddenSize, c.vocabSize)
        steppers = model.blocks.map { $0.makeStepper(params: model.params, batch: batch, weights: weights) }
        bf16Head = weights == .bf16 ? BF16Matrix(model.params.ptr(model.headView), rows: V, cols: D) : nil
        let widest = model.unet?.widths.max() ?? D
        resid = FloatBuffer(count: batch * D)
        normed = FloatBuffer(count: batch * widest)
        mixOut = FloatBuffer(count: batch * widest)
        logits = FloatBuffer(count: batch * V)
        let rows = (model.unet?.widths ?? []).map { batch * $0 }
        uRows = rows.map { FloatBuffer(count: $0) }
        vRows = rows.map { FloatBuffer(count: $0) }
        xRows = rows.map { FloatBuffer(count: $0) }
        zRows = rows.map { FloatBuffer(count: $0) }
    }

    /// Bytes of the blocks' step layouts, the scratch rows and bfloat16 weights.
    public var bytes: Int {
        steppers.reduce(bf16Head?.bytes ?? 0) { $0 + $1.bytes }
            + ([resid, normed, mixOut, logits] + uRows + vRows + xRows + zRows).reduce(0) { $0 + $1.count } * 4
    }

    /// Parameters in the projections that `.bf16` rounds: the blocks' projections and the LM head.
    public static func projectionParameters(_ c: MambaConfig) -> Int {
        MambaModel.build(c).blocks.reduce(c.vocabSize * c.hiddenSize) { $0 + $1.projectionParameters }
    }

    /// Weight bytes one step reads in those projections (most of what bounds a step at batch 1).
    public var projectionWeightBytes: Int {
        steppers.reduce(bf16Head?.bytes ?? model.config.vocabSize * model.config.hiddenSize * 4) { $0 + $1.projectionWeightBytes }
    }

    /// Feeds `ids[b]` to sequence b, advancing `state`; leaves the next logits `(B, V)` in `logits`.
    public func step(ids: UnsafePointer<Int32>, state: RecurrentState) {
        precondition(state.batch == batch, "state batch \(state.batch) != batch \(batch)")
        if let plan = model.unet { return stepUNet(ids: ids, state: state, plan: plan) }
        let m = model, c = m.config, p = m.params
        let (D, V) = (c.hiddenSize, c.vocabSize)
        let B = batch
        Embedding.forward(out: resid.ptr, ids: ids, weight: p.ptr(m.embedView), M: B, D: D, V: V)
        for (l, stepper) in steppers.enumerated() {
            RMSNorm.forward(out: normed.ptr, rstd: nil, inp: resid.ptr, weight: p.ptr(m.layerNorms[l]), M: B, D: D,
                            eps: c.layerNormEpsilon)
            stepper.step(out: mixOut.ptr, inp: normed.ptr, state: state.layers[l], ctx: ctx)
            let (r, o) = (resid.ptr, mixOut.ptr)
            for i in 0..<(B * D) { r[i] = o[i] + r[i] }
        }
        RMSNorm.forward(out: normed.ptr, rstd: nil, inp: resid.ptr, weight: p.ptr(m.normFView), M: B, D: D,
                        eps: c.layerNormEpsilon)
        ctx.project(logits.ptr, V, normed.ptr, D, p.ptr(m.headView), bf16Head, nil, I: D, O: V)
    }
}

extension RecurrentStepper {
    /// One sample of the multi-scale backbone (`UNet.swift`): the down-pools collect it, and stage k steps on the
    /// samples where the first k pools complete a block (every p_0⋯p_{k−1} samples), coarsest first; each up-pool
    /// hands out one row per sample and, at the end of its block, takes the next from the stage inside it.
    func stepUNet(ids: UnsafePointer<Int32>, state: RecurrentState, plan: UNetPlan) {
        let m = model, c = m.config, p = m.params
        let pools = state.pools!
        precondition(!pools.spent, "this state ended on a padded chunk and cannot be continued")
        let (D, V, B, S) = (c.hiddenSize, c.vocabSize, batch, plan.stages)
        Embedding.forward(out: uRows[0].ptr, ids: ids, weight: p.ptr(m.embedView), M: B, D: D, V: V)
        var top = 0
        for k in 0..<S {
            guard pools.down[k].step(out: uRows[k + 1].ptr, inp: uRows[k].ptr, weight: p.ptr(m.downPools[k].w),
                                     bias: p.ptr(m.downPools[k].b)) else { break }
            top = k + 1
        }
        for k in stride(from: top, through: 0, by: -1) {
            let H = plan.widths[k], n = B * H
            let v = k == S ? uRows[S].ptr : vRows[k].ptr
            if k < S {
                let blockEnded = pools.up[k].step(out: v)
                let u = uRows[k].ptr
                for i in 0..<n { v[i] += u[i] }
                if blockEnded {
                    pools.up[k].refill(inp: zRows[k + 1].ptr, weight: p.ptr(m.upPools[k].w), bias: p.ptr(m.upPools[k].b))
                }
            }
            let x = xRows[k].ptr
            x.update(from: v, count: n)
            for j in 0..<plan.layers[k] {
                let l = plan.first[k] + j
                RMSNorm.forward(out: normed.ptr, rstd: nil, inp: x, weight: p.ptr(m.layerNorms[l]), M: B, D: H,
                                eps: c.layerNormEpsilon)
                steppers[l].step(out: mixOut.ptr, inp: normed.ptr, state: state.layers[l], ctx: ctx)
                let o = mixOut.ptr
                for i in 0..<n { x[i] += o[i] }
            }
            let z = zRows[k].ptr
            for i in 0..<n { z[i] = x[i] + v[i] }
        }
        RMSNorm.forward(out: normed.ptr, rstd: nil, inp: zRows[0].ptr, weight: p.ptr(m.normFView), M: B, D: D,
                        eps: c.layerNormEpsilon)
        ctx.project(logits.ptr, V, normed.ptr, D, p.ptr(m.headView), bf16Head, nil, I: D, O: V)
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
