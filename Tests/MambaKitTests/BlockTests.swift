import Foundation
import MambaKit
import Testing

/// The contract every block kind keeps, checked on each block of small perturbed stacks (a new kind adds a case to
/// `BlockStack`): the fast `forward` equals the plain `forwardReference`; `backward` equals central finite
/// differences of the reference for the input and every parameter tensor; `step`, token after token from a zero
/// state, equals the reference; running [0, L1) then [L1, L) with the state carried equals running [0, L) at once.
enum BlockStack: String, CaseIterable, Sendable {
    /// Mamba-1 with conv bias and in/out_proj biases, ED = 24 (a part 16-channel block), N = 5, R = 2.
    case mamba1
    /// Mamba-2 with H = 4 heads of P = 6, G = 2 groups, N = 5, K = 3, chunk 4 (L is never a multiple of it),
    /// biases, and a Δ clamp [0.2, 3] that binds on some steps.
    case mamba2
    /// A nemotron_h stack `M*-`: Mamba-2 (H 4, P 4, G 1, N 16, chunk 8), attention with 4 heads of Dh = 5 over 2 KV
    /// heads, and a relu² MLP of width 20 with biases.
    case hybrid

    var config: MambaConfig {
        switch self {
        case .mamba1:
            return MambaConfig(vocabSize: 16, dModel: 12, layers: 1, dState: 5, dConv: 4, expand: 2, dtRank: 2,
                               useBias: true, tie: true)
        case .mamba2:
            var c = MambaConfig()
            c.modelType = .mamba2
            c.vocabSize = 16
            c.hiddenSize = 12
            c.layerKinds = [.mamba2]
            (c.ssmHeads, c.ssmHeadDim, c.nGroups, c.stateSize, c.convKernel, c.chunkSize) = (4, 6, 2, 5, 3, 4)
            c.useBias = true
            c.timeStepLimit = [0.2, 3]
            return c
        case .hybrid:
            var c = MambaConfig()
            c.modelType = .nemotronH
            c.vocabSize = 16
            c.hiddenSize = 12
            c.layerKinds = [.mamba2, .attention, .mlp]
            (c.ssmHeads, c.ssmHeadDim, c.nGroups, c.stateSize, c.convKernel, c.chunkSize) = (4, 4, 1, 16, 4, 8)
            (c.attentionHeads, c.kvHeads, c.attentionHeadDim) = (4, 2, 5)
            (c.mlpWidth, c.mlpBias) = (20, true)
            c.tieWordEmbeddings = false
            return c
        }
    }

    /// A model whose parameters are moved off the initialisation so that every term contributes (as `TinyModel`).
    func make() throws -> MambaModel {
        let m = try MambaModel(config: config, seed: 3)
        var rng = RNG(seed: 41)
        for v in m.params.layout.views {
            var (shift, s) = (0.0, 0.1)
            if v.name.hasSuffix("dt_proj.bias") || v.name.hasSuffix("dt_bias") { (shift, s) = (2, 0.5) }
            if v.name.hasSuffix("A_log") || v.name.hasSuffix("x_proj.weight") { s = 0.3 }
            if v.name.hasSuffix("proj.weight") && m.config.modelType == .nemotronH { s = 0.3 }
            let p = m.params.ptr(v)
            for i in 0..<v.count { p[i] += Float(shift + rng.normal() * s) }
        }
        return m
    }
}

@Suite struct BlockTests {
    /// Runs `block.forward` on a fresh training or inference workspace of its own.
    static func forward(_ m: MambaModel, _ l: Int, _ x: [Float], B: Int, L: Int, training: Bool = false,
                        state: BlockState? = nil) -> [Float] {
        let blk = m.blocks[l]
        let D = m.config.hiddenSize
        let out = FloatBuffer(count: B * L * D), inp = FloatBuffer(x)
        blk.forward(out: out.ptr, inp: inp.ptr, B: B, L: L, params: m.params,
                    acts: blk.makeActivations(B: B, L: L, training: training),
                    scratch: blk.makeScratch(B: B, L: L, training: training), state: state, training: training,
                    observe: nil)
        return out.array
    }

