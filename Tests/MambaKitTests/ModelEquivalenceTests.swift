import Foundation
import MambaKit
import Testing

/// Small random models (V 32, D 16, 2 layers): tied head with N = 4, K = 3, R = 1; untied head with in/out_proj
/// biases, N = 4, K = 4, R = 3; one with K = 1; and a wider untied one (E = 3, N = 16). Their parameters are moved
/// away from the initialisation (zero biases, A_log = log n, D = 1, unit norms) so that every term contributes.
enum TinyModel: String, Sendable {
    case tied, untiedBias
    /// ED = 48, N = 16: three 16-channel scan blocks, enough work per block (with B·L ≥ 320) for the scan to use
    /// two threads, which split them unevenly.
    case wide
    /// K = 1: no conv state to carry.
    case pointConv
    /// ED = 24 (one full 16-channel block and a part block), N = 5, R = 2, biases: the step's tails.
    case ragged

    var config: MambaConfig {
        switch self {
        case .tied:
            return MambaConfig(vocabSize: 32, dModel: 16, layers: 2, dState: 4, dConv: 3, expand: 2)
        case .untiedBias:
            return MambaConfig(vocabSize: 32, dModel: 16, layers: 2, dState: 4, dConv: 4, expand: 2, dtRank: 3,
                               useBias: true, tie: false)
        case .pointConv:
            return MambaConfig(vocabSize: 32, dModel: 16, layers: 2, dState: 4, dConv: 1, expand: 2)
        case .ragged:
            return MambaConfig(vocabSize: 30, dModel: 12, layers: 2, dState: 5, dConv: 4, expand: 2, dtRank: 2,
                               useBias: true, tie: true)
        case .wide:
            return MambaConfig(vocabSize: 32, dModel: 16, layers: 2, dState: 16, dConv: 4, expand: 3, useBias: true,
                               tie: false)
        }
    }

    func make() throws -> MambaModel {
        let m = try MambaModel(config: config, seed: 7)
        var rng = RNG(seed: 99)
        for v in m.params.layout.views {
            // dt bias: Δ ≈ 0.05 … 1 instead of the init band 1e-3 … 1e-1, and larger B, C (x_proj), so that the
            // scan's parameters carry gradients comparable to the rest; A_log: distinct decay rates.
            var (shift, s) = (0.0, 0.08)
            if v.name.hasSuffix("dt_proj.bias") { (shift, s) = (3, 1) }
            if v.name.hasSuffix("A_log") { s = 0.3 }
            if v.name.hasSuffix("x_proj.weight") { s = 0.3 }
            let p = m.params.ptr(v)
            for i in 0..<v.count { p[i] += Float(shift + rng.normal() * s) }
        }
        return m
    }
}

/// Random token ids `(B, L)` below `V`.
func randomTokens(_ n: Int, V: Int, seed: UInt64) -> [Int32] {
    var rng = RNG(seed: seed)
    return (0..<n).map { _ in Int32(rng.int(below: V)) }
}

/// Next-token targets for `ids` `(B, L)`, the last position of each sequence ignored.
func nextTokenTargets(_ ids: [Int32], B: Int, L: Int) -> [Int32] {
    var t = [Int32](repeating: CrossEntropy.ignoreIndex, count: B * L)
    for b in 0..<B { for i in 0..<(L - 1) { t[b * L + i] = ids[b * L + i + 1] } }
    return t
}

extension MambaModel {
    /// Logits `(B, L, V)` of a fresh forward over `ids`.
    func logits(_ ids: [Int32], B: Int, L: Int, training: Bool = false) -> [Float] {
        let ws = Workspace(config: config, B: B, L: L, training: training)
        ids.withUnsafeBufferPointer { forward(ids: $0.baseAddress!, ws: ws) }
        return ws.logits.array
    }

    /// Mean cross-entropy of a forward over `ids`, in Double.
    func meanLoss(_ ids: [Int32], targets: [Int32], B: Int, L: Int) -> Double {
        let ws = Workspace(config: config, B: B, L: L, training: false)
        ids.withUnsafeBufferPointer { forward(ids: $0.baseAddress!, ws: ws) }
        let (sum, count) = targets.withUnsafeBufferPointer {
            CrossEntropy.forwardBackward(logits: ws.logits.ptr, targets: $0.baseAddress!, M: B * L, V: config.vocabSize,
                                         dlogits: nil, scale: 1)
        }
        return sum / Double(count)
    }

