/// The Mamba-2 mixer (arXiv 2405.21060; state-spaces/mamba `Mamba2` in `mamba2.py`, HF `Mamba2Mixer` and
/// `NemotronHMamba2Mixer`; `M` in a pattern), with H heads of dim P (ED = H·P), G groups and state N:
///
///     [z (ED) | xBC (ED + 2GN) | dt (H)] = in_proj(h);  [x | B | C] = SiLU(conv1d(xBC))
///     Δ = clamp(softplus(dt + dt_bias));  A = −exp(A_log) per head;  head h reads group g = h / (H/G)
///     S_t = exp(Δ_t·A_h)·S_{t−1} + Δ_t · x_t ⊗ B_t (S is P × N);  y_t = S_t·C_t + D_h·x_t
///     out = out_proj(RMSNorm_group(y ⊙ SiLU(z)))   (mean square over each group's ED/G channels, then norm.weight)
///
/// Training runs the chunked SSD algorithm (`SSD.forward`, matrix products within chunks of `chunk_size`, states
/// passed between chunks); the step is the exact recurrence. The Δ clamp is `time_step_limit` for mamba2 configs and
/// `[time_step_min, ∞)` for nemotron_h, as transformers computes them; transformers' own recurrent step skips the
/// clamp, ours applies it, so our step equals our (and transformers') forward wherever the clamp binds.
/// Saved for backward: in_proj's output, the conv output before SiLU and after it, Δ, y, the gated norm's rstd per
/// group and its output, and the SSD chunk-start states. State: the last K−1 conv inputs `(B, K−1, ED + 2GN)` and
/// the SSM state `(B, H, P, N)` (HF's layout). Not decayed by AdamW: dt_bias, A_log, D, the gated norm and the
/// biases.
public final class Mamba2Block: Block {
    public let layer: Int
    public var kind: BlockKind { .mamba2 }
    /// D, H, P, G, N, K, Q; ED = H·P; C = ED + 2GN (the conv's channels); W = 2ED + 2GN + H (in_proj's rows).
    let D: Int, H: Int, P: Int, G: Int, N: Int, K: Int, Q: Int
    let ED: Int, C: Int, W: Int
    let eps: Float
    let clamp: (lo: Float, hi: Float)
    let dtBias: TensorView, aLog: TensorView, dParam: TensorView
    let convW: TensorView, convB: TensorView?
    let inW: TensorView, inB: TensorView?
    let normW: TensorView
    let outW: TensorView, outB: TensorView?
    let initializerRange: Double, timeStepMin: Double, timeStepMax: Double, timeStepFloor: Double
    let outScale: Double, kaimingConv: Bool

    init(config c: MambaConfig, layer: Int, layout lay: inout ArenaLayout) {
        self.layer = layer
        (D, H, P, G, N, K, Q) = (c.hiddenSize, c.ssmHeads, c.ssmHeadDim, c.nGroups, c.stateSize, c.convKernel, c.chunkSize)
        ED = H * P
        C = ED + 2 * G * N
        W = 2 * ED + 2 * G * N + H
        eps = c.layerNormEpsilon
        clamp = c.deltaClamp
        let p = "backbone.layers.\(layer).mixer."
        dtBias = lay.add(p + "dt_bias", [H], decay: false)
        aLog = lay.add(p + "A_log", [H], decay: false)
        dParam = lay.add(p + "D", [H], decay: false)
        convW = lay.add(p + "conv1d.weight", [C, 1, K], decay: true)
        convB = c.useConvBias ? lay.add(p + "conv1d.bias", [C], decay: false) : nil
        inW = lay.add(p + "in_proj.weight", [W, D], decay: true)
        inB = c.useBias ? lay.add(p + "in_proj.bias", [W], decay: false) : nil
        normW = lay.add(p + "norm.weight", [ED], decay: false)
        outW = lay.add(p + "out_proj.weight", [D, ED], decay: true)
        outB = c.useBias ? lay.add(p + "out_proj.bias", [D], decay: false) : nil
        initializerRange = c.initializerRange
        (timeStepMin, timeStepMax, timeStepFloor) = (c.timeStepMin, c.timeStepMax, c.timeStepFloor)
        outScale = c.rescalePrenormResidual ? 1 / Double(c.numHiddenLayers).squareRoot() : 1
        kaimingConv = c.modelType != .nemotronH
    }