    static func referenceDouble(_ m: MambaModel, _ l: Int, _ x: [Float], B: Int, L: Int) -> [Double] {
        var out = [Double](repeating: 0, count: B * L * m.config.hiddenSize)
        let inp = FloatBuffer(x)
        out.withUnsafeMutableBufferPointer {
            m.blocks[l].forwardReference(out: $0.baseAddress!, inp: inp.ptr, B: B, L: L, params: m.params)
        }
        return out
    }

    static func reference(_ m: MambaModel, _ l: Int, _ x: [Float], B: Int, L: Int) -> [Float] {
        referenceDouble(m, l, x, B: B, L: L).map { Float($0) }
    }

    @Test(arguments: BlockStack.allCases)
    func forwardMatchesReference(stack: BlockStack) throws {
        let m = try stack.make()
        let (B, L, D) = (2, 19, m.config.hiddenSize)
        let x = randomFloats(B * L * D, seed: 5)
        for l in m.blocks.indices {
            let want = Self.reference(m, l, x, B: B, L: L)
            let scale = largestMagnitude(want)
            for training in [false, true] {
                expectClose("\(stack) layer \(l) training \(training)", Self.forward(m, l, x, B: B, L: L, training: training),
                            want, atol: 2e-5 * max(scale, 1))
            }
        }
    }

    @Test(arguments: BlockStack.allCases)
    func stepMatchesReference(stack: BlockStack) throws {
        let m = try stack.make()
        let (B, L, D) = (2, 11, m.config.hiddenSize)
        let x = randomFloats(B * L * D, seed: 6)
        for (l, blk) in m.blocks.enumerated() {
            let want = Self.reference(m, l, x, B: B, L: L)
            let state = blk.makeState(batch: B)
            let stepper = blk.makeStepper(params: m.params, batch: B, weights: .f32)
            let ctx = StepContext(threads: 1, batch: B)
            var got = [Float](repeating: 0, count: B * L * D)
            let inp = FloatBuffer(count: B * D), out = FloatBuffer(count: B * D)
            for t in 0..<L {
                for b in 0..<B { for j in 0..<D { inp[b * D + j] = x[(b * L + t) * D + j] } }
                stepper.step(out: out.ptr, inp: inp.ptr, state: state, ctx: ctx)
                for b in 0..<B { for j in 0..<D { got[(b * L + t) * D + j] = out[b * D + j] } }
            }
            expectClose("\(stack) layer \(l) step", got, want, atol: 2e-5 * max(largestMagnitude(want), 1))
        }
    }

    @Test(arguments: BlockStack.allCases)
    func chunkedMatchesWhole(stack: BlockStack) throws {
        let m = try stack.make()
        let (B, L, D) = (2, 23, m.config.hiddenSize)
        let x = randomFloats(B * L * D, seed: 7)
        for (l, blk) in m.blocks.enumerated() {
            let whole = Self.forward(m, l, x, B: B, L: L)
            let state = blk.makeState(batch: B)
            var got = [Float](repeating: 0, count: B * L * D)
            var t0 = 0
            for n in [1, 9, 13] {
                var part = [Float](repeating: 0, count: B * n * D)
                for b in 0..<B { for t in 0..<n { for j in 0..<D { part[(b * n + t) * D + j] = x[(b * L + t0 + t) * D + j] } } }
                let y = Self.forward(m, l, part, B: B, L: n, state: state)
                for b in 0..<B { for t in 0..<n { for j in 0..<D { got[(b * L + t0 + t) * D + j] = y[(b * n + t) * D + j] } } }
                t0 += n
            }
            expectClose("\(stack) layer \(l) chunked", got, whole, atol: 1e-5 * max(largestMagnitude(whole), 1))
        }
    }

