/// The multi-scale backbone (model_type "sashimi"): SaShiMi's U-Net (Goel et al. 2022, arXiv 2202.09729;
/// state-spaces/s4 `Sashimi` with `unet = false`) with Mamba-1 blocks, the architecture of the Mamba paper's audio
/// models (arXiv 2312.00752 §4.4). With S poolings of factors p_0 … p_{S−1}, stage k runs at 1/(p_0⋯p_{k−1}) of the
/// sample rate with width H_k = D·eᵏ (e = `pool_expand`):
///
///     u_0 = embeddings[ids];  u_{k+1} = DownPool_k(u_k)                      (the skips, k < S)
///     z_S = Stack_S(u_S) + u_S                                             (the centre)
///     v_k = UpPool_k(z_{k+1}) + u_k;  z_k = Stack_k(v_k) + v_k               (k = S−1 … 0)
///     logits = lm_head(RMSNorm_f(z_0))
///
/// where `Stack_k` is stage k's blocks, each the pre-norm residual unit `x + Mamba(RMSNorm(x))`, and the pools are
/// `Layers/Pooling.swift`'s causal ones (the up-pool shifted one pooled step), so output t depends on inputs 0…t only.
/// SaShiMi's down path (`unet = false`) holds no blocks: the skips are the pooled inputs.
///
/// Lengths. Stage k needs whole pooled steps, so a forward pass runs on the input right-padded with token 0 to a
/// multiple of P = p_0⋯p_{S−1}; causality makes the first L outputs exactly those of the unpadded input. Carried
/// state continues only from a multiple of P (`RecurrentState.pools` at a block boundary): chunked evaluation cuts its
/// chunks at multiples of P, and the last chunk may be any length (the state is then spent).
///
/// Parameters: `backbone.down_pools.k.{weight [H_{k+1}, p_k·H_k], bias}`, `backbone.up_pools.k.{weight
/// [p_k·H_k, H_{k+1}], bias}`, and the blocks `backbone.layers.N.{norm, mixer}` numbered in the order they run
/// (the centre's first, the outer stage's last); stage k's blocks are Mamba-1 of width H_k, d_inner
/// `intermediate_size`·eᵏ and dt_rank `time_step_rank`·eᵏ.
public struct UNetPlan: Sendable, Equatable {
    /// p_k, k = 0 ..< S.
    public let factors: [Int]
    /// H_k, k = 0 ... S.
    public let widths: [Int]
    /// Samples per step of stage k: 1, p_0, p_0·p_1, … (k = 0 ... S).
    public let periods: [Int]
    /// Blocks of stage k.
    public let layers: [Int]
    /// The flat index of stage k's first block.
    public let first: [Int]
    /// The stage of each flat layer.
    public let stageOf: [Int]
    let e: Int

    public var stages: Int { factors.count }
    /// P: the lengths a forward pass runs on are multiples of it.
    public var period: Int { periods[stages] }

    init(_ c: MambaConfig) {
        factors = c.pooling
        e = c.poolExpand
        let S = c.pooling.count
        var w = [c.hiddenSize], per = [1]
        for p in c.pooling { w.append(w.last! * c.poolExpand); per.append(per.last! * p) }
        widths = w
        periods = per
        layers = c.stageLayers
        var f = [Int](repeating: 0, count: S + 1), stage: [Int] = []
        var next = 0
        for k in stride(from: S, through: 0, by: -1) {
            f[k] = next
            next += c.stageLayers[k]
            stage += Array(repeating: k, count: c.stageLayers[k])
        }
        first = f
        stageOf = stage
    }

    /// The config stage k's blocks are built from.
    func stageConfig(_ c: MambaConfig, _ k: Int) -> MambaConfig {
        var s = c
        var m = 1
        for _ in 0..<k { m *= e }
        s.hiddenSize = c.hiddenSize * m
        s.intermediateSize = c.intermediateSize * m
        s.timeStepRank = c.timeStepRank * m
        return s
    }