    public var shareKey: String { "mamba2 \(D) \(H) \(P) \(G) \(N) \(K) \(Q)" }
    public var projectionParameters: Int { W * D + D * ED }
    var dims: (Int, Int) -> SSDDims { { B, L in SSDDims(B: B, L: L, H: self.H, P: self.P, G: self.G, N: self.N, chunk: self.Q) } }

    /// mamba_ssm's `Mamba2` initialisation: A_log = log(U(1, 16)) per head, D = 1, dt_bias = softplus⁻¹(dt) with
    /// dt log-uniform in [time_step_min, time_step_max] floored at time_step_floor; in_proj N(0, initializer_range)
    /// (as transformers); conv1d U(±1/√K) (Kaiming-uniform, PyTorch's default; N(0, initializer_range) for
    /// nemotron_h as transformers does); out_proj U(±1/√ED), divided by √n_layers with `rescale_prenorm_residual`;
    /// gated norm 1, biases 0.
    public func initialize(_ params: Arena, rng: inout RNG) {
        let (lo, hi) = (log(timeStepMin), log(timeStepMax))
        let db = params.ptr(dtBias)
        for h in 0..<H {
            let dt = max(exp(rng.uniform() * (hi - lo) + lo), timeStepFloor)
            db[h] = Float(dt + log(-expm1(-dt)))
        }
        let a = params.ptr(aLog)
        for h in 0..<H { a[h] = Float(log(rng.uniform(1, 16))) }
        params.ptr(dParam).update(repeating: 1, count: H)
        if kaimingConv {
            params.fillUniform(convW, bound: 1 / Double(K).squareRoot(), rng: &rng)
        } else {
            params.fillNormal(convW, std: initializerRange, rng: &rng)
        }
        params.fillNormal(inW, std: initializerRange, rng: &rng)
        params.ptr(normW).update(repeating: 1, count: ED)
        params.fillUniform(outW, bound: outScale / Double(ED).squareRoot(), rng: &rng)
    }

    // MARK: Activations, scratch, state

    final class Saved: BlockActivations {
        /// in_proj's output `(BL, W)`, the conv output before and after SiLU `(BL, C)`, Δ `(BL, H)`, y `(BL, ED)`,
        /// the gated norm's rstd `(BL, G)` and output `(BL, ED)` (training only), SSD chunk-start states.
        let zxbcdt, convPre, xbc, delta, y, rstd, normed, chunkStates: FloatBuffer
        /// Training from a carried state: the conv inputs before the window `(B, K−1, ED + 2GN)` (the SSD's h0 is
        /// its first chunk state).
        let context: FloatBuffer
        var continued = false
        init(_ k: Mamba2Block, BL: Int, states: Int, training: Bool, contextCount: Int) {
            context = FloatBuffer(count: contextCount)
            zxbcdt = FloatBuffer(count: BL * k.W)
            convPre = FloatBuffer(count: BL * k.C)
            xbc = FloatBuffer(count: BL * k.C)
            delta = FloatBuffer(count: BL * k.H)
            y = FloatBuffer(count: BL * k.ED)
            rstd = FloatBuffer(count: BL * k.G)
            normed = FloatBuffer(count: training ? BL * k.ED : 0)
            chunkStates = FloatBuffer(count: states)
        }
        var floats: Int { [zxbcdt, convPre, xbc, delta, y, rstd, normed, chunkStates, context].reduce(0) { $0 + $1.count } }
    }

    final class Work: BlockScratch {
        /// A `(H)`; the normed gated output `(BL, ED)`; backward's gradients.
        let A, normed, dnormed, dy, dzxbcdt, dxbc, ddelta, dA: FloatBuffer
        let ssd = Scratch(), partials = Scratch()
        init(_ k: Mamba2Block, BL: Int, training: Bool) {
            let s = training ? BL : 0
            A = FloatBuffer(count: k.H)
            normed = FloatBuffer(count: BL * k.ED)
            dnormed = FloatBuffer(count: s * k.ED)
            dy = FloatBuffer(count: s * k.ED)
            dzxbcdt = FloatBuffer(count: s * k.W)
            dxbc = FloatBuffer(count: s * k.C)
            ddelta = FloatBuffer(count: s * k.H)
            dA = FloatBuffer(count: k.H)
        }
        var floats: Int { [A, normed, dnormed, dy, dzxbcdt, dxbc, ddelta, dA].reduce(0) { $0 + $1.count } }
    }