    /// Central differences of Σ w ⊙ reference(x) (in Double throughout, so the quotient is not rounding noise)
    /// against `backward`, for the input and a sample of every tensor; each tensor's tolerance is relative to its
    /// largest gradient, so tensors with small gradients (A_log, dt) are checked as closely as the rest.
    @Test(arguments: BlockStack.allCases)
    func backwardMatchesFiniteDifferences(stack: BlockStack) throws {
        let m = try stack.make()
        let (B, L, D) = (2, 7, m.config.hiddenSize)
        var x = randomFloats(B * L * D, seed: 8)
        let w = randomFloats(B * L * D, seed: 9)
        func loss(_ xs: [Float], _ l: Int) -> Double {
            let y = Self.referenceDouble(m, l, xs, B: B, L: L)
            return zip(y, w).reduce(0) { $0 + $1.0 * Double($1.1) }
        }
        for (l, blk) in m.blocks.enumerated() {
            m.zeroGradients()
            let acts = blk.makeActivations(B: B, L: L, training: true)
            let scratch = blk.makeScratch(B: B, L: L, training: true)
            let out = FloatBuffer(count: B * L * D), inp = FloatBuffer(x), dout = FloatBuffer(w)
            let dinp = FloatBuffer(count: B * L * D)
            blk.forward(out: out.ptr, inp: inp.ptr, B: B, L: L, params: m.params, acts: acts, scratch: scratch,
                        state: nil, training: true, observe: nil)
            blk.backward(dinp: dinp.ptr, dout: dout.ptr, inp: inp.ptr, B: B, L: L, params: m.params, grads: m.grads,
                         acts: acts, scratch: scratch)
            let dx = dinp.array
            checkGradient("\(stack) layer \(l) input", &x, analytic: dx,
                          indices: sampleIndices(Array(x.indices), count: 12, analytic: dx, seed: 1), h: 1e-3,
                          atol: 1e-4 * Double(largestMagnitude(dx)), rtol: 1e-3) { loss($0, l) }
            for v in m.params.layout.views where v.name.hasPrefix("backbone.layers.\(l).mixer.") {
                let analytic = m.grads.values(v.name)
                var values = m.params.values(v.name)
                checkGradient("\(stack) layer \(l) \(v.name)", &values, analytic: analytic,
                              indices: sampleIndices(Array(values.indices), count: 6, analytic: analytic, seed: 2),
                              h: 1e-3, atol: 1e-4 * Double(largestMagnitude(analytic)), rtol: 1e-3) { vals in
                    m.params.set(v.name, vals)
                    return loss(x, l)
                }
                m.params.set(v.name, values)
            }
        }
    }

    /// Backward accumulates: a second call adds the same gradients again.
    @Test(arguments: BlockStack.allCases)
    func backwardAccumulates(stack: BlockStack) throws {
        let m = try stack.make()
        let (B, L, D) = (1, 9, m.config.hiddenSize)
        let x = FloatBuffer(randomFloats(B * L * D, seed: 10)), dout = FloatBuffer(randomFloats(B * L * D, seed: 11))
        for blk in m.blocks {
            m.zeroGradients()
            let acts = blk.makeActivations(B: B, L: L, training: true)
            let scratch = blk.makeScratch(B: B, L: L, training: true)
            let out = FloatBuffer(count: B * L * D), d1 = FloatBuffer(count: B * L * D)
            blk.forward(out: out.ptr, inp: x.ptr, B: B, L: L, params: m.params, acts: acts, scratch: scratch,
                        state: nil, training: true, observe: nil)
            blk.backward(dinp: d1.ptr, dout: dout.ptr, inp: x.ptr, B: B, L: L, params: m.params, grads: m.grads,
                         acts: acts, scratch: scratch)
            let (once, gOnce) = (d1.array, m.grads.buffer.array)
            blk.backward(dinp: d1.ptr, dout: dout.ptr, inp: x.ptr, B: B, L: L, params: m.params, grads: m.grads,
                         acts: acts, scratch: scratch)
            expectClose("\(stack) dinp twice", d1.array, once.map { 2 * $0 }, atol: 1e-6 * max(largestMagnitude(once), 1))
            expectClose("\(stack) grads twice", m.grads.buffer.array, gOnce.map { 2 * $0 },
                        atol: 1e-6 * max(largestMagnitude(gOnce), 1))
        }
    }

    // MARK: The same stacks as whole models

