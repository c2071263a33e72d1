/// The forward and backward passes of `MambaModel` over a `(B, L)` batch: the embedding, each layer's pre-norm
/// residual unit `x + block(RMSNorm(x))`, norm_f and the head.
///
/// Saved for backward, per layer: the residual input, RMSNorm's rstd, and what the block saves (`Block.forward`).
/// Recomputed in backward: the normed input.
extension MambaModel {
    /// Runs the model on `ids` `(B, L)`, leaving the logits `(B, L, V)` in `ws.logits`.
    /// With `state`, the batch continues the sequences whose state it holds (and the state is advanced);
    /// without, sequences start from zero state. With `lastOnly`, only the last position's logits are computed,
    /// into row `b` of `ws.logits` for sequence `b` (prefill for generation).
    public func forward(ids: UnsafePointer<Int32>, ws: Workspace, state: RecurrentState? = nil, lastOnly: Bool = false) {
        forwardBackbone(ids: ids, ws: ws, state: state)
        let (B, L, D, V) = (ws.B, ws.L, config.hiddenSize, config.vocabSize)
        precondition(ws.logits.count >= (lastOnly ? B : B * L) * V, "the workspace has no LM-head logits")
        // logits = lm_head(RMSNorm_f(x_L))
        if lastOnly {
            for b in 0..<B {
                Linear.forward(out: ws.logits.ptr + b * V, ldo: V, inp: ws.normF.ptr + (b * L + L - 1) * D, ldi: D,
                               weight: params.ptr(headView), bias: nil, M: 1, I: D, O: V)
            }
        } else {
            Linear.forward(out: ws.logits.ptr, ldo: V, inp: ws.normF.ptr, ldi: D, weight: params.ptr(headView),
                           bias: nil, M: B * L, I: D, O: V)
        }
    }

    /// The backbone alone: embeddings, the layers and norm_f, leaving RMSNorm_f(x_L) `(B, L, D)` in `ws.normF`
    /// for a head (the LM head in `forward`, a classification head). `state` as in `forward`. `observe`, if given,
    /// sees what each layer's block can show per position right after it is computed (Mamba's selective Δ,
    /// `(B, L, channels)`), for tracing.
    public func forwardBackbone(ids: UnsafePointer<Int32>, ws: Workspace, state: RecurrentState? = nil,
                                observe: ((_ layer: Int, _ values: UnsafePointer<Float>, _ channels: Int) -> Void)? = nil) {
        if unet != nil { return forwardUNet(ids: ids, ws: ws, state: state, observe: observe) }
        let c = config
        let (B, L) = (ws.B, ws.L)
        let BL = B * L
        let (D, V) = (c.hiddenSize, c.vocabSize)
        let p = params
        precondition(state == nil || state!.batch == B, "state batch \(state!.batch) != batch \(B)")
        // x_0 = embeddings[ids]
        Embedding.forward(out: ws.resid[0].ptr, ids: ids, weight: p.ptr(embedView), M: BL, D: D, V: V)
        for (l, block) in blocks.enumerated() {
            let k = ws.training ? l : 0
            let res = ws.resid[k].ptr
            // h = RMSNorm(x)
            RMSNorm.forward(out: ws.normed.ptr, rstd: ws.rstd[k].ptr, inp: res, weight: p.ptr(layerNorms[l]),
                            M: BL, D: D, eps: c.layerNormEpsilon)
            // x_{l+1} = x_l + block(h)
            let next = l + 1 < blocks.count ? ws.resid[ws.training ? l + 1 : 0].ptr : ws.residF.ptr
            let mixOut = ws.training ? next : ws.mixOut.ptr
            block.forward(out: mixOut, inp: ws.normed.ptr, B: B, L: L, params: p, acts: ws.acts[l],
                          scratch: ws.scratch[l], state: state?.layers[l], training: ws.training,
                          observe: observe.map { f in { v, ch in f(l, v, ch) } })
            for i in 0..<(BL * D) { next[i] = mixOut[i] + res[i] }
        }
        ws.continuedState = state != nil
        RMSNorm.forward(out: ws.normF.ptr, rstd: ws.rstdF.ptr, inp: ws.residF.ptr, weight: p.ptr(normFView),
                        M: BL, D: D, eps: c.layerNormEpsilon)
    }