    /// The last K−1 conv inputs `(B, K−1, ED + 2GN)` and the SSM state `(B, H, P, N)`.
    public final class State: BlockState {
        public let conv: FloatBuffer, ssm: FloatBuffer
        init(_ k: Mamba2Block, batch: Int) {
            conv = FloatBuffer(count: batch * max(k.K - 1, 0) * k.C)
            ssm = FloatBuffer(count: batch * k.H * k.P * k.N)
        }
        public func reset() { conv.zero(); ssm.zero() }
        public var tensors: [FloatBuffer] { [conv, ssm] }
        public var bytes: Int { (conv.count + ssm.count) * 4 }
    }

    public func makeActivations(B: Int, L: Int, training: Bool) -> BlockActivations {
        Saved(self, BL: B * L, states: training ? SSD.stateCount(dims: dims(B, L)) : 0, training: training,
              contextCount: training ? B * max(K - 1, 0) * C : 0)
    }

    public func makeScratch(B: Int, L: Int, training: Bool) -> BlockScratch { Work(self, BL: B * L, training: training) }
    public func makeState(batch: Int) -> BlockState { State(self, batch: batch) }

    // MARK: Pieces shared by forward, backward and step

    /// Δ = clamp(softplus(raw + dt_bias)) for `rows` rows of H (raw rows of stride `ldraw`).
    func delta(out: UnsafeMutablePointer<Float>, raw: UnsafePointer<Float>, ldraw: Int, bias: UnsafePointer<Float>,
               rows: Int) {
        // raw + dt_bias gathered into the contiguous (rows, H) first: a strided read of a few columns per row, which
        // waits on memory, split over the threads.
        Parallel.forRanges(rows, grain: 1024) { _, r0, r1 in
            for r in r0..<r1 { for h in 0..<self.H { out[r * self.H + h] = raw[r * ldraw + h] + bias[h] } }
        }
        // Then softplus and the clamp over the contiguous (rows, H), 16 lanes at a time.
        Self.softplusClamp(out, count: rows * H, lo: clamp.lo, hi: clamp.hi)
    }

    /// x ← min(max(softplus(x), lo), hi) in place. Not inlined, so that the vector code stays vector code.
    @inline(never)
    static func softplusClamp(_ x: UnsafeMutablePointer<Float>, count: Int, lo: Float, hi: Float) {
        let (lo, hi) = (F16x(repeating: lo), F16x(repeating: hi))
        @inline(__always) func one(_ i: Int, _ n: Int) {
            storeF16x(pointwiseMin(pointwiseMax(softplusSIMD(loadF16x(x + i, n)), lo), hi), x + i, n)
        }
        var i = 0
        while i + 16 <= count { one(i, 16); i += 16 }
        if i < count { one(i, count - i) }
    }

    /// d ← d · sigmoid(pre) where lo ≤ softplus(pre) ≤ hi, else 0 (the gradient through `softplusClamp`, PyTorch's
    /// clamp passing it at the bounds), in place. Not inlined, as `softplusClamp`.
    @inline(never)
    static func softplusClampBackward(_ d: UnsafeMutablePointer<Float>, pre: UnsafePointer<Float>, count: Int,
                                      lo: Float, hi: Float) {
        let (lo, hi) = (F16x(repeating: lo), F16x(repeating: hi))
        @inline(__always) func one(_ i: Int, _ n: Int) {
            let pv = loadF16x(pre + i, n)
            let sp = softplusSIMD(pv)
            let pass = (sp .>= lo) .& (sp .<= hi)
            storeF16x((loadF16x(d + i, n) * sigmoidSIMD(pv)).replacing(with: 0, where: .!pass), d + i, n)
        }
        var i = 0
        while i + 16 <= count { one(i, 16); i += 16 }
        if i < count { one(i, count - i) }
    }

    /// The gated RMSNorm over `rows` rows: g = y ⊙ SiLU(z) (z rows of stride `ldz`), then per group of ED/G channels
    /// out = w ⊙ g · rstd, rstd = 1/√(mean(g²) + eps), saved in `rstd (rows, G)` if given.
    func gatedNorm(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?, y: UnsafePointer<Float>,
                   z: UnsafePointer<Float>, ldz: Int, weight: UnsafePointer<Float>, rows: Int) {
        let gs = ED / G
        Parallel.forRanges(rows, grain: max(1, 4096 / max(ED, 1))) { _, lo, hi in
            for r in lo..<hi { self.gatedNormRow(out: out + r * self.ED, rstd: rstd.map { $0 + r * self.G }, y: y + r * self.ED,
                                                 z: z + r * ldz, weight: weight, groupSize: gs) }
        }
    }