    /// A right-padded batch gives each sequence its own logits and, with the padding ignored, its own gradients.
    @Test(arguments: BlockStack.allCases)
    func paddedMatchesPerSequence(stack: BlockStack) throws {
        let model = try stack.make()
        let (L, Lb, V) = (21, 13, model.config.vocabSize)
        let a = randomTokens(L, V: V, seed: 21), b = randomTokens(Lb, V: V, seed: 22)
        let batch = a + b + randomTokens(L - Lb, V: V, seed: 23)
        let both = model.logits(batch, B: 2, L: L)
        let scale = largestMagnitude(both)
        expectClose("\(stack) padded row 0", Array(both[0..<(L * V)]), model.logits(a, B: 1, L: L), atol: 1e-5 * scale)
        expectClose("\(stack) padded row 1", Array(both[(L * V)..<((L + Lb) * V)]), model.logits(b, B: 1, L: Lb),
                    atol: 1e-5 * scale)
        var targets = nextTokenTargets(batch, B: 2, L: L)
        for t in (Lb - 1)..<L { targets[L + t] = CrossEntropy.ignoreIndex }
        let padded = model.gradients(batch, targets: targets, B: 2, L: L, lossScale: 1)
        let gPadded = model.params.layout.views.map { model.grads.values($0.name) }
        let sa = model.gradients(a, targets: nextTokenTargets(a, B: 1, L: L), B: 1, L: L, lossScale: 1)
        let sb = model.gradients(b, targets: nextTokenTargets(b, B: 1, L: Lb), B: 1, L: Lb, lossScale: 1, zero: false)
        #expect(abs(padded.sum - (sa.sum + sb.sum)) < 1e-5 * padded.sum)
        for (v, gp) in zip(model.params.layout.views, gPadded) {
            let gs = model.grads.values(v.name)
            expectClose("\(stack) padded grad \(v.name)", gp, gs, atol: 1e-5 * largestMagnitude(gs), rtol: 1e-4)
        }
    }

    /// Prefill of a prompt, then one recurrent step per token, gives the logits of one forward pass over the lot.
    @Test(arguments: BlockStack.allCases)
    func generationStepsMatchForward(stack: BlockStack) throws {
        let model = try stack.make()
        let (B, L, V) = (2, 17, model.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 24)
        let (got, want) = try model.prefillThenSteps(ids, B: B, L: L, k: 5)
        for b in 0..<B {
            expectClose("\(stack) sequence \(b) steps", got[b], want[b], atol: 2e-5 * max(largestMagnitude(want[b]), 1))
        }
    }

    /// Thread counts change only rounding, and a given count gives the same bits twice, for every kind.
    @Test func threadCountChangesOnlyRoundingInEveryKind() throws {
        try withThreadSettingsLock {
            let saved = Parallel.threads
            defer { Parallel.setThreads(saved) }
            for stack in [BlockStack.mamba2, .hybrid] {
                let model = try stack.make()
                let (B, L) = (2, 160)
                let ids = randomTokens(B * L, V: model.config.vocabSize, seed: 31)
                let targets = nextTokenTargets(ids, B: B, L: L)
                func run() -> (logits: [Float], grads: [[Float]]) {
                    let r = model.gradients(ids, targets: targets, B: B, L: L)
                    return (r.logits, model.params.layout.views.map { model.grads.values($0.name) })
                }
                Parallel.setThreads(1)
                let one = run()
                for t in [2, 3] {
                    Parallel.setThreads(t)
                    let first = run(), second = run()
                    #expect(first.logits == second.logits && first.grads == second.grads, "\(stack) threads \(t): two runs differ")
                    expectClose("\(stack) threads \(t) logits", first.logits, one.logits,
                                atol: 2e-6 * largestMagnitude(one.logits), rtol: 1e-6)
                    for (v, (g, g1)) in zip(model.params.layout.views, zip(first.grads, one.grads)) {
                        expectClose("\(stack) threads \(t) grad \(v.name)", g, g1, atol: 5e-6 * largestMagnitude(g1), rtol: 1e-5)
                    }
                }
            }
        }
    }
}
