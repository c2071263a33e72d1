/// The Mamba-1 mixer (arXiv 2312.00752 §3; state-spaces/mamba `Mamba` in `mamba_simple.py`, HF `MambaMixer`):
///
///     [x | z] = in_proj(h);  u = SiLU(conv1d(x));  [dt_low | B | C] = x_proj(u);  Δ = softplus(dt_proj(dt_low))
///     s_t = exp(Δ_t·A) ⊙ s_{t−1} + Δ_t·u_t·B_t,  A = −exp(A_log);  y_t = C_t·s_t + D·u_t;  out = out_proj(y ⊙ SiLU(z))
///
/// Saved for backward: in_proj's `[x | z]`, the conv output before SiLU and after it (u), x_proj's `[dt_low | B | C]`,
/// Δ, the scan output y, and the scan state every `SelectiveScanSIMD.chunk` steps. Recomputed: the gated output.
/// State: the last K−1 conv inputs `(B, K−1, ED)` and the SSM state `(B, N, ED)` (transposed from HF's `(B, ED, N)`
/// so that it is contiguous over channels). Not decayed by AdamW: A_log, D and the biases.
public final class Mamba1Block: Block {
    public let layer: Int
    public var kind: BlockKind { .mamba1 }
    /// D, ED, N, R, K.
    let D: Int, ED: Int, N: Int, R: Int, K: Int
    let views: Views

    struct Views {
        let inW: TensorView, inB: TensorView?
        let convW: TensorView, convB: TensorView?
        let xW: TensorView
        let dtW: TensorView, dtB: TensorView
        let aLog: TensorView, d: TensorView
        let outW: TensorView, outB: TensorView?
    }

    /// Initialisation settings (HF `MambaConfig`).
    let initializerRange: Double, timeStepScale: Double, timeStepMin: Double, timeStepMax: Double
    let timeStepFloor: Double, constantTimeStep: Bool, outScale: Double