    /// The padded length of an input of `L` tokens.
    public func padded(_ L: Int) -> Int { (L + period - 1) / period * period }
}

extension MambaConfig {
    /// The multi-scale plan of a "sashimi" model; nil for a flat stack.
    public var unetPlan: UNetPlan? { modelType == .sashimi ? UNetPlan(self) : nil }
    /// The multiple of tokens at which a carried state can continue (P for the multi-scale backbone, else 1).
    public var stateBoundary: Int { unetPlan?.period ?? 1 }
    /// `n` rounded down to a multiple of `stateBoundary` (at least one): a chunk length that carried state can
    /// continue from.
    public func chunkLength(_ n: Int) -> Int {
        let b = stateBoundary
        return max(b, n / b * b)
    }
}

/// The pooling layers' part of a multi-scale model's recurrent state: per pooling, the down-pool's block so far and
/// the up-pool's rows to hand out (whose queue is also the carry between chunks of a forward pass).
public final class PoolStates {
    public let down: [DownPoolStepper]
    public let up: [UpPoolStepper]
    /// Set when a forward pass ran on a length that is not a multiple of P: the state cannot be continued.
    var spent = false

    init(plan: UNetPlan, batch: Int) {
        down = (0..<plan.stages).map {
            DownPoolStepper(batch: batch, H: plan.widths[$0], p: plan.factors[$0], E: plan.widths[$0 + 1])
        }
        up = (0..<plan.stages).map {
            UpPoolStepper(batch: batch, H: plan.widths[$0], p: plan.factors[$0], E: plan.widths[$0 + 1])
        }
    }

    /// Whether every pool is at a block boundary (a forward pass may continue from here).
    public var atBoundary: Bool { !spent && down.allSatisfy { $0.filled == 0 } && up.allSatisfy { $0.position == 0 } }

    func reset() {
        spent = false
        for d in down { d.reset() }
        for u in up { u.reset() }
    }

    var bytes: Int { down.reduce(0) { $0 + $1.B * $1.p * $1.H * 4 } + up.reduce(0) { $0 + $1.B * $1.p * $1.H * 4 } }
}

/// The buffers a multi-scale forward and backward add to a `Workspace`.
final class UNetBuffers {
    let plan: UNetPlan
    /// The padded length.
    let Lp: Int
    /// The padded ids `(B, Lp)`.
    var ids: [Int32]
    /// u_k `(B, L_k, H_k)`, k = 0 ... S.
    let u: [FloatBuffer]
    /// z_k, k = 1 ... S (index 0 unused: z_0 is the workspace's residF).
    let z: [FloatBuffer]
    /// v_k, k < S.
    let v: [FloatBuffer]
    /// Inference: stage k's residual stream.
    let stream: [FloatBuffer]
    /// The up-pools' projection (and its gradient's) scratch.
    let y: FloatBuffer
    /// Training: ∂/∂u_k, and the gradient flowing through a stage.
    let du: [FloatBuffer]
    let dA: FloatBuffer

    init(plan: UNetPlan, B: Int, L: Int, training: Bool) {
        self.plan = plan
        let Lp = plan.padded(L)
        self.Lp = Lp
        ids = [Int32](repeating: 0, count: B * Lp)
        let S = plan.stages
        let size = (0...S).map { B * Lp / plan.periods[$0] * plan.widths[$0] }
        let most = size.max()!
        u = (0...S).map { FloatBuffer(count: size[$0]) }
        z = (0...S).map { FloatBuffer(count: $0 == 0 ? 0 : size[$0]) }
        v = (0..<S).map { FloatBuffer(count: size[$0]) }
        stream = (0...S).map { FloatBuffer(count: training ? 0 : size[$0]) }
        y = FloatBuffer(count: most)
        du = (0...S).map { FloatBuffer(count: training ? size[$0] : 0) }
        dA = FloatBuffer(count: training ? most : 0)
    }

    var floats: Int { ([y, dA] + u + z + v + stream + du).reduce(0) { $0 + $1.count } + ids.count }
}