    /// Checks every tensor's gradient (after `gradients`, left in `grads`) against central differences of the mean
    /// loss: the largest entry and three drawn with `rng`. h = 1e-2 on parameters of size 0.1 … 3: the mean loss
    /// (≈ ln V from Float logits) carries ~1e-8 rounding, so the quotient has ~1e-6 absolute noise (measured ≤ 2e-6 on
    /// the small A_log / dt gradients); truncation h²·f‴ is ≤ 1e-4 relative. The largest gradients per tensor are
    /// 1e-4 … 2e-1: tolerance 5e-6 absolute plus 1 % relative. `loss`, if given, replaces the mean loss of a fresh
    /// forward (e.g. one from a carried state).
    func checkGradientsByFiniteDifferences(_ ids: [Int32], targets: [Int32], B: Int, L: Int, rng: inout RNG,
                                           loss: (() -> Double)? = nil,
                                           sourceLocation: SourceLocation = #_sourceLocation) {
        for v in params.layout.views {
            let g = grads.values(v.name)
            #expect(largestMagnitude(g) > 0, "\(v.name): zero gradient", sourceLocation: sourceLocation)
            var idx = [g.indices.max { abs(g[$0]) < abs(g[$1]) }!]
            for _ in 0..<3 { idx.append(rng.int(below: v.count)) }
            let p = params.ptr(v)
            var vals = params.values(v.name)
            checkGradient(v.name, &vals, analytic: g, indices: idx, h: 1e-2, atol: 5e-6, rtol: 1e-2,
                          sourceLocation: sourceLocation) { x in
                let saved = Array(UnsafeBufferPointer(start: p, count: v.count))
                x.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: v.count) }
                defer { saved.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: v.count) } }
                return loss?() ?? meanLoss(ids, targets: targets, B: B, L: L)
            }
        }
    }

    /// Generation of `ids` `(B, L)`: `Generator.prefill` of the first `k` tokens of each row, then one step per
    /// token; per sequence, the logits after tokens k−1 … L−1, and the same rows of one forward pass over the lot.
    func prefillThenSteps(_ ids: [Int32], B: Int, L: Int, k: Int) throws -> (got: [[Float]], want: [[Float]]) {
        let V = config.vocabSize
        let full = logits(ids, B: B, L: L)
        let gen = Generator(model: self, batch: B)
        let first = try gen.prefill((0..<B).map { b in Array(ids[(b * L)..<(b * L + k)]) })
        var got = [[Float]](repeating: [], count: B)
        for b in 0..<B { got[b] += first[(b * V)..<((b + 1) * V)] }
        for t in k..<L {
            let next = Array(gen.step((0..<B).map { ids[$0 * L + t] }))
            for b in 0..<B { got[b] += next[(b * V)..<((b + 1) * V)] }
        }
        return (got, (0..<B).map { b in Array(full[((b * L + k - 1) * V)..<((b + 1) * L * V)]) })
    }

    /// forward + backward on a training workspace into zeroed gradients; returns the logits and (Σ NLL, count).
    @discardableResult
    func gradients(_ ids: [Int32], targets: [Int32], B: Int, L: Int, lossScale: Float? = nil,
                   zero: Bool = true) -> (logits: [Float], sum: Double, count: Int) {
        if zero { zeroGradients() }
        let ws = Workspace(config: config, B: B, L: L, training: true)
        ids.withUnsafeBufferPointer { forward(ids: $0.baseAddress!, ws: ws) }
        let logits = ws.logits.array
        let (sum, count) = ids.withUnsafeBufferPointer { i in
            targets.withUnsafeBufferPointer { t in
                backward(ids: i.baseAddress!, targets: t.baseAddress!, ws: ws, lossScale: lossScale)
            }
        }
        return (logits, sum, count)
    }
}

/// Whole-model checks: the backward against finite differences of the mean loss, and the equivalences the model
/// promises — the recurrent step reproduces `forward`, chunked evaluation reproduces the whole, a padded batch
/// reproduces each sequence alone, and the thread count changes only rounding. Serialized: one test changes the
/// global thread count.
@Suite(.serialized) struct ModelEquivalenceTests {
    static let (B, L) = (2, 37)  // L > SelectiveScanSIMD.chunk: backward recomputes two chunks

    @Test(arguments: [TinyModel.tied, .untiedBias])
    func gradientsMatchFiniteDifferences(tiny: TinyModel) throws {
        let model = try tiny.make()
        let (B, L) = (Self.B, Self.L)
        let V = model.config.vocabSize
        let ids = randomTokens(B * L, V: V, seed: 5)
        var targets = nextTokenTargets(ids, B: B, L: L)
        for i in stride(from: 3, to: B * L, by: 7) { targets[i] = CrossEntropy.ignoreIndex }
        let (_, sum, count) = model.gradients(ids, targets: targets, B: B, L: L)
        let loss0 = model.meanLoss(ids, targets: targets, B: B, L: L)
        #expect(abs(sum / Double(count) - loss0) < 1e-6 * loss0, "backward's loss \(sum / Double(count)) vs \(loss0)")
        var rng = RNG(seed: 3)
        model.checkGradientsByFiniteDifferences(ids, targets: targets, B: B, L: L, rng: &rng)
    }