    func gatedNormRow(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?, y: UnsafePointer<Float>,
                      z: UnsafePointer<Float>, weight: UnsafePointer<Float>, groupSize gs: Int) {
        for g in 0..<G {
            let c0 = g * gs
            let r = Self.gatedNormGroup(out: out + c0, y: y + c0, z: z + c0, weight: weight + c0, gs: gs, eps: eps)
            rstd?[g] = r
        }
    }

    /// One group of one row of the gated norm; returns its rstd. Not inlined, as `gatedNormGroupBackward`.
    @inline(never)
    static func gatedNormGroup(out: UnsafeMutablePointer<Float>, y: UnsafePointer<Float>, z: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, gs: Int, eps: Float) -> Float {
        var ss = F16x()
        @inline(__always) func first(_ c: Int, _ n: Int) {
            let zv = loadF16x(z + c, n)
            let v = loadF16x(y + c, n) * (zv / (1 + expSIMD(-zv)))
            storeF16x(v, out + c, n)
            ss = ss + v * v
        }
        var c = 0
        while c + 16 <= gs { first(c, 16); c += 16 }
        if c < gs { first(c, gs - c) }
        let r = 1 / (ss.sum() / Float(gs) + eps).squareRoot()
        @inline(__always) func second(_ c: Int, _ n: Int) {
            storeF16x(loadF16x(weight + c, n) * (loadF16x(out + c, n) * r), out + c, n)
        }
        c = 0
        while c + 16 <= gs { second(c, 16); c += 16 }
        if c < gs { second(c, gs - c) }
        return r
    }

    /// Backward of `gatedNorm` for rows lo..<hi: with u = y ⊙ SiLU(z), n = w ⊙ u·r per group,
    /// du = r·(w ⊙ dn) − u·r³·⟨w ⊙ dn, u⟩/gs;  dy = du ⊙ SiLU(z);  dz = du ⊙ y ⊙ SiLU′(z) (rows of stride `lddz`);
    /// dw (ED) += dn ⊙ u·r.
    func gatedNormBackward(dy: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>, lddz: Int,
                           dw: UnsafeMutablePointer<Float>, dn: UnsafePointer<Float>, y: UnsafePointer<Float>,
                           z: UnsafePointer<Float>, ldz: Int, rstd: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                           rows: Range<Int>) {
        let gs = ED / G
        for m in rows {
            for g in 0..<G {
                let c0 = g * gs
                Self.gatedNormGroupBackward(dy: dy + m * ED + c0, dz: dz + m * lddz + c0, dw: dw + c0,
                                            dn: dn + m * ED + c0, y: y + m * ED + c0, z: z + m * ldz + c0,
                                            r: rstd[m * G + g], weight: weight + c0, gs: gs)
            }
        }
    }

    /// One group of one row of `gatedNormBackward`. Not inlined: compiled on its own, its exponentials stay in
    /// vector registers (inlined into the row loop, LLVM scalarised part of them).
    @inline(never)
    static func gatedNormGroupBackward(dy: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>,
                                       dw: UnsafeMutablePointer<Float>, dn: UnsafePointer<Float>,
                                       y: UnsafePointer<Float>, z: UnsafePointer<Float>, r: Float,
                                       weight: UnsafePointer<Float>, gs: Int) {
        // First pass: ⟨w ⊙ dn, u⟩ and dw; 1 + e^−z is parked in dy for the second pass (one exp per element).
        var dot = F16x()
        @inline(__always) func first(_ c: Int, _ n: Int) {
            let zv = loadF16x(z + c, n)
            let den = 1 + expSIMD(-zv)
            storeF16x(den, dy + c, n)
            let u = loadF16x(y + c, n) * (zv / den)
            dot = dot + loadF16x(weight + c, n) * loadF16x(dn + c, n) * u
            storeF16x(loadF16x(dw + c, n) + loadF16x(dn + c, n) * (u * r), dw + c, n)
        }
        var c = 0
        while c + 16 <= gs { first(c, 16); c += 16 }
        if c < gs { first(c, gs - c) }
        let k = dot.sum() * r * r * r / Float(gs)
        @inline(__always) func second(_ c: Int, _ n: Int) {
            let zv = loadF16x(z + c, n), yv = loadF16x(y + c, n)
            let s = 1 / loadF16x(dy + c, n)
            let sl = zv * s
            let du = r * loadF16x(weight + c, n) * loadF16x(dn + c, n) - (yv * sl) * k
            storeF16x(du * sl, dy + c, n)
            storeF16x(du * yv * s * (1 + zv * (1 - s)), dz + c, n)
        }
        c = 0
        while c + 16 <= gs { second(c, 16); c += 16 }
        if c < gs { second(c, gs - c) }
    }

