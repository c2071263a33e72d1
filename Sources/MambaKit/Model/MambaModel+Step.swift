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
        resid = FloatBuffer(count: batch * D)
        normed = FloatBuffer(count: batch * D)
        mixOut = FloatBuffer(count: batch * D)
        logits = FloatBuffer(count: batch * V)
    }

    /// Bytes of the blocks' step layouts, the scratch rows and bfloat16 weights.
    public var bytes: Int {
        steppers.reduce(bf16Head?.bytes ?? 0) { $0 + $1.bytes } + [resid, normed, mixOut, logits].reduce(0) { $0 + $1.count } * 4
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