    /// Whether training may continue a carried state (truncated backpropagation through time): a flat stack whose
    /// blocks all allow it (`Block.trainsFromCarriedState`: not attention; not the multi-scale backbone, whose
    /// pooled stages continue only at multiples of their period).
    public var trainsFromCarriedState: Bool { unet == nil && blocks.allSatisfy(\.trainsFromCarriedState) }

    /// Backward of the mean cross-entropy of `forward`'s logits against `targets` `(B, L)` (−100 = ignored).
    /// Accumulates into `grads` and returns (Σ NLL, counted tokens). Call after `forward` on a training workspace.
    @discardableResult
    public func backward(ids: UnsafePointer<Int32>, targets: UnsafePointer<Int32>, ws: Workspace,
                         lossScale: Float? = nil) -> (sum: Double, count: Int) {
        precondition(ws.training, "backward needs a training workspace")
        precondition(!ws.continuedState || trainsFromCarriedState, "backward after a forward from a carried state needs blocks that allow it")
        let (B, L) = (ws.B, ws.L)
        let BL = B * L
        let (D, V) = (config.hiddenSize, config.vocabSize)
        let p = params, g = grads
        // Count first so that dlogits is the gradient of the mean.
        var count = 0
        for i in 0..<BL where targets[i] != CrossEntropy.ignoreIndex { count += 1 }
        let scale = lossScale ?? (count > 0 ? 1 / Float(count) : 0)
        // dlogits overwrite the logits in place.
        let ce = CrossEntropy.forwardBackward(logits: ws.logits.ptr, targets: targets, M: BL, V: V,
                                              dlogits: ws.logits.ptr, scale: scale)
        // lm_head and norm_f
        ws.dnormed.zero()
        Linear.backward(dinp: ws.dnormed.ptr, lddi: D, dweight: g.ptr(headView), dbias: nil,
                        dout: ws.logits.ptr, lddo: V, inp: ws.normF.ptr, ldi: D, weight: p.ptr(headView),
                        M: BL, I: D, O: V)
        backwardBackbone(ids: ids, ws: ws)
        return ce
    }

    /// Backward of the backbone from ∂loss/∂RMSNorm_f(x_L) `(B, L, D)`, which the head has left in `ws.dnormed`.
    /// Accumulates into `grads`. Call after `forward` or `forwardBackbone` on a training workspace.
    public func backwardBackbone(ids: UnsafePointer<Int32>, ws: Workspace) {
        precondition(ws.training, "backward needs a training workspace")
        precondition(!ws.continuedState || trainsFromCarriedState, "backward after a forward from a carried state needs blocks that allow it")
        if unet != nil { return backwardUNet(ws: ws) }
        let c = config
        let (B, L) = (ws.B, ws.L)
        let BL = B * L
        let D = c.hiddenSize
        let p = params, g = grads
        ws.dresid.zero()
        RMSNorm.backward(dinp: ws.dresid.ptr, dweight: g.ptr(normFView), dout: ws.dnormed.ptr, inp: ws.residF.ptr,
                         rstd: ws.rstdF.ptr, weight: p.ptr(normFView), M: BL, D: D)
        for l in stride(from: blocks.count - 1, through: 0, by: -1) {
            let (res, rstd) = (ws.resid[l].ptr, ws.rstd[l].ptr)
            // The block's input RMSNorm(x), recomputed.
            let normed = ws.normed.ptr
            let nw = p.ptr(layerNorms[l])
            RMSNorm.apply(out: normed, inp: res, rstd: rstd, weight: nw, M: BL, D: D)
            ws.dnormed.zero()
            blocks[l].backward(dinp: ws.dnormed.ptr, dout: ws.dresid.ptr, inp: normed, B: B, L: L, params: p,
                               grads: g, acts: ws.acts[l], scratch: ws.scratch[l])
            // RMSNorm; the residual passes dresid through unchanged, so accumulate onto it.
            RMSNorm.backward(dinp: ws.dresid.ptr, dweight: g.ptr(layerNorms[l]), dout: ws.dnormed.ptr, inp: res,
                             rstd: rstd, weight: nw, M: BL, D: D)
            layerGradientsReady?(l)
        }
        Embedding.backward(dweight: g.ptr(embedView), dout: ws.dresid.ptr, ids: ids, M: BL, D: D)
    }
}

#if canImport(Glibc)
import Glibc
#endif