    // MARK: Forward and backward

    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, B: Int, L: Int, params p: Arena,
                        acts: BlockActivations, scratch: BlockScratch, state: BlockState?, training: Bool,
                        observe: ((UnsafePointer<Float>, Int) -> Void)?) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let st = state.map { unsafeDowncast($0, to: State.self) }
        let BL = B * L
        let A = w.A.ptr, al = p.ptr(aLog)
        for h in 0..<H { A[h] = -expf(al[h]) }
        // [z | xBC | dt] = in_proj(h)
        Linear.forward(out: a.zxbcdt.ptr, ldo: W, inp: inp, ldi: D, weight: p.ptr(inW), bias: inB.map { p.ptr($0) },
                       M: BL, I: D, O: W)
        // [x | B | C] = SiLU(conv1d(xBC))
        let xBC = a.zxbcdt.ptr + ED
        let ctx = st.map { UnsafePointer($0.conv.ptr) }
        if training {
            a.continued = st != nil
            if let st { a.context.ptr.update(from: st.conv.ptr, count: a.context.count) }
        }
        CausalConv1d.forward(out: a.convPre.ptr, x: xBC, ldx: W, weight: p.ptr(convW), bias: convB.map { p.ptr($0) },
                             context: ctx, B: B, L: L, ED: C, K: K, silu: a.xbc.ptr)
        if let st { CausalConv1d.nextContext(into: st.conv.ptr, x: xBC, ldx: W, context: ctx, B: B, L: L, ED: C, K: K) }
        // Δ
        delta(out: a.delta.ptr, raw: a.zxbcdt.ptr + ED + C, ldraw: W, bias: p.ptr(dtBias), rows: BL)
        observe?(a.delta.ptr, H)
        // y = SSD(x, Δ, A, B, C) + D·x
        let hs = st.map { $0.ssm.ptr }
        SSD.forward(y: a.y.ptr, ldy: ED, hOut: hs, x: a.xbc.ptr, ldx: C, dt: a.delta.ptr, lddt: H, A: A,
                    Bm: a.xbc.ptr + ED, Cm: a.xbc.ptr + ED + G * N, ldbc: C, D: p.ptr(dParam),
                    h0: hs.map { UnsafePointer($0) }, chunkStates: training ? a.chunkStates.ptr : nil, dims: dims(B, L),
                    scratch: w.ssd)
        // out = out_proj(norm(y ⊙ SiLU(z))); training keeps the normed output for out_proj's backward.
        let normed = training ? a.normed.ptr : w.normed.ptr
        gatedNorm(out: normed, rstd: a.rstd.ptr, y: a.y.ptr, z: a.zxbcdt.ptr, ldz: W, weight: p.ptr(normW), rows: BL)
        Linear.forward(out: out, ldo: D, inp: normed, ldi: ED, weight: p.ptr(outW), bias: outB.map { p.ptr($0) },
                       M: BL, I: ED, O: D)
    }

    public func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                         B: Int, L: Int, params p: Arena, grads g: Arena, acts: BlockActivations,
                         scratch: BlockScratch) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let BL = B * L
        let A = w.A.ptr, al = p.ptr(aLog)
        for h in 0..<H { A[h] = -expf(al[h]) }
        // out_proj, from the normed output forward kept.
        w.dnormed.zero()
        Linear.backward(dinp: w.dnormed.ptr, lddi: ED, dweight: g.ptr(outW), dbias: outB.map { g.ptr($0) }, dout: dout,
                        lddo: D, inp: a.normed.ptr, ldi: ED, weight: p.ptr(outW), M: BL, I: ED, O: D)
        // Gated norm; dnorm.weight sums over rows: one partial per thread, added in thread order. It writes the z
        // columns of dzxbcdt, the Δ loop below its dt columns and the conv backward its xBC columns: no memset.
        let grain = max(1, 4096 / max(ED, 1))
        let workers = Parallel.workers(for: BL, grain: grain)
        let parts = w.partials.floats(workers * ED)
        parts.update(repeating: 0, count: workers * ED)
        let (nw, y, zx, dn, dy, dz, rs) = (UnsafePointer(p.ptr(normW)), UnsafePointer(a.y.ptr), UnsafePointer(a.zxbcdt.ptr),
                                           UnsafePointer(w.dnormed.ptr), w.dy.ptr, w.dzxbcdt.ptr, UnsafePointer(a.rstd.ptr))
        Parallel.forRanges(BL, grain: grain) { wk, lo, hi in
            self.gatedNormBackward(dy: dy, dz: dz, lddz: W, dw: parts + wk * ED, dn: dn, y: y, z: zx, ldz: W, rstd: rs,
                                   weight: nw, rows: lo..<hi)
        }
        let dnw = g.ptr(normW)
        for wk in 0..<workers { for j in 0..<ED { dnw[j] += parts[wk * ED + j] } }
        // SSD
        w.dxbc.zero()
        w.ddelta.zero()
        w.dA.zero()
        SSD.backward(dx: w.dxbc.ptr, lddx: C, ddt: w.ddelta.ptr, ldddt: H, dA: w.dA.ptr, dBm: w.dxbc.ptr + ED,
                     dCm: w.dxbc.ptr + ED + G * N, lddbc: C, dD: g.ptr(dParam), dh0: nil, dy: dy, ldy: ED, dhOut: nil,
                     x: a.xbc.ptr, ldx: C, dt: a.delta.ptr, lddt: H, A: A, Bm: a.xbc.ptr + ED,
                     Cm: a.xbc.ptr + ED + G * N, ldbc: C, D: p.ptr(dParam), chunkStates: a.chunkStates.ptr,
                     dims: dims(B, L), scratch: w.ssd)
        // A = −exp(A_log) ⇒ ∂/∂A_log = ∂/∂A · A
        let gA = g.ptr(aLog)
        for h in 0..<H { gA[h] += w.dA.ptr[h] * A[h] }
        // Δ = clamp(softplus(pre)): the clamp passes the gradient where lo ≤ softplus(pre) ≤ hi (PyTorch's clamp).
        let (db, bias, raw, ddl) = (g.ptr(dtBias), p.ptr(dtBias), a.zxbcdt.ptr + ED + C, w.ddelta.ptr)
        let pre = w.partials.floats(BL * H)
        Parallel.forRanges(BL, grain: 1024) { _, r0, r1 in
            for m in r0..<r1 { for h in 0..<self.H { pre[m * self.H + h] = raw[m * self.W + h] + bias[h] } }
        }
        // ∂/∂pre = ∂/∂Δ · sigmoid(pre) where the clamp passes, in place over ddelta's contiguous (BL, H).
        Self.softplusClampBackward(ddl, pre: pre, count: BL * H, lo: clamp.lo, hi: clamp.hi)
        Parallel.forRanges(BL, grain: 1024) { _, r0, r1 in
            for m in r0..<r1 { for h in 0..<self.H { dz[m * self.W + self.ED + self.C + h] = ddl[m * self.H + h] } }
        }
        var dbAcc = [Double](repeating: 0, count: H)
        for m in 0..<BL { for h in 0..<H { dbAcc[h] += Double(ddl[m * H + h]) } }
        for h in 0..<H { db[h] += Float(dbAcc[h]) }
        // SiLU after the conv, and the conv, into xBC's columns of dzxbcdt (one pass).
        CausalConv1d.backward(dx: dz + ED, lddx: W, dweight: g.ptr(convW), dbias: convB.map { g.ptr($0) },
                              dout: w.dxbc.ptr, x: a.zxbcdt.ptr + ED, ldx: W, weight: p.ptr(convW), B: B, L: L,
                              ED: C, K: K, accumulate: false, siluPre: a.convPre.ptr,
                              context: a.continued ? UnsafePointer(a.context.ptr) : nil)
        // in_proj
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(inW), dbias: inB.map { g.ptr($0) }, dout: dz, lddo: W,
                        inp: inp, ldi: D, weight: p.ptr(inW), M: BL, I: D, O: W)
    }

    // MARK: Reference

    public func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>, B: Int, L: Int,
                                 params p: Arena) {
        let (inWp, cw, dtb, al, Dp, nw, ow) = (p.ptr(inW), p.ptr(convW), p.ptr(dtBias), p.ptr(aLog), p.ptr(dParam),
                                               p.ptr(normW), p.ptr(outW))
        let (ib, cb, ob) = (inB.map { p.ptr($0) }, convB.map { p.ptr($0) }, outB.map { p.ptr($0) })
        let hpg = H / G, gs = ED / G
        func sig(_ x: Double) -> Double { 1 / (1 + Foundation.exp(-x)) }
        for b in 0..<B {
            var hist = [[Double]](repeating: [Double](repeating: 0, count: C), count: K)
            var S = [Double](repeating: 0, count: H * P * N)
            for t in 0..<L {
                let row = b * L + t
                let zxbcdt = (0..<W).map { o -> Double in
                    var s = Double(ib?[o] ?? 0)
                    for i in 0..<D { s += Double(inWp[o * D + i]) * Double(inp[row * D + i]) }
                    return s
                }
                hist.removeFirst()
                hist.append(Array(zxbcdt[ED..<(ED + C)]))
                let xbc = (0..<C).map { ch -> Double in
                    var s = Double(cb?[ch] ?? 0)
                    for k in 0..<K { s += Double(cw[ch * K + k]) * hist[k][ch] }
                    return s * sig(s)
                }
                var yv = [Double](repeating: 0, count: ED)
                for h in 0..<H {
                    let pre = zxbcdt[ED + C + h] + Double(dtb[h])
                    var dt = pre > 20 ? pre : Foundation.log1p(Foundation.exp(pre))
                    dt = min(max(dt, Double(clamp.lo)), Double(clamp.hi))
                    let decay = Foundation.exp(dt * -Foundation.exp(Double(al[h])))
                    let g = h / hpg
                    for pp in 0..<P {
                        let xv = xbc[h * P + pp]
                        var acc = Double(Dp[h]) * xv
                        for n in 0..<N {
                            let i = (h * P + pp) * N + n
                            S[i] = decay * S[i] + dt * xv * xbc[ED + g * N + n]
                            acc += S[i] * xbc[ED + G * N + g * N + n]
                        }
                        yv[h * P + pp] = acc
                    }
                }
                var normed = [Double](repeating: 0, count: ED)
                for g in 0..<G {
                    var ss = 0.0
                    for j in (g * gs)..<((g + 1) * gs) {
                        let z = zxbcdt[j]
                        normed[j] = yv[j] * z * sig(z)
                        ss += normed[j] * normed[j]
                    }
                    let r = 1 / (ss / Double(gs) + Double(eps)).squareRoot()
                    for j in (g * gs)..<((g + 1) * gs) { normed[j] *= r * Double(nw[j]) }
                }
                for o in 0..<D {
                    var s = Double(ob?[o] ?? 0)
                    for i in 0..<ED { s += Double(ow[o * ED + i]) * normed[i] }
                    out[row * D + o] = s
                }
            }
        }
    }

    // MARK: Step

    public func makeStepper(params: Arena, batch: Int, weights: StepWeights) -> BlockStepper {
        Stepper(self, params: params, batch: batch, weights: weights)
    }

    /// One token per sequence: in_proj (`MatVec`); the conv with SiLU over 16-channel blocks; Δ; the SSD recurrence
    /// per (sequence, head) — S ← exp(Δ·A)·S + Δ·x ⊗ B, y = S·C + D·x, 16 state entries at a time; the gated norm per
    /// (sequence, group); out_proj. Each pass is split over the `SpinTeam`; A and the conv taps (transposed) are
    /// snapshotted when the stepper is made.
    final class Stepper: BlockStepper {
        let k: Mamba2Block
        let params: Arena
        /// A `(H)`, conv taps `(K, C)`.
        let A, convT: FloatBuffer
        /// Scratch rows: in_proj output `(B, W)`, [x | B | C] `(B, C)`, Δ `(B, H)`, y `(B, ED)`, normed `(B, ED)`.
        let zxbcdt, xbc, delta, y, normed: FloatBuffer
        let half: (inW: BF16Matrix, outW: BF16Matrix)?

        init(_ k: Mamba2Block, params p: Arena, batch: Int, weights: StepWeights) {
            self.k = k
            params = p
            A = FloatBuffer(count: k.H)
            for h in 0..<k.H { A.ptr[h] = -expf(p.ptr(k.aLog)[h]) }
            convT = FloatBuffer(count: k.K * k.C)
            let w = p.ptr(k.convW)
            for c in 0..<k.C { for j in 0..<k.K { convT.ptr[j * k.C + c] = w[c * k.K + j] } }
            zxbcdt = FloatBuffer(count: batch * k.W)
            xbc = FloatBuffer(count: batch * k.C)
            delta = FloatBuffer(count: batch * k.H)
            y = FloatBuffer(count: batch * k.ED)
            normed = FloatBuffer(count: batch * k.ED)
            half = weights == .bf16
                ? (BF16Matrix(p.ptr(k.inW), rows: k.W, cols: k.D), BF16Matrix(p.ptr(k.outW), rows: k.D, cols: k.ED)) : nil
        }

        var bytes: Int {
            [A, convT, zxbcdt, xbc, delta, y, normed].reduce(0) { $0 + $1.count } * 4
                + (half.map { $0.inW.bytes + $0.outW.bytes } ?? 0)
        }

        var projectionWeightBytes: Int { half.map { $0.inW.bytes + $0.outW.bytes } ?? k.projectionParameters * 4 }

        func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, state: BlockState, ctx: StepContext) {
            let st = unsafeDowncast(state, to: State.self)
            let p = params
            let B = ctx.batch, team = ctx.team
            let (D, H, P, G, N, K, ED, C, W) = (k.D, k.H, k.P, k.G, k.N, k.K, k.ED, k.C, k.W)
            ctx.project(zxbcdt.ptr, W, inp, D, p.ptr(k.inW), half?.inW, k.inB.map { p.ptr($0) }, I: D, O: W)
            // [x | B | C] = SiLU(conv1d(xBC)) from the K − 1 previous inputs in the state, which then shift by one.
            let blocks = (C + 15) / 16
            let (ctxAll, cw, cb) = (st.conv.ptr, UnsafePointer(convT.ptr), k.convB.map { UnsafePointer(p.ptr($0)) })
            let (zx, xo) = (UnsafePointer(zxbcdt.ptr), xbc.ptr)
            team.forRanges(B * blocks) { lo, hi in
                for item in lo..<hi {
                    let b = item / blocks, c0 = (item % blocks) * 16
                    let w = min(16, C - c0)
                    CausalConv1d.stepSiLU(out: xo + b * C, x: zx + b * W + ED, context: ctxAll + b * (K - 1) * C,
                                          tapsT: cw, bias: cb, C: C, K: K, c0: c0, w: w)
                }
            }
            k.delta(out: delta.ptr, raw: zxbcdt.ptr + ED + C, ldraw: W, bias: p.ptr(k.dtBias), rows: B)
            // The recurrence, per (sequence, head).
            let (xb, dl, Ap, Dp, S, yo) = (UnsafePointer(xbc.ptr), UnsafePointer(delta.ptr), UnsafePointer(A.ptr),
                                           UnsafePointer(p.ptr(k.dParam)), st.ssm.ptr, y.ptr)
            let hpg = H / G
            team.forRanges(B * H) { lo, hi in
                for item in lo..<hi {
                    let b = item / H, h = item % H, g = h / hpg
                    let dt = dl[b * H + h]
                    let decay = expf(dt * Ap[h])
                    let bp = xb + b * C + ED + g * N, cp = xb + b * C + ED + G * N + g * N
                    let xp = xb + b * C + h * P, yp = yo + b * ED + h * P
                    let s = S + item * P * N
                    for pp in 0..<P {
                        let u = dt * xp[pp]
                        let row = s + pp * N
                        var acc = F16x()
                        var n = 0
                        while n < N {
                            let w = min(16, N - n)
                            let v = loadF16x(row + n, w) * decay + u * loadF16x(bp + n, w)
                            storeF16x(v, row + n, w)
                            acc = acc + v * loadF16x(cp + n, w)
                            n += w
                        }
                        yp[pp] = acc.sum() + Dp[h] * xp[pp]
                    }
                }
            }
            // Gated norm per sequence, then out_proj.
            let (nw, nm, yq) = (UnsafePointer(p.ptr(k.normW)), normed.ptr, UnsafePointer(y.ptr))
            let gs = ED / G
            team.forRanges(B) { lo, hi in
                for b in lo..<hi {
                    self.k.gatedNormRow(out: nm + b * ED, rstd: nil, y: yq + b * ED, z: zx + b * W, weight: nw, groupSize: gs)
                }
            }
            ctx.project(out, D, normed.ptr, ED, p.ptr(k.outW), half?.outW, k.outB.map { p.ptr($0) }, I: ED, O: D)
        }
    }
}

import Foundation