    /// Adds the mixer's tensors (HF's `named_parameters()` order) to `lay`.
    init(config c: MambaConfig, layer: Int, layout lay: inout ArenaLayout) {
        self.layer = layer
        (D, ED, N, R, K) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel)
        let p = "backbone.layers.\(layer).mixer."
        let aLog = lay.add(p + "A_log", [ED, N], decay: false)
        let d = lay.add(p + "D", [ED], decay: false)
        let convW = lay.add(p + "conv1d.weight", [ED, 1, K], decay: true)
        let convB = c.useConvBias ? lay.add(p + "conv1d.bias", [ED], decay: false) : nil
        let inW = lay.add(p + "in_proj.weight", [2 * ED, D], decay: true)
        let inB = c.useBias ? lay.add(p + "in_proj.bias", [2 * ED], decay: false) : nil
        let xW = lay.add(p + "x_proj.weight", [R + 2 * N, ED], decay: true)
        let dtW = lay.add(p + "dt_proj.weight", [ED, R], decay: true)
        let dtB = lay.add(p + "dt_proj.bias", [ED], decay: false)
        let outW = lay.add(p + "out_proj.weight", [D, ED], decay: true)
        let outB = c.useBias ? lay.add(p + "out_proj.bias", [D], decay: false) : nil
        views = Views(inW: inW, inB: inB, convW: convW, convB: convB, xW: xW, dtW: dtW, dtB: dtB, aLog: aLog, d: d,
                      outW: outW, outB: outB)
        initializerRange = c.initializerRange
        timeStepScale = c.timeStepScale
        timeStepMin = c.timeStepMin
        timeStepMax = c.timeStepMax
        timeStepFloor = c.timeStepFloor
        constantTimeStep = c.timeStepInitScheme == "constant"
        outScale = c.rescalePrenormResidual ? 1 / Double(c.numHiddenLayers).squareRoot() : 1
    }

    public var shareKey: String { "mamba1 \(D) \(ED) \(N) \(R) \(K)" }
    public var projectionParameters: Int { 2 * ED * D + (R + 2 * N) * ED + D * ED }

    /// HF `MambaPreTrainedModel._init_weights`: in_proj and x_proj N(0, initializer_range); conv1d Kaiming-uniform
    /// (U(±1/√K)); dt_proj weight U(±R^−½·scale) ("random") or constant; dt_proj bias = softplus⁻¹(dt), dt
    /// log-uniform in [time_step_min, time_step_max] floored at time_step_floor; A_log = log(1..N) per channel;
    /// D = 1; out_proj U(±1/√ED), divided by √n_layers if `rescale_prenorm_residual`; biases 0.
    public func initialize(_ params: Arena, rng: inout RNG) {
        let v = views
        params.fillNormal(v.inW, std: initializerRange, rng: &rng)
        params.fillNormal(v.xW, std: initializerRange, rng: &rng)
        params.fillUniform(v.convW, bound: 1 / Double(K).squareRoot(), rng: &rng)
        let dtStd = 1 / Double(R).squareRoot() * timeStepScale
        if constantTimeStep {
            params.ptr(v.dtW).update(repeating: Float(dtStd), count: v.dtW.count)
        } else {
            params.fillUniform(v.dtW, bound: dtStd, rng: &rng)
        }
        let dtb = params.ptr(v.dtB)
        let (lo, hi) = (log(timeStepMin), log(timeStepMax))
        for d in 0..<ED {
            let dt = max(exp(rng.uniform() * (hi - lo) + lo), timeStepFloor)
            dtb[d] = Float(dt + log(-expm1(-dt)))
        }
        let a = params.ptr(v.aLog)
        for d in 0..<ED { for n in 0..<N { a[d * N + n] = Float(log(Double(n + 1))) } }
        params.ptr(v.d).update(repeating: 1, count: ED)
        params.fillUniform(v.outW, bound: outScale / Double(ED).squareRoot(), rng: &rng)
    }

    // MARK: Activations, scratch, state

    final class Saved: BlockActivations {
        /// `[x | z]` `(BL, 2ED)`, conv output before SiLU and u after it `(BL, ED)`, `[dt_low | B | C]`
        /// `(BL, R + 2N)`, Δ and y `(BL, ED)`, scan checkpoints.
        let xz, convPre, u, xdbl, delta, y, chk: FloatBuffer
        /// Training from a carried state: the conv inputs before the window `(B, K−1, ED)` (the scan's h0 is its
        /// first checkpoint).
        let context: FloatBuffer
        var continued = false
        init(_ blk: Mamba1Block, BL: Int, chk: Int, contextCount: Int) {
            context = FloatBuffer(count: contextCount)
            xz = FloatBuffer(count: BL * 2 * blk.ED)
            convPre = FloatBuffer(count: BL * blk.ED)
            u = FloatBuffer(count: BL * blk.ED)
            xdbl = FloatBuffer(count: BL * (blk.R + 2 * blk.N))
            delta = FloatBuffer(count: BL * blk.ED)
            y = FloatBuffer(count: BL * blk.ED)
            self.chk = FloatBuffer(count: chk)
        }
        var floats: Int { [xz, convPre, u, xdbl, delta, y, chk, context].reduce(0) { $0 + $1.count } }
    }

    final class Work: BlockScratch {
        /// A = −exp(A_log)ᵀ `(N, ED)`; the gated output `(BL, ED)`; backward's gradients of the activations.
        let At, gated, dG, dy, dxz, du, ddelta, dxdbl, dAt: FloatBuffer
        let scan = Scratch()
        init(_ blk: Mamba1Block, BL: Int, training: Bool) {
            let (ED, N, R) = (blk.ED, blk.N, blk.R)
            let s = training ? BL : 0
            At = FloatBuffer(count: N * ED)
            gated = FloatBuffer(count: BL * ED)
            dG = FloatBuffer(count: s * ED)
            dy = FloatBuffer(count: s * ED)
            dxz = FloatBuffer(count: s * 2 * ED)
            du = FloatBuffer(count: s * ED)
            ddelta = FloatBuffer(count: s * ED)
            dxdbl = FloatBuffer(count: s * (R + 2 * N))
            dAt = FloatBuffer(count: training ? N * ED : 0)
        }
        var floats: Int { [At, gated, dG, dy, dxz, du, ddelta, dxdbl, dAt].reduce(0) { $0 + $1.count } }
    }

    /// The last K−1 conv inputs `(B, K−1, ED)` and the SSM state `(B, N, ED)`.
    public final class State: BlockState {
        public let conv: FloatBuffer, ssm: FloatBuffer
        init(_ blk: Mamba1Block, batch: Int) {
            conv = FloatBuffer(count: batch * max(blk.K - 1, 0) * blk.ED)
            ssm = FloatBuffer(count: batch * blk.N * blk.ED)
        }
        public func reset() { conv.zero(); ssm.zero() }
        public var tensors: [FloatBuffer] { [conv, ssm] }
        public var bytes: Int { (conv.count + ssm.count) * 4 }
    }

    public func makeActivations(B: Int, L: Int, training: Bool) -> BlockActivations {
        let chk = training ? SelectiveScanSIMD.checkpointCount(dims: ScanDims(B: B, L: L, ED: ED, N: N, ldbc: 0)) : 0
        return Saved(self, BL: B * L, chk: chk, contextCount: training ? B * max(K - 1, 0) * ED : 0)
    }

    public func makeScratch(B: Int, L: Int, training: Bool) -> BlockScratch { Work(self, BL: B * L, training: training) }
    public func makeState(batch: Int) -> BlockState { State(self, batch: batch) }

    // MARK: Forward and backward

    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, B: Int, L: Int, params p: Arena,
                        acts: BlockActivations, scratch: BlockScratch, state: BlockState?, training: Bool,
                        observe: ((UnsafePointer<Float>, Int) -> Void)?) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let st = state.map { unsafeDowncast($0, to: State.self) }
        let v = views
        let (D, ED, N, R, K) = (D, ED, N, R, K)
        let BL = B * L
        let At = w.At.ptr
        let aLog = p.ptr(v.aLog)
        for d in 0..<ED { for n in 0..<N { At[n * ED + d] = -expf(aLog[d * N + n]) } }
        // [x | z] = in_proj(h)
        Linear.forward(out: a.xz.ptr, ldo: 2 * ED, inp: inp, ldi: D, weight: p.ptr(v.inW),
                       bias: v.inB.map { p.ptr($0) }, M: BL, I: D, O: 2 * ED)
        // u = SiLU(conv1d(x))
        let ctx = st.map { UnsafePointer($0.conv.ptr) }
        if training {
            a.continued = st != nil
            if let st { a.context.ptr.update(from: st.conv.ptr, count: a.context.count) }
        }
        CausalConv1d.forward(out: a.convPre.ptr, x: a.xz.ptr, ldx: 2 * ED, weight: p.ptr(v.convW),
                             bias: v.convB.map { p.ptr($0) }, context: ctx, B: B, L: L, ED: ED, K: K, silu: a.u.ptr)
        if let st {
            CausalConv1d.nextContext(into: st.conv.ptr, x: a.xz.ptr, ldx: 2 * ED, context: ctx, B: B, L: L, ED: ED, K: K)
        }
        // [dt_low | B | C] = x_proj(u); Δ = softplus(dt_proj(dt_low))
        Linear.forward(out: a.xdbl.ptr, ldo: R + 2 * N, inp: a.u.ptr, ldi: ED, weight: p.ptr(v.xW),
                       bias: nil, M: BL, I: ED, O: R + 2 * N)
        Linear.forward(out: a.delta.ptr, ldo: ED, inp: a.xdbl.ptr, ldi: R + 2 * N, weight: p.ptr(v.dtW),
                       bias: p.ptr(v.dtB), M: BL, I: R, O: ED)
        Activations.softplusInPlace(a.delta.ptr, count: BL * ED)
        observe?(a.delta.ptr, ED)
        // y = scan(u, Δ, A, B, C, D)
        let hs = st.map { $0.ssm.ptr }
        SelectiveScanSIMD.forward(
            y: a.y.ptr, hOut: hs, u: a.u.ptr, delta: a.delta.ptr, At: At,
            Bm: a.xdbl.ptr + R, Cm: a.xdbl.ptr + R + N, D: p.ptr(v.d), h0: hs.map { UnsafePointer($0) },
            checkpoints: training ? a.chk.ptr : nil, dims: ScanDims(B: B, L: L, ED: ED, N: N, ldbc: R + 2 * N))
        // out = out_proj(y ⊙ SiLU(z))
        Activations.gateForward(out: w.gated.ptr, y: a.y.ptr, z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
        Linear.forward(out: out, ldo: D, inp: w.gated.ptr, ldi: ED, weight: p.ptr(v.outW),
                       bias: v.outB.map { p.ptr($0) }, M: BL, I: ED, O: D)
    }

    public func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                         B: Int, L: Int, params p: Arena, grads g: Arena, acts: BlockActivations,
                         scratch: BlockScratch) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let v = views
        let (D, ED, N, R, K) = (D, ED, N, R, K)
        let BL = B * L
        let At = w.At.ptr
        let aLog = p.ptr(v.aLog)
        for d in 0..<ED { for n in 0..<N { At[n * ED + d] = -expf(aLog[d * N + n]) } }
        // out_proj: recompute its input y ⊙ SiLU(z)
        Activations.gateForward(out: w.gated.ptr, y: a.y.ptr, z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
        w.dG.zero()
        Linear.backward(dinp: w.dG.ptr, lddi: ED, dweight: g.ptr(v.outW), dbias: v.outB.map { g.ptr($0) },
                        dout: dout, lddo: D, inp: w.gated.ptr, ldi: ED, weight: p.ptr(v.outW), M: BL, I: ED, O: D)
        // gate
        w.dy.zero()
        w.dxz.zero()
        Activations.gateBackward(dy: w.dy.ptr, dz: w.dxz.ptr + ED, lddz: 2 * ED, dout: w.dG.ptr, y: a.y.ptr,
                                 z: a.xz.ptr + ED, ldz: 2 * ED, M: BL, C: ED)
        // scan
        w.du.zero()
        w.ddelta.zero()
        w.dxdbl.zero()
        w.dAt.zero()
        SelectiveScanSIMD.backward(
            du: w.du.ptr, ddelta: w.ddelta.ptr, dAt: w.dAt.ptr, dBm: w.dxdbl.ptr + R, dCm: w.dxdbl.ptr + R + N,
            dD: g.ptr(v.d), dy: w.dy.ptr, u: a.u.ptr, delta: a.delta.ptr, At: At,
            Bm: a.xdbl.ptr + R, Cm: a.xdbl.ptr + R + N, D: p.ptr(v.d), checkpoints: a.chk.ptr,
            dims: ScanDims(B: B, L: L, ED: ED, N: N, ldbc: R + 2 * N), scratch: w.scan)
        // A = −exp(A_log) ⇒ ∂L/∂A_log = ∂L/∂A · A
        let gA = g.ptr(v.aLog)
        for d in 0..<ED { for n in 0..<N { gA[d * N + n] += w.dAt.ptr[n * ED + d] * At[n * ED + d] } }
        // softplus, dt_proj (dpre reuses dG, free after the gate)
        let dpre = w.dG.ptr
        dpre.update(repeating: 0, count: BL * ED)
        Activations.softplusBackward(dpre: dpre, ddelta: w.ddelta.ptr, delta: a.delta.ptr, count: BL * ED)
        Linear.backward(dinp: w.dxdbl.ptr, lddi: R + 2 * N, dweight: g.ptr(v.dtW), dbias: g.ptr(v.dtB),
                        dout: dpre, lddo: ED, inp: a.xdbl.ptr, ldi: R + 2 * N, weight: p.ptr(v.dtW),
                        M: BL, I: R, O: ED)
        // x_proj
        Linear.backward(dinp: w.du.ptr, lddi: ED, dweight: g.ptr(v.xW), dbias: nil,
                        dout: w.dxdbl.ptr, lddo: R + 2 * N, inp: a.u.ptr, ldi: ED, weight: p.ptr(v.xW),
                        M: BL, I: ED, O: R + 2 * N)
        // SiLU after the conv, and the conv (one pass)
        CausalConv1d.backward(dx: w.dxz.ptr, lddx: 2 * ED, dweight: g.ptr(v.convW),
                              dbias: v.convB.map { g.ptr($0) }, dout: w.du.ptr, x: a.xz.ptr, ldx: 2 * ED,
                              weight: p.ptr(v.convW), B: B, L: L, ED: ED, K: K, siluPre: a.convPre.ptr,
                              context: a.continued ? UnsafePointer(a.context.ptr) : nil)
        // in_proj
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(v.inW), dbias: v.inB.map { g.ptr($0) },
                        dout: w.dxz.ptr, lddo: 2 * ED, inp: inp, ldi: D, weight: p.ptr(v.inW),
                        M: BL, I: D, O: 2 * ED)
    }

    // MARK: Reference

    public func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>, B: Int, L: Int,
                                 params p: Arena) {
        let v = views
        let (D, ED, N, R, K) = (D, ED, N, R, K)
        let (inW, convW, xW, dtW, dtB) = (p.ptr(v.inW), p.ptr(v.convW), p.ptr(v.xW), p.ptr(v.dtW), p.ptr(v.dtB))
        let (aLog, Dp, outW) = (p.ptr(v.aLog), p.ptr(v.d), p.ptr(v.outW))
        let (inB, convB, outB) = (v.inB.map { p.ptr($0) }, v.convB.map { p.ptr($0) }, v.outB.map { p.ptr($0) })
        func dot(_ w: UnsafePointer<Float>, _ x: [Double]) -> Double {
            var s = 0.0
            for i in 0..<x.count { s += Double(w[i]) * x[i] }
            return s
        }
        for b in 0..<B {
            var hist = [[Double]](repeating: [Double](repeating: 0, count: ED), count: K)  // last K inputs, oldest first
            var s = [Double](repeating: 0, count: ED * N)
            for t in 0..<L {
                let h = (0..<D).map { Double(inp[(b * L + t) * D + $0]) }
                let xz = (0..<(2 * ED)).map { o in dot(inW + o * D, h) + Double(inB?[o] ?? 0) }
                hist.removeFirst()
                hist.append(Array(xz[0..<ED]))
                let u = (0..<ED).map { d -> Double in
                    var acc = Double(convB?[d] ?? 0)
                    for k in 0..<K { acc += Double(convW[d * K + k]) * hist[k][d] }
                    return acc / (1 + Foundation.exp(-acc))
                }
                let xdbl = (0..<(R + 2 * N)).map { o in dot(xW + o * ED, u) }
                var y = [Double](repeating: 0, count: ED)
                for d in 0..<ED {
                    var pre = Double(dtB[d])
                    for r in 0..<R { pre += Double(dtW[d * R + r]) * xdbl[r] }
                    let delta = pre > 20 ? pre : Foundation.log1p(Foundation.exp(pre))
                    var acc = Double(Dp[d]) * u[d]
                    for n in 0..<N {
                        let A = -Foundation.exp(Double(aLog[d * N + n]))
                        s[d * N + n] = Foundation.exp(delta * A) * s[d * N + n] + delta * u[d] * xdbl[R + n]
                        acc += s[d * N + n] * xdbl[R + N + n]
                    }
                    let z = xz[ED + d]
                    y[d] = acc * z / (1 + Foundation.exp(-z))
                }
                for o in 0..<D { out[(b * L + t) * D + o] = dot(outW + o * ED, y) + Double(outB?[o] ?? 0) }
            }
        }
    }

    // MARK: Step

    public func makeStepper(params: Arena, batch: Int, weights: StepWeights) -> BlockStepper {
        Stepper(self, params: params, batch: batch, weights: weights)
    }

    /// The recurrent step (mamba_ssm's `Mamba.step`, HF `MambaMixer.slow_forward` with a cache at L = 1), fused:
    ///
    ///     [x | z] = in_proj(h);  conv state ← shift in x;  u = SiLU(Σ_k w_k · conv_k + b)
    ///     [dt_low | B | C] = x_proj(u);  Δ = softplus(dt_proj(dt_low));  s ← exp(Δ·A) ⊙ s + Δ·u·B;  y = C·s + D·u
    ///     out = out_proj(y ⊙ SiLU(z))
    ///
    /// `forward`'s maths with L = 1 and a carried state (to rounding: the projections sum in another order), as
    /// four passes instead of nine: the three projections are `MatVec` (W read once for all B rows), and the conv
    /// with SiLU, then dt_proj, softplus, the scan update and the gate, each run in one sweep over 16-channel
    /// blocks while those channels are in registers. Tensors the step reads transposed (A, the conv taps, dt_proj)
    /// are laid out when the stepper is made: it snapshots them.
    final class Stepper: BlockStepper {
        let blk: Mamba1Block
        let params: Arena
        /// A = −exp(A_log)ᵀ `(N, ED)`, conv taps `(K, ED)`, dt_proj weightᵀ `(R, ED)`.
        let At, convT, dtT: FloatBuffer
        /// Scratch rows: `[x | z]` `(B, 2ED)`, u `(B, ED)`, `[dt_low | B | C]` `(B, R + 2N)`, gated `(B, ED)`.
        let xz, u, xdbl, gated: FloatBuffer
        /// in_proj, x_proj and out_proj rounded to bfloat16 (with `.bf16`).
        let half: (inW: BF16Matrix, xW: BF16Matrix, outW: BF16Matrix)?

        init(_ blk: Mamba1Block, params p: Arena, batch: Int, weights: StepWeights) {
            self.blk = blk
            params = p
            let (D, ED, N, R, K) = (blk.D, blk.ED, blk.N, blk.R, blk.K)
            let v = blk.views
            At = FloatBuffer(count: N * ED)
            let aLog = p.ptr(v.aLog)
            for d in 0..<ED { for n in 0..<N { At.ptr[n * ED + d] = -expf(aLog[d * N + n]) } }
            convT = FloatBuffer(count: K * ED)
            let w = p.ptr(v.convW)
            for d in 0..<ED { for k in 0..<K { convT.ptr[k * ED + d] = w[d * K + k] } }
            dtT = FloatBuffer(count: R * ED)
            let dw = p.ptr(v.dtW)
            for d in 0..<ED { for r in 0..<R { dtT.ptr[r * ED + d] = dw[d * R + r] } }
            half = weights == .bf16
                ? (BF16Matrix(p.ptr(v.inW), rows: 2 * ED, cols: D), BF16Matrix(p.ptr(v.xW), rows: R + 2 * N, cols: ED),
                   BF16Matrix(p.ptr(v.outW), rows: D, cols: ED))
                : nil
            xz = FloatBuffer(count: batch * 2 * ED)
            u = FloatBuffer(count: batch * ED)
            xdbl = FloatBuffer(count: batch * (R + 2 * N))
            gated = FloatBuffer(count: batch * ED)
        }

        var bytes: Int {
            let halves = half.map { $0.inW.bytes + $0.xW.bytes + $0.outW.bytes } ?? 0
            return [At, convT, dtT, xz, u, xdbl, gated].reduce(0) { $0 + $1.count } * 4 + halves
        }

        var projectionWeightBytes: Int {
            half.map { $0.inW.bytes + $0.xW.bytes + $0.outW.bytes } ?? blk.projectionParameters * 4
        }

        func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, state: BlockState, ctx: StepContext) {
            let st = unsafeDowncast(state, to: State.self)
            let p = params, v = blk.views
            let B = ctx.batch
            let (D, ED, N, R, K) = (blk.D, blk.ED, blk.N, blk.R, blk.K)
            let ldbc = R + 2 * N
            let blocks = (ED + 15) / 16
            let team = ctx.team
            ctx.project(xz.ptr, 2 * ED, inp, D, p.ptr(v.inW), half?.inW, v.inB.map { p.ptr($0) }, I: D, O: 2 * ED)
            // u = SiLU(conv1d(x)) from the K − 1 previous inputs in the state, which then shift by one.
            let (ctxAll, cw, cb) = (st.conv.ptr, UnsafePointer(convT.ptr), v.convB.map { UnsafePointer(p.ptr($0)) })
            let (xzp, up) = (UnsafePointer(xz.ptr), u.ptr)
            team.forRanges(B * blocks) { lo, hi in
                for item in lo..<hi {
                    let b = item / blocks, d0 = (item % blocks) * 16
                    let w = min(16, ED - d0)
                    CausalConv1d.stepSiLU(out: up + b * ED, x: xzp + b * 2 * ED, context: ctxAll + b * (K - 1) * ED,
                                          tapsT: cw, bias: cb, C: ED, K: K, c0: d0, w: w)
                }
            }
            ctx.project(xdbl.ptr, ldbc, u.ptr, ED, p.ptr(v.xW), half?.xW, nil, I: ED, O: ldbc)
            // Δ = softplus(dt_proj(dt_low)); the scan's one step; y ⊙ SiLU(z).
            let (at, dtw, dtb, dd) = (UnsafePointer(At.ptr), UnsafePointer(dtT.ptr), UnsafePointer(p.ptr(v.dtB)),
                                      UnsafePointer(p.ptr(v.d)))
            let (xd, hs, g) = (UnsafePointer(xdbl.ptr), st.ssm.ptr, gated.ptr)
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
            ctx.project(out, D, gated.ptr, ED, p.ptr(v.outW), half?.outW, v.outB.map { p.ptr($0) }, I: ED, O: D)
        }
    }
}

import Foundation
