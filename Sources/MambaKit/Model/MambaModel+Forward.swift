/// The forward and backward passes of `MambaModel` over a `(B, L)` batch.
///
/// Saved for backward, per layer: the residual input, RMSNorm's rstd, in_proj's `[x | z]`, the conv output before
/// SiLU and after it (u), x_proj's `[dt_low | B | C]`, Δ, the scan output y, and scan state checkpoints every
/// `SelectiveScanSIMD.chunk` steps. Recomputed in backward: the normed input, the gated output.
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
    /// sees each layer's Δ `(B, L, ED)` right after it is computed (what the selection mechanism does, for tracing).
    public func forwardBackbone(ids: UnsafePointer<Int32>, ws: Workspace, state: RecurrentState? = nil,
                                observe: ((_ layer: Int, _ delta: UnsafePointer<Float>) -> Void)? = nil) {
        let c = config
        let (B, L) = (ws.B, ws.L)
        let BL = B * L
        let (D, ED, N, R, K, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel,
                                   c.vocabSize)
        let p = params
        precondition(state == nil || state!.batch == B, "state batch \(state!.batch) != batch \(B)")
        let dims = ScanDims(B: B, L: L, ED: ED, N: N, ldbc: R + 2 * N)
        // x_0 = embeddings[ids]
        let first = ws.layers[0].resid.ptr
        Embedding.forward(out: first, ids: ids, weight: p.ptr(embedView), M: BL, D: D, V: V)
        for (l, lv) in layerViews.enumerated() {
            let a = ws.layers[ws.training ? l : 0]
            let At = ws.At[l].ptr
            if !(ws.parametersFrozen && ws.aReady) {
                let aLog = p.ptr(lv.aLog)
                for d in 0..<ED { for n in 0..<N { At[n * ED + d] = -expf(aLog[d * N + n]) } }
            }
            // h = RMSNorm(x) (into `gated` as scratch: it is free until the gate)
            let normed = ws.gated.ptr
            RMSNorm.forward(out: normed, rstd: a.rstd.ptr, inp: a.resid.ptr, weight: p.ptr(lv.norm),
                            M: BL, D: D, eps: c.layerNormEpsilon)
            // [x | z] = in_proj(h)
            Linear.forward(out: a.xz.ptr, ldo: 2 * ED, inp: normed, ldi: D, weight: p.ptr(lv.inW),
                           bias: lv.inB.map { p.ptr($0) }, M: BL, I: D, O: 2 * ED)
            // u = SiLU(conv1d(x))
            let ctx = state.map { UnsafePointer($0.conv[l].ptr) }
            CausalConv1d.forward(out: a.convPre.ptr, x: a.xz.ptr, ldx: 2 * ED, weight: p.ptr(lv.convW),
                                 bias: lv.convB.map { p.ptr($0) }, context: ctx, B: B, L: L, ED: ED, K: K)
            if let state {
                CausalConv1d.nextContext(into: state.conv[l].ptr, x: a.xz.ptr, ldx: 2 * ED, context: ctx,
                                         B: B, L: L, ED: ED, K: K)
            }
            Activations.siluForward(out: a.u.ptr, inp: a.convPre.ptr, count: BL * ED)
            // [dt_low | B | C] = x_proj(u); Δ = softplus(dt_proj(dt_low))
            Linear.forward(out: a.xdbl.ptr, ldo: R + 2 * N, inp: a.u.ptr, ldi: ED, weight: p.ptr(lv.xW),
                           bias: nil, M: BL, I: ED, O: R + 2 * N)
            Linear.forward(out: a.delta.ptr, ldo: ED, inp: a.xdbl.ptr, ldi: R + 2 * N, weight: p.ptr(lv.dtW),
                           bias: p.ptr(lv.dtB), M: BL, I: R, O: ED)
            Activations.softplusInPlace(a.delta.ptr, count: BL * ED)
            observe?(l, a.delta.ptr)
            // y = scan(u, Δ, A, B, C, D)
            let hs = state.map { $0.ssm[l].ptr }
            SelectiveScanSIMD.forward(
                y: a.y.ptr, hOut: hs, u: a.u.ptr, delta: a.delta.ptr, At: At,
                Bm: a.xdbl.ptr + R, Cm: a.xdbl.ptr + R + N, D: p.ptr(lv.d), h0: hs.map { UnsafePointer($0) },
                checkpoints: ws.training ? a.chk.ptr : nil, dims: dims)
            // out = out_proj(y ⊙ SiLU(z)); x_{l+1} = x_l + out
            Activations.gateForward(out: ws.gated.ptr, y: a.y.ptr, z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
            let next = l + 1 < c.numHiddenLayers ? ws.layers[ws.training ? l + 1 : 0].resid.ptr : ws.residF.ptr
            let mixOut = ws.training ? next : ws.residF.ptr
            Linear.forward(out: mixOut, ldo: D, inp: ws.gated.ptr, ldi: ED, weight: p.ptr(lv.outW),
                           bias: lv.outB.map { p.ptr($0) }, M: BL, I: ED, O: D)
            let res = a.resid.ptr
            for i in 0..<(BL * D) { mixOut[i] += res[i] }
            if !ws.training, next != mixOut { next.update(from: mixOut, count: BL * D) }
        }
        ws.aReady = true
        ws.continuedState = state != nil
        RMSNorm.forward(out: ws.normF.ptr, rstd: ws.rstdF.ptr, inp: ws.residF.ptr, weight: p.ptr(normFView),
                        M: BL, D: D, eps: c.layerNormEpsilon)
    }

    /// Backward of the mean cross-entropy of `forward`'s logits against `targets` `(B, L)` (−100 = ignored).
    /// Accumulates into `grads` and returns (Σ NLL, counted tokens). Call after `forward` on a training workspace.
    @discardableResult
    public func backward(ids: UnsafePointer<Int32>, targets: UnsafePointer<Int32>, ws: Workspace,
                         lossScale: Float? = nil) -> (sum: Double, count: Int) {
        precondition(ws.training, "backward needs a training workspace")
        precondition(!ws.continuedState, "backward after a forward from a carried state is not supported")
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
        precondition(!ws.continuedState, "backward after a forward from a carried state is not supported")
        let c = config
        let (B, L) = (ws.B, ws.L)
        let BL = B * L
        let (D, ED, N, R, K) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel)
        let p = params, g = grads
        let dims = ScanDims(B: B, L: L, ED: ED, N: N, ldbc: R + 2 * N)
        ws.dresid.zero()
        RMSNorm.backward(dinp: ws.dresid.ptr, dweight: g.ptr(normFView), dout: ws.dnormed.ptr, inp: ws.residF.ptr,
                         rstd: ws.rstdF.ptr, weight: p.ptr(normFView), M: BL, D: D)
        for l in stride(from: c.numHiddenLayers - 1, through: 0, by: -1) {
            let lv = layerViews[l]
            let a = ws.layers[l]
            let At = ws.At[l].ptr
            // out_proj: recompute its input y ⊙ SiLU(z)
            Activations.gateForward(out: ws.gated.ptr, y: a.y.ptr, z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
            ws.dG.zero()
            Linear.backward(dinp: ws.dG.ptr, lddi: ED, dweight: g.ptr(lv.outW), dbias: lv.outB.map { g.ptr($0) },
                            dout: ws.dresid.ptr, lddo: D, inp: ws.gated.ptr, ldi: ED, weight: p.ptr(lv.outW),
                            M: BL, I: ED, O: D)
            // gate
            ws.dy.zero()
            ws.dxz.zero()
            Activations.gateBackward(dy: ws.dy.ptr, dz: ws.dxz.ptr + ED, lddz: 2 * ED, dout: ws.dG.ptr, y: a.y.ptr,
                                     z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
            // scan
            ws.du.zero()
            ws.ddelta.zero()
            ws.dxdbl.zero()
            ws.dAt.zero()
            SelectiveScanSIMD.backward(
                du: ws.du.ptr, ddelta: ws.ddelta.ptr, dAt: ws.dAt.ptr, dBm: ws.dxdbl.ptr + R, dCm: ws.dxdbl.ptr + R + N,
                dD: g.ptr(lv.d), dy: ws.dy.ptr, u: a.u.ptr, delta: a.delta.ptr, At: At,
                Bm: a.xdbl.ptr + R, Cm: a.xdbl.ptr + R + N, D: p.ptr(lv.d), checkpoints: a.chk.ptr, dims: dims,
                scratch: ws.scanScratch)
            // A = −exp(A_log) ⇒ ∂L/∂A_log = ∂L/∂A · A
            let gA = g.ptr(lv.aLog)
            for d in 0..<ED { for n in 0..<N { gA[d * N + n] += ws.dAt.ptr[n * ED + d] * At[n * ED + d] } }
            // softplus, dt_proj (dpre reuses dG, free after the gate)
            let dpre = ws.dG.ptr
            dpre.update(repeating: 0, count: BL * ED)
            Activations.softplusBackward(dpre: dpre, ddelta: ws.ddelta.ptr, delta: a.delta.ptr, count: BL * ED)
            Linear.backward(dinp: ws.dxdbl.ptr, lddi: R + 2 * N, dweight: g.ptr(lv.dtW), dbias: g.ptr(lv.dtB),
                            dout: dpre, lddo: ED, inp: a.xdbl.ptr, ldi: R + 2 * N, weight: p.ptr(lv.dtW),
                            M: BL, I: R, O: ED)
            // x_proj
            Linear.backward(dinp: ws.du.ptr, lddi: ED, dweight: g.ptr(lv.xW), dbias: nil,
                            dout: ws.dxdbl.ptr, lddo: R + 2 * N, inp: a.u.ptr, ldi: ED, weight: p.ptr(lv.xW),
                            M: BL, I: ED, O: R + 2 * N)
            // SiLU after the conv (dconv reuses ddelta, free after dt_proj)
            let dconv = ws.ddelta.ptr
            dconv.update(repeating: 0, count: BL * ED)
            Activations.siluBackward(dinp: dconv, dout: ws.du.ptr, inp: a.convPre.ptr, count: BL * ED)
            CausalConv1d.backward(dx: ws.dxz.ptr, lddx: 2 * ED, dweight: g.ptr(lv.convW),
                                  dbias: lv.convB.map { g.ptr($0) }, dout: dconv, x: a.xz.ptr, ldx: 2 * ED,
                                  weight: p.ptr(lv.convW), B: B, L: L, ED: ED, K: K)
            // in_proj: recompute its input RMSNorm(x) into `gated`
            let normed = ws.gated.ptr
            let nw = p.ptr(lv.norm)
            for m in 0..<BL {
                let r = a.rstd.ptr[m]
                for j in 0..<D { normed[m * D + j] = nw[j] * (a.resid.ptr[m * D + j] * r) }
            }
            ws.dnormed.zero()
            Linear.backward(dinp: ws.dnormed.ptr, lddi: D, dweight: g.ptr(lv.inW), dbias: lv.inB.map { g.ptr($0) },
                            dout: ws.dxz.ptr, lddo: 2 * ED, inp: normed, ldi: D, weight: p.ptr(lv.inW),
                            M: BL, I: D, O: 2 * ED)
            // RMSNorm; the residual passes dresid through unchanged, so accumulate onto it.
            RMSNorm.backward(dinp: ws.dresid.ptr, dweight: g.ptr(lv.norm), dout: ws.dnormed.ptr, inp: a.resid.ptr,
                             rstd: a.rstd.ptr, weight: nw, M: BL, D: D)
        }
        Embedding.backward(dweight: g.ptr(embedView), dout: ws.dresid.ptr, ids: ids, M: BL, D: D)
    }
}

#if canImport(Glibc)
import Glibc
#endif