extension MambaModel {
    /// `forwardBackbone` for the multi-scale backbone.
    func forwardUNet(ids: UnsafePointer<Int32>, ws: Workspace, state: RecurrentState?,
                     observe: ((_ layer: Int, _ values: UnsafePointer<Float>, _ channels: Int) -> Void)?) {
        let c = config, plan = unet!, u = ws.unet!
        let (B, L, Lp, S) = (ws.B, ws.L, u.Lp, plan.stages)
        let (D, V) = (c.hiddenSize, c.vocabSize)
        let p = params
        if let state {
            precondition(state.batch == B, "state batch \(state.batch) != batch \(B)")
            precondition(state.pools!.atBoundary, "a multi-scale state continues only from a multiple of \(plan.period) tokens")
        }
        // Right-pad with token 0 to whole pooled steps.
        for b in 0..<B {
            for t in 0..<L { u.ids[b * Lp + t] = ids[b * L + t] }
            for t in L..<Lp { u.ids[b * Lp + t] = 0 }
        }
        u.ids.withUnsafeBufferPointer {
            Embedding.forward(out: u.u[0].ptr, ids: $0.baseAddress!, weight: p.ptr(embedView), M: B * Lp, D: D, V: V)
        }
        for k in 0..<S {
            DownPool.forward(out: u.u[k + 1].ptr, inp: u.u[k].ptr, weight: p.ptr(downPools[k].w),
                             bias: p.ptr(downPools[k].b), N: B * Lp / plan.periods[k + 1], H: plan.widths[k],
                             p: plan.factors[k], E: plan.widths[k + 1])
        }
        for k in stride(from: S, through: 0, by: -1) {
            let rows = B * Lp / plan.periods[k], H = plan.widths[k]
            let vk: UnsafeMutablePointer<Float>
            if k == S {
                vk = u.u[S].ptr
            } else {
                vk = u.v[k].ptr
                UpPool.forward(out: vk, inp: u.z[k + 1].ptr, y: u.y.ptr, weight: p.ptr(upPools[k].w),
                               bias: p.ptr(upPools[k].b), carry: state?.pools!.up[k].queue,
                               B: B, Lp: Lp / plan.periods[k + 1], H: H, p: plan.factors[k], E: plan.widths[k + 1])
                let s = u.u[k].ptr
                for i in 0..<(rows * H) { vk[i] += s[i] }
            }
            // The stage's blocks on a copy of v_k (each layer's input kept when training), then z_k = x + v_k.
            let n = plan.layers[k], f = plan.first[k], count = rows * H
            let zk = k == 0 ? ws.residF.ptr : u.z[k].ptr
            if n == 0 { for i in 0..<count { zk[i] = vk[i] + vk[i] } }
            var cur = ws.training ? (n > 0 ? ws.resid[f].ptr : ws.normed.ptr) : u.stream[k].ptr
            cur.update(from: vk, count: count)
            for j in 0..<n {
                let l = f + j
                let rstd = ws.rstd[ws.training ? l : 0].ptr
                RMSNorm.forward(out: ws.normed.ptr, rstd: rstd, inp: cur, weight: p.ptr(layerNorms[l]), M: rows, D: H,
                                eps: c.layerNormEpsilon)
                blocks[l].forward(out: ws.mixOut.ptr, inp: ws.normed.ptr, B: B, L: Lp / plan.periods[k], params: p,
                                  acts: ws.acts[l], scratch: ws.scratch[l], state: state?.layers[l],
                                  training: ws.training, observe: observe.map { f in { v, ch in f(l, v, ch) } })
                let o = ws.mixOut.ptr
                if j + 1 < n {
                    let next = ws.training ? ws.resid[l + 1].ptr : cur
                    for i in 0..<count { next[i] = o[i] + cur[i] }
                    cur = next
                } else {
                    for i in 0..<count { zk[i] = o[i] + cur[i] + vk[i] }
                }
            }
        }
        if let state, Lp != L { state.pools!.spent = true }
        ws.continuedState = state != nil
        RMSNorm.forward(out: ws.normF.ptr, rstd: ws.rstdF.ptr, inp: ws.residF.ptr, weight: p.ptr(normFView),
                        M: B * Lp, D: D, eps: c.layerNormEpsilon)
        // The first L rows of each sequence, as (B, L, D) (rows only move down, so in place).
        if Lp != L {
            for b in 1..<max(B, 1) {
                (ws.normF.ptr + b * L * D).update(from: ws.normF.ptr + b * Lp * D, count: L * D)
            }
        }
    }

