/// The MLP block of the Mamba-2 hybrids (arXiv 2406.07887; HF `NemotronHMLP`, layer type `mlp`, `-` in a pattern):
///
///     out = down_proj(relu(up_proj(h))²)
///
/// with optional biases (`mlp_bias`). Saved for backward: up_proj's output a `(BL, W)`; the activation relu(a)² is
/// recomputed. No recurrent state: each position is independent. Not decayed by AdamW: the biases.
public final class MLPBlock: Block {
    public let layer: Int
    public var kind: BlockKind { .mlp }
    /// D, W (the MLP width, HF `intermediate_size`).
    let D: Int, W: Int
    let upW: TensorView, upB: TensorView?, downW: TensorView, downB: TensorView?
    let initializerRange: Double

    init(config c: MambaConfig, layer: Int, layout lay: inout ArenaLayout) {
        self.layer = layer
        (D, W) = (c.hiddenSize, c.mlpWidth)
        let p = "backbone.layers.\(layer).mixer."
        upW = lay.add(p + "up_proj.weight", [W, D], decay: true)
        upB = c.mlpBias ? lay.add(p + "up_proj.bias", [W], decay: false) : nil
        downW = lay.add(p + "down_proj.weight", [D, W], decay: true)
        downB = c.mlpBias ? lay.add(p + "down_proj.bias", [D], decay: false) : nil
        initializerRange = c.initializerRange
    }

    public var shareKey: String { "mlp \(D) \(W)" }
    public var projectionParameters: Int { 2 * D * W }

    /// HF `NemotronHPreTrainedModel._init_weights`: both weights N(0, initializer_range), biases 0.
    public func initialize(_ params: Arena, rng: inout RNG) {
        for t in [upW, downW] { params.fillNormal(t, std: initializerRange, rng: &rng) }
    }

    final class Saved: BlockActivations {
        /// up_proj's output `(BL, W)`.
        let a: FloatBuffer
        init(count: Int) { a = FloatBuffer(count: count) }
        var floats: Int { a.count }
    }

    final class Work: BlockScratch {
        /// relu(a)² `(BL, W)`, and its gradient (training).
        let act, dAct: FloatBuffer
        init(BL: Int, W: Int, training: Bool) {
            act = FloatBuffer(count: BL * W)
            dAct = FloatBuffer(count: training ? BL * W : 0)
        }
        var floats: Int { act.count + dAct.count }
    }

    public func makeActivations(B: Int, L: Int, training: Bool) -> BlockActivations { Saved(count: B * L * W) }
    public func makeScratch(B: Int, L: Int, training: Bool) -> BlockScratch { Work(BL: B * L, W: W, training: training) }
    public func makeState(batch: Int) -> BlockState { NoState() }

    /// relu(x)², 16 lanes at a time (relu by integer masking of the sign, as FastMath does for lane selects).
    static func reluSquared(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, count: Int) {
        Activations.forEachVector(count) { i, n in
            let r = relu(loadF16x(a + i, n))
            storeF16x(r * r, out + i, n)
        }
    }