    @Test(arguments: [TinyModel.tied, .untiedBias, .pointConv, .ragged])
    func recurrentStepMatchesForward(tiny: TinyModel) throws {
        let model = try tiny.make()
        let (B, L, V) = (Self.B, Self.L, model.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 11)
        let full = model.logits(ids, B: B, L: L, training: true)
        let inference = model.logits(ids, B: B, L: L, training: false)
        let scale = largestMagnitude(full)
        // Training and inference workspaces run the same operations: within rounding (bit-identical in practice).
        expectClose("\(tiny) inference vs training workspace", inference, full, atol: 1e-6 * scale, rtol: 1e-6)
        // `forward` one token at a time from a carried state: one frozen workspace (A computed on the first step
        // only), batch rows side by side.
        let ws = Workspace(config: model.config, B: B, L: 1, training: false)
        ws.parametersFrozen = true
        let state = RecurrentState(config: model.config, batch: B)
        var stepped = [Float](repeating: 0, count: B * L * V)
        for t in 0..<L {
            let col = (0..<B).map { ids[$0 * L + t] }
            col.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: state) }
            for b in 0..<B { for v in 0..<V { stepped[(b * L + t) * V + v] = ws.logits[b * V + v] } }
        }
        // Same maths, sgemm over 2 rows instead of 74 and the state carried through memory: at most rounding
        // (~1e-7 relative through two layers; bit-identical on this toolchain and OpenBLAS).
        expectClose("\(tiny) chunks of 1 vs forward", stepped, full, atol: 1e-5 * scale, rtol: 1e-5)
        // Batch 1 (single-row products, MatVec): the second sequence alone.
        let ws1 = Workspace(config: model.config, B: 1, L: 1, training: false)
        let state1 = RecurrentState(config: model.config, batch: 1)
        var single = [Float](repeating: 0, count: L * V)
        for t in 0..<L {
            [ids[L + t]].withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws1, state: state1) }
            for v in 0..<V { single[t * V + v] = ws1.logits[v] }
        }
        expectClose("\(tiny) chunks of 1, batch 1, vs forward", single, Array(full[(L * V)...]), atol: 1e-5 * scale,
                    rtol: 1e-5)
        // Generation's fused step (`RecurrentStepper`, through `Generator`), at batch B and at batch 1 (the second
        // sequence alone). Its projections sum in another order than sgemm (MatVec), and dt_proj is summed
        // channel-wise: rounding only, ~1e-7 relative to the largest logit per layer.
        for batch in [B, 1] {
            let gen = Generator(model: model, batch: batch)
            let rows = batch == B ? Array(0..<B) : [1]
            var got = [Float](), want = [Float]()
            for t in 0..<L {
                let logits = gen.step(rows.map { ids[$0 * L + t] })
                for (i, b) in rows.enumerated() {
                    got += logits[(i * V)..<((i + 1) * V)]
                    want += full[((b * L + t) * V)..<((b * L + t + 1) * V)]
                }
            }
            expectClose("\(tiny) fused step, batch \(batch), vs forward", got, want, atol: 1e-5 * scale, rtol: 1e-5)
        }
        // Its thread team splits output rows and channel blocks statically: two threads give the bits of one.
        let (one, two) = (RecurrentStepper(model: model, batch: B, threads: 1),
                          RecurrentStepper(model: model, batch: B, threads: 2))
        let (stateOne, stateTwo) = (RecurrentState(config: model.config, batch: B),
                                    RecurrentState(config: model.config, batch: B))
        var sameBits = true
        for t in 0..<L {
            (0..<B).map { ids[$0 * L + t] }.withUnsafeBufferPointer {
                one.step(ids: $0.baseAddress!, state: stateOne)
                two.step(ids: $0.baseAddress!, state: stateTwo)
            }
            sameBits = sameBits && one.logits.array == two.logits.array
        }
        #expect(sameBits, "\(tiny): the stepper's logits depend on its thread count")
        // The stepper leaves the same state as forward: prefill from it and the two paths continue alike.
        let gen = Generator(model: model, batch: B)
        for t in 0..<L { _ = gen.step((0..<B).map { ids[$0 * L + t] }) }
        for l in 0..<model.config.numHiddenLayers {
            expectClose("\(tiny) layer \(l) conv state", gen.state.conv[l].array, state.conv[l].array, atol: 1e-6 * scale)
            expectClose("\(tiny) layer \(l) SSM state", gen.state.ssm[l].array, state.ssm[l].array, atol: 1e-5 * scale,
                        rtol: 1e-5)
        }
    }

    /// `.bf16` step weights: on a model whose projections already hold bfloat16 values the step is exact (the same
    /// logits as `.f32`, to rounding); on the model itself the logits move only by the weights' rounding.
    @Test(arguments: [TinyModel.untiedBias, .ragged])
    func bfloat16StepWeights(tiny: TinyModel) throws {
        let model = try tiny.make()
        let (B, L, V) = (Self.B, Self.L, model.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 13)
        func run(_ m: MambaModel, _ weights: StepWeights) -> [Float] {
            let gen = Generator(model: m, batch: B, weights: weights)
            var out = [Float]()
            for t in 0..<L { out += gen.step((0..<B).map { ids[$0 * L + t] }) }
            return out
        }
        let exact = run(model, .f32), half = run(model, .bf16)
        let scale = largestMagnitude(exact)
        let rounded = try tiny.make()
        for v in rounded.params.layout.views where ["in_proj.weight", "x_proj.weight", "out_proj.weight", "lm_head.weight",
                                                     "embeddings.weight"].contains(where: { v.name.hasSuffix($0) }) {
            // Tied models: the head is the embedding, which `.bf16` rounds too (as the head, not as the lookup).
            if v.name.hasSuffix("embeddings.weight") && !rounded.config.tieWordEmbeddings { continue }
            let p = rounded.params.ptr(v)
            for i in 0..<v.count { p[i] = BFloat16.float(BFloat16.bits(p[i])) }
        }
        if rounded.config.tieWordEmbeddings {
            // The lookup reads the unrounded embedding: compare with that model's head rounded only, which the
            // f32 path cannot express, so the exact check is for untied heads; tied ones get the loose check.
            expectClose("\(tiny) bf16 vs f32", half, exact, atol: 2e-2 * scale)
        } else {
            expectClose("\(tiny) bf16 vs f32 on bf16-valued weights", half, run(rounded, .f32), atol: 1e-5 * scale,
                        rtol: 1e-5)
        }
        // Rounding the weights (2⁻⁹ relative) moves the logits by ~1e-3 of their scale over two layers, not more.
        let drift = maxAbsDiff(half, exact)
        #expect(drift > 0 && drift < 1e-2 * scale, "\(tiny): bf16 weights moved the logits by \(drift) (scale \(scale))")
    }

    @Test(arguments: [TinyModel.tied, .untiedBias, .pointConv])
    func chunkedMatchesWhole(tiny: TinyModel) throws {
        let model = try tiny.make()
        let (B, L, V) = (Self.B, Self.L, model.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 12)
        let full = model.logits(ids, B: B, L: L)
        // Chunks of 1 and 2 are shorter than K − 1 (2, 3): the conv context must carry inputs across several chunks.
        let sizes = [1, 1, 2, 5, 13, 1, 3, 11]
        precondition(sizes.reduce(0, +) == L)
        let state = RecurrentState(config: model.config, batch: B)
        var chunked = [Float](repeating: 0, count: B * L * V)
        var t0 = 0
        for (i, n) in sizes.enumerated() {
            let ws = Workspace(config: model.config, B: B, L: n, training: i % 2 == 1)
            let chunk = (0..<B).flatMap { b in ids[(b * L + t0)..<(b * L + t0 + n)] }
            chunk.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: state) }
            for b in 0..<B {
                for t in 0..<n {
                    for v in 0..<V { chunked[(b * L + t0 + t) * V + v] = ws.logits[(b * n + t) * V + v] }
                }
            }
            t0 += n
        }
        let scale = largestMagnitude(full)
        expectClose("\(tiny) chunked vs whole", chunked, full, atol: 1e-5 * scale, rtol: 1e-5)
        // `lastOnly` gives the last position's logits in row b.
        let ws = Workspace(config: model.config, B: B, L: L, training: false)
        ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, lastOnly: true) }
        for b in 0..<B {
            let got = Array(ws.logits.array[(b * V)..<((b + 1) * V)])
            let want = Array(full[((b * L + L - 1) * V)..<((b * L + L) * V)])
            expectClose("\(tiny) lastOnly row \(b)", got, want, atol: 1e-6 * scale, rtol: 1e-6)
        }
    }

    @Test(arguments: [TinyModel.tied, .untiedBias])
    func paddedMatchesUnpadded(tiny: TinyModel) throws {
        let model = try tiny.make()
        let (L, V) = (Self.L, model.config.vocabSize)
        let Lb = 20
        let a = randomTokens(L, V: V, seed: 21)
        let b = randomTokens(Lb, V: V, seed: 22)
        let pad = randomTokens(L - Lb, V: V, seed: 23)  // arbitrary tokens after the end of b
        let batch = a + b + pad
        let both = model.logits(batch, B: 2, L: L)
        let alone = [model.logits(a, B: 1, L: L), model.logits(b, B: 1, L: Lb)]
        let scale = largestMagnitude(both)
        expectClose("\(tiny) padded row 0", Array(both[0..<(L * V)]), alone[0], atol: 1e-5 * scale, rtol: 1e-5)
        expectClose("\(tiny) padded row 1", Array(both[(L * V)..<((L + Lb) * V)]), alone[1], atol: 1e-5 * scale,
                    rtol: 1e-5)
        // Gradients: the padded batch with its padding ignored equals the two sequences' gradients summed
        // (loss scale 1, so both sides are gradients of the same Σ NLL).
        var targets = nextTokenTargets(batch, B: 2, L: L)
        for t in (Lb - 1)..<L { targets[L + t] = CrossEntropy.ignoreIndex }
        let padded = model.gradients(batch, targets: targets, B: 2, L: L, lossScale: 1)
        let gPadded = model.params.layout.views.map { model.grads.values($0.name) }
        let sa = model.gradients(a, targets: nextTokenTargets(a, B: 1, L: L), B: 1, L: L, lossScale: 1)
        let sb = model.gradients(b, targets: nextTokenTargets(b, B: 1, L: Lb), B: 1, L: Lb, lossScale: 1, zero: false)
        #expect(padded.count == sa.count + sb.count)
        #expect(abs(padded.sum - (sa.sum + sb.sum)) < 1e-5 * padded.sum, "Σ NLL \(padded.sum) vs \(sa.sum + sb.sum)")
        for (v, gp) in zip(model.params.layout.views, gPadded) {
            let gs = model.grads.values(v.name)
            // Float sums over B·L rows in another grouping: relative to the tensor's largest entry.
            expectClose("\(tiny) padded grad \(v.name)", gp, gs, atol: 1e-5 * largestMagnitude(gs), rtol: 1e-4)
        }
    }

    @Test func threadCountChangesOnlyRounding() throws {
        try withThreadSettingsLock { try threadCountChangesOnlyRoundingLocked() }
    }

    func threadCountChangesOnlyRoundingLocked() throws {
        let saved = Parallel.threads
        defer { Parallel.setThreads(saved) }
        let model = try TinyModel.wide.make()
        let (B, L) = (2, 160)  // the kernels split work over threads only above a minimum size
        let ids = randomTokens(B * L, V: model.config.vocabSize, seed: 31)
        let targets = nextTokenTargets(ids, B: B, L: L)
        func run() -> (logits: [Float], grads: [[Float]], loss: Double) {
            let r = model.gradients(ids, targets: targets, B: B, L: L)
            return (r.logits, model.params.layout.views.map { model.grads.values($0.name) }, r.sum)
        }
        Parallel.setThreads(1)
        let one = run()
        for t in [1, 2, 3] {
            Parallel.setThreads(t)
            let first = run(), second = run()
            // Same thread count: the same bits (static partitions, fixed reduction order).
            #expect(first.logits == second.logits && first.grads == second.grads && first.loss == second.loss,
                    "threads \(t): two runs differ")
            // Across thread counts only rounding changes: OpenBLAS splits some products differently (x_proj's, with
            // an odd output width, differs in the last bits), and the scan's dB, dC sum per-thread partials. Measured:
            // logits ≤ 3e-7 and gradients ≤ 7e-7 of each tensor's largest entry, Σ NLL 1.5e-9 relative.
            expectClose("threads \(t) logits", first.logits, one.logits, atol: 2e-6 * largestMagnitude(one.logits),
                        rtol: 1e-6)
            #expect(abs(first.loss - one.loss) < 1e-7 * one.loss, "threads \(t): Σ NLL \(first.loss) vs \(one.loss)")
            for (v, (g, g1)) in zip(model.params.layout.views, zip(first.grads, one.grads)) {
                expectClose("threads \(t) grad \(v.name)", g, g1, atol: 5e-6 * largestMagnitude(g1), rtol: 1e-5)
            }
        }
    }
}