    /// `backwardBackbone` for the multi-scale backbone, from ∂loss/∂hidden `(B, L, D)` in `ws.dnormed`.
    func backwardUNet(ws: Workspace) {
        let plan = unet!, u = ws.unet!
        let (B, L, Lp, S) = (ws.B, ws.L, u.Lp, plan.stages)
        let D = config.hiddenSize
        let p = params, g = grads
        // ∂hidden to (B, Lp, D), zero on the padding (rows only move up: from the last sequence back).
        if Lp != L {
            let d = ws.dnormed.ptr
            for b in stride(from: B - 1, through: 0, by: -1) {
                for t in stride(from: L - 1, through: 0, by: -1) {
                    (d + (b * Lp + t) * D).update(from: d + (b * L + t) * D, count: D)
                }
                (d + (b * Lp + L) * D).update(repeating: 0, count: (Lp - L) * D)
            }
        }
        ws.dresid.zero()
        RMSNorm.backward(dinp: ws.dresid.ptr, dweight: g.ptr(normFView), dout: ws.dnormed.ptr, inp: ws.residF.ptr,
                         rstd: ws.rstdF.ptr, weight: p.ptr(normFView), M: B * Lp, D: D)
        for d in u.du { d.zero() }
        // ws.dresid holds ∂z_k; the stage's stack turns it into ∂v_k in u.dA.
        for k in 0...S {
            let rows = B * Lp / plan.periods[k], H = plan.widths[k], count = rows * H
            let dz = ws.dresid.ptr, dx = u.dA.ptr
            dx.update(from: dz, count: count)
            let n = plan.layers[k], f = plan.first[k]
            for j in stride(from: n - 1, through: 0, by: -1) {
                let l = f + j
                let (res, rstd) = (ws.resid[l].ptr, ws.rstd[l].ptr)
                let nw = p.ptr(layerNorms[l])
                RMSNorm.apply(out: ws.normed.ptr, inp: res, rstd: rstd, weight: nw, M: rows, D: H)
                ws.dnormed.ptr.update(repeating: 0, count: count)
                blocks[l].backward(dinp: ws.dnormed.ptr, dout: dx, inp: ws.normed.ptr, B: B, L: Lp / plan.periods[k],
                                   params: p, grads: g, acts: ws.acts[l], scratch: ws.scratch[l])
                RMSNorm.backward(dinp: dx, dweight: g.ptr(layerNorms[l]), dout: ws.dnormed.ptr, inp: res, rstd: rstd,
                                 weight: nw, M: rows, D: H)
            }
            // ∂v_k = ∂x (through the stack) + ∂z_k (the skip around it); v_k = UpPool(z_{k+1}) + u_k.
            let du = u.du[k].ptr
            for i in 0..<count { dx[i] += dz[i]; du[i] += dx[i] }
            if k < S {
                let next = B * Lp / plan.periods[k + 1] * plan.widths[k + 1]
                dz.update(repeating: 0, count: next)
                UpPool.backward(dinp: dz, dweight: g.ptr(upPools[k].w), dbias: g.ptr(upPools[k].b), dout: dx,
                                inp: u.z[k + 1].ptr, dy: u.y.ptr, weight: p.ptr(upPools[k].w),
                                B: B, Lp: Lp / plan.periods[k + 1], H: H, p: plan.factors[k], E: plan.widths[k + 1])
            }
        }
        for k in stride(from: S - 1, through: 0, by: -1) {
            DownPool.backward(dinp: u.du[k].ptr, dweight: g.ptr(downPools[k].w), dbias: g.ptr(downPools[k].b),
                              dout: u.du[k + 1].ptr, inp: u.u[k].ptr, weight: p.ptr(downPools[k].w),
                              N: B * Lp / plan.periods[k + 1], H: plan.widths[k], p: plan.factors[k], E: plan.widths[k + 1])
        }
        u.ids.withUnsafeBufferPointer {
            Embedding.backward(dweight: g.ptr(embedView), dout: u.du[0].ptr, ids: $0.baseAddress!, M: B * Lp, D: D)
        }
    }