    @inline(__always) static func relu(_ x: F16x) -> F16x {
        let bits = unsafeBitCast(x, to: SIMD16<Int32>.self)
        return unsafeBitCast(bits & ~(bits &>> 31), to: F16x.self)
    }

    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, B: Int, L: Int, params p: Arena,
                        acts: BlockActivations, scratch: BlockScratch, state: BlockState?, training: Bool,
                        observe: ((UnsafePointer<Float>, Int) -> Void)?) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let BL = B * L
        Linear.forward(out: a.a.ptr, ldo: W, inp: inp, ldi: D, weight: p.ptr(upW), bias: upB.map { p.ptr($0) },
                       M: BL, I: D, O: W)
        Self.reluSquared(w.act.ptr, a.a.ptr, count: BL * W)
        Linear.forward(out: out, ldo: D, inp: w.act.ptr, ldi: W, weight: p.ptr(downW), bias: downB.map { p.ptr($0) },
                       M: BL, I: W, O: D)
    }

    public func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                         B: Int, L: Int, params p: Arena, grads g: Arena, acts: BlockActivations,
                         scratch: BlockScratch) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let BL = B * L
        Self.reluSquared(w.act.ptr, a.a.ptr, count: BL * W)
        w.dAct.zero()
        Linear.backward(dinp: w.dAct.ptr, lddi: W, dweight: g.ptr(downW), dbias: downB.map { g.ptr($0) },
                        dout: dout, lddo: D, inp: w.act.ptr, ldi: W, weight: p.ptr(downW), M: BL, I: W, O: D)
        // d relu(a)²/da = 2·relu(a), in place.
        let (da, av) = (w.dAct.ptr, UnsafePointer(a.a.ptr))
        Activations.forEachVector(BL * W) { i, n in
            storeF16x(loadF16x(da + i, n) * 2 * Self.relu(loadF16x(av + i, n)), da + i, n)
        }
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(upW), dbias: upB.map { g.ptr($0) }, dout: da, lddo: W,
                        inp: inp, ldi: D, weight: p.ptr(upW), M: BL, I: D, O: W)
    }

    public func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>, B: Int, L: Int,
                                 params p: Arena) {
        let (uw, dw) = (p.ptr(upW), p.ptr(downW))
        let (ub, db) = (upB.map { p.ptr($0) }, downB.map { p.ptr($0) })
        var act = [Double](repeating: 0, count: W)
        for row in 0..<(B * L) {
            for o in 0..<W {
                var s = Double(ub?[o] ?? 0)
                for i in 0..<D { s += Double(uw[o * D + i]) * Double(inp[row * D + i]) }
                act[o] = s > 0 ? s * s : 0
            }
            for o in 0..<D {
                var s = Double(db?[o] ?? 0)
                for i in 0..<W { s += Double(dw[o * W + i]) * act[i] }
                out[row * D + o] = s
            }
        }
    }

    public func makeStepper(params: Arena, batch: Int, weights: StepWeights) -> BlockStepper {
        Stepper(self, params: params, batch: batch, weights: weights)
    }

    /// The step is the forward of one row per sequence: two `MatVec` projections and relu² between them.
    final class Stepper: BlockStepper {
        let blk: MLPBlock
        let params: Arena
        let act: FloatBuffer
        let half: (up: BF16Matrix, down: BF16Matrix)?

        init(_ blk: MLPBlock, params p: Arena, batch: Int, weights: StepWeights) {
            self.blk = blk
            params = p
            act = FloatBuffer(count: batch * blk.W)
            half = weights == .bf16
                ? (BF16Matrix(p.ptr(blk.upW), rows: blk.W, cols: blk.D), BF16Matrix(p.ptr(blk.downW), rows: blk.D, cols: blk.W))
                : nil
        }

        var bytes: Int { act.count * 4 + (half.map { $0.up.bytes + $0.down.bytes } ?? 0) }
        var projectionWeightBytes: Int { half.map { $0.up.bytes + $0.down.bytes } ?? blk.projectionParameters * 4 }

        func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, state: BlockState, ctx: StepContext) {
            let p = params, b = blk
            let count = ctx.batch * b.W
            ctx.project(act.ptr, b.W, inp, b.D, p.ptr(b.upW), half?.up, b.upB.map { p.ptr($0) }, I: b.D, O: b.W)
            let a = act.ptr
            var i = 0
            while i < count {
                let n = min(16, count - i)
                let r = MLPBlock.relu(loadF16x(a + i, n))
                storeF16x(r * r, a + i, n)
                i += n
            }
            ctx.project(out, b.D, act.ptr, b.W, p.ptr(b.downW), half?.down, b.downB.map { p.ptr($0) }, I: b.W, O: b.D)
        }
    }
}

/// The state of a block that carries nothing from one token to the next.
final class NoState: BlockState {
    func reset() {}
    var bytes: Int { 0 }
}