    /// The plain version of the multi-scale backbone for one batch from zero state, in Double from the blocks'
    /// references and the pools' (each stage's residual stream in Double, each block fed its normed input rounded to
    /// Float, as the blocks' references take it): RMSNorm_f(z_0) `(B, L, D)`, L any length (padded as `forward`).
    public func backboneReference(ids: [Int32], B: Int, L: Int) -> [Double] {
        let c = config, plan = unet!, p = params, S = plan.stages
        let Lp = plan.padded(L), D = c.hiddenSize
        var u: [[Double]] = []
        var x0 = [Double](repeating: 0, count: B * Lp * D)
        let emb = p.ptr(embedView)
        for b in 0..<B { for t in 0..<L { for d in 0..<D { x0[(b * Lp + t) * D + d] = Double(emb[Int(ids[b * L + t]) * D + d]) } } }
        for b in 0..<B { for t in L..<Lp { for d in 0..<D { x0[(b * Lp + t) * D + d] = Double(emb[d]) } } }
        u.append(x0)
        for k in 0..<S {
            let inp = u[k].map(Float.init)
            var out = [Double](repeating: 0, count: B * Lp / plan.periods[k + 1] * plan.widths[k + 1])
            DownPool.forwardReference(out: &out, inp: inp, weight: p.ptr(downPools[k].w), bias: p.ptr(downPools[k].b),
                                      B: B, L: Lp / plan.periods[k], H: plan.widths[k], p: plan.factors[k],
                                      E: plan.widths[k + 1])
            u.append(out)
        }
        func rmsNorm(_ x: [Double], _ w: UnsafePointer<Float>, _ H: Int) -> [Double] {
            var out = x
            for r in 0..<(x.count / H) {
                var ms = 0.0
                for h in 0..<H { ms += x[r * H + h] * x[r * H + h] }
                let s = 1 / (ms / Double(H) + Double(c.layerNormEpsilon)).squareRoot()
                for h in 0..<H { out[r * H + h] = x[r * H + h] * s * Double(w[h]) }
            }
            return out
        }
        var z: [Double] = []
        for k in stride(from: S, through: 0, by: -1) {
            let Lk = Lp / plan.periods[k], H = plan.widths[k]
            var v = u[k]
            if k < S {
                var up = [Double](repeating: 0, count: v.count)
                UpPool.forwardReference(out: &up, inp: z.map(Float.init), weight: p.ptr(upPools[k].w),
                                        bias: p.ptr(upPools[k].b), B: B, Lp: Lp / plan.periods[k + 1], H: H,
                                        p: plan.factors[k], E: plan.widths[k + 1])
                for i in v.indices { v[i] += up[i] }
            }
            var x = v
            for j in 0..<plan.layers[k] {
                let l = plan.first[k] + j
                let h = rmsNorm(x, p.ptr(layerNorms[l]), H).map(Float.init)
                var o = [Double](repeating: 0, count: x.count)
                blocks[l].forwardReference(out: &o, inp: h, B: B, L: Lk, params: p)
                for i in x.indices { x[i] += o[i] }
            }
            z = zip(x, v).map { $0 + $1 }
        }
        let nf = rmsNorm(z, p.ptr(normFView), D)
        var out = [Double](repeating: 0, count: B * L * D)
        for b in 0..<B { for t in 0..<L { for d in 0..<D { out[(b * L + t) * D + d] = nf[(b * Lp + t) * D + d] } } }
        return out
    }
}
