import Foundation
import Testing
import MambaKit

/// The multi-scale backbone (`Model/UNet.swift`) as a whole model: its forward against the plain Double reference
/// built from the blocks' and pools' references, its backward against finite differences of the loss, and the
/// equivalences the rest of the toolkit relies on — causality, padded lengths, chunked evaluation with the state
/// carried, the recurrent step (each stage stepping once every p_0⋯p_{k−1} tokens) and prefill, and the checkpoint
/// round trip.
@Suite struct UNetTests {
    /// Two poolings of unequal factors (P = 6), widths 8 → 16 → 32, uneven blocks per stage, untied head.
    static func config(tie: Bool = false) -> MambaConfig {
        var c = MambaConfig(vocabSize: 20, dModel: 8, layers: 4, dState: 4, dConv: 3, expand: 2, tie: tie)
        c.modelType = .sashimi
        c.pooling = [2, 3]
        c.poolExpand = 2
        c.stageLayers = [2, 1, 1]
        return c
    }

    static func model(tie: Bool = false) throws -> MambaModel {
        let m = try MambaModel(config: config(tie: tie), seed: 3)
        // Random norms and pool biases, so the checks see every tensor act.
        var rng = RNG(seed: 5)
        for v in m.params.layout.views where v.name.hasSuffix("norm.weight") || v.name.hasSuffix("norm_f.weight") {
            let p = m.params.ptr(v)
            for i in 0..<v.count { p[i] = Float(1 + 0.3 * rng.normal()) }
        }
        return m
    }

    @Test func layoutAndPlan() throws {
        let m = try Self.model()
        let plan = try #require(m.unet)
        #expect(plan.widths == [8, 16, 32])
        #expect(plan.periods == [1, 2, 6])
        #expect(plan.first == [2, 1, 0])
        #expect(plan.stageOf == [2, 1, 0, 0])
        let names = Set(m.params.layout.views.map(\.name))
        for n in ["backbone.down_pools.0.weight", "backbone.down_pools.1.bias", "backbone.up_pools.0.weight",
                  "backbone.up_pools.1.bias", "backbone.layers.0.mixer.in_proj.weight", "lm_head.weight"] {
            #expect(names.contains(n), "missing \(n)")
        }
        #expect(m.params.layout.view("backbone.down_pools.0.weight")!.shape == [16, 16])
        #expect(m.params.layout.view("backbone.up_pools.1.weight")!.shape == [48, 32])
        // The centre's block (layer 0) is 32 wide with d_inner 16·2² = 64 and dt_rank ⌈8/16⌉·2² = 4.
        #expect(m.params.layout.view("backbone.layers.0.mixer.in_proj.weight")!.shape == [128, 32])
        #expect(m.params.layout.view("backbone.layers.0.mixer.dt_proj.weight")!.shape == [64, 4])
        #expect(m.params.layout.view("backbone.layers.3.norm.weight")!.shape == [8])
        // Decay flags are the tensors' own: pool weights decay, their biases do not.
        #expect(m.params.layout.view("backbone.down_pools.0.weight")!.decay)
        #expect(!m.params.layout.view("backbone.up_pools.0.bias")!.decay)
    }

    /// forward's hidden states against the Double reference, at lengths that are and are not multiples of P.
    @Test(arguments: [12, 13, 5])
    func forwardMatchesReference(L: Int) throws {
        let m = try Self.model()
        let B = 2, D = m.config.hiddenSize
        let ids = randomTokens(B * L, V: m.config.vocabSize, seed: UInt64(L))
        let ws = Workspace(config: m.config, B: B, L: L, training: false, lmHead: false)
        ids.withUnsafeBufferPointer { m.forwardBackbone(ids: $0.baseAddress!, ws: ws) }
        let got = Array(UnsafeBufferPointer(start: ws.hidden, count: B * L * D))
        let want = m.backboneReference(ids: ids, B: B, L: L).map(Float.init)
        // Float against Double through four blocks and three projections of normed (O(1)) rows: ~1e-6.
        expectClose("L \(L) hidden", got, want, atol: 2e-5, rtol: 1e-4)
        // The training workspace runs the same operations.
        let wt = Workspace(config: m.config, B: B, L: L, training: true, lmHead: false)
        ids.withUnsafeBufferPointer { m.forwardBackbone(ids: $0.baseAddress!, ws: wt) }
        expectClose("L \(L) training workspace", Array(UnsafeBufferPointer(start: wt.hidden, count: B * L * D)), got,
                    atol: 1e-6, rtol: 1e-6)
    }

    /// Output t depends on tokens 0…t only: changing token s leaves every earlier output as it was, bit for bit.
    @Test func causal() throws {
        let m = try Self.model()
        let L = 18, V = m.config.vocabSize
        let ids = randomTokens(L, V: V, seed: 9)
        let base = m.logits(ids, B: 1, L: L)
        for s in [0, 5, 6, 11, 17] {
            var changed = ids
            changed[s] = (changed[s] + 1) % Int32(V)
            let other = m.logits(changed, B: 1, L: L)
            #expect(Array(other[0..<(s * V)]) == Array(base[0..<(s * V)]), "token \(s) reached an earlier output")
            #expect(Array(other[(s * V)..<((s + 1) * V)]) != Array(base[(s * V)..<((s + 1) * V)]),
                    "token \(s) did not reach its own output")
        }
    }

    /// The backward of the mean loss against central differences, for every tensor (the largest entry and three
    /// random ones), on a length that is not a multiple of P (the padding must contribute nothing).
    @Test(arguments: [false, true])
    func gradientsMatchFiniteDifferences(tie: Bool) throws {
        let m = try Self.model(tie: tie)
        let (B, L, V) = (2, 17, m.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 4)
        var targets = nextTokenTargets(ids, B: B, L: L)
        for i in stride(from: 2, to: B * L, by: 5) { targets[i] = CrossEntropy.ignoreIndex }
        let (_, sum, count) = m.gradients(ids, targets: targets, B: B, L: L)
        let loss0 = m.meanLoss(ids, targets: targets, B: B, L: L)
        #expect(abs(sum / Double(count) - loss0) < 1e-6 * loss0)
        // The tolerances of ModelEquivalenceTests (the helper explains them).
        var rng = RNG(seed: 8)
        m.checkGradientsByFiniteDifferences(ids, targets: targets, B: B, L: L, rng: &rng)
    }

    /// A right-padded batch gives each sequence its own hidden states.
    @Test func paddedBatchMatchesEachSequence() throws {
        let m = try Self.model()
        let V = m.config.vocabSize
        let a = randomTokens(14, V: V, seed: 1), b = randomTokens(9, V: V, seed: 2)
        let both = m.logits(a + b + [Int32](repeating: 0, count: 5), B: 2, L: 14)
        expectClose("row 0", Array(both[0..<(14 * V)]), m.logits(a, B: 1, L: 14), atol: 1e-5)
        expectClose("row 1", Array(both[(14 * V)..<((14 + 9) * V)]), m.logits(b, B: 1, L: 9), atol: 1e-5)
    }

    /// Evaluation in chunks (multiples of P, the state carried, the last chunk any length) gives the whole.
    @Test func chunkedEvaluationMatchesWhole() throws {
        let m = try Self.model()
        let L = 41, V = m.config.vocabSize
        let ids = randomTokens(L, V: V, seed: 12)
        let whole = try Evaluator.nll(model: m, tokens: ids, chunk: 4096)
        for chunk in [6, 7, 13, 18] {
            let r = try Evaluator.nll(model: m, tokens: ids, chunk: chunk)
            #expect(r.count == whole.count)
            #expect(abs(r.sum - whole.sum) < 1e-5 * whole.sum, "chunk \(chunk): \(r.sum) vs \(whole.sum)")
        }
        // forward from a carried state in chunks of 12, 12 and 17 gives the logits of one pass.
        let full = m.logits(ids, B: 1, L: L)
        let state = RecurrentState(model: m, batch: 1)
        var got: [Float] = []
        var t0 = 0
        for n in [12, 12, 17] {
            let ws = Workspace(config: m.config, B: 1, L: n, training: false)
            Array(ids[t0..<(t0 + n)]).withUnsafeBufferPointer { m.forward(ids: $0.baseAddress!, ws: ws, state: state) }
            got += ws.logits.array
            t0 += n
        }
        expectClose("chunks of 12, 12, 17", got, full, atol: 1e-5 * max(1, largestMagnitude(full)), rtol: 1e-5)
        #expect(state.pools?.atBoundary == false, "a padded last chunk leaves a state that cannot be continued")
    }

    /// The recurrent step, token by token from zero state (each stage stepping when its pools complete a block),
    /// gives the logits of one forward pass, at batch 2 and 1, with one or two threads.
    @Test func stepMatchesForward() throws {
        let m = try Self.model()
        let (B, L, V) = (2, 25, m.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 13)
        let full = m.logits(ids, B: B, L: L)
        let scale = max(1, largestMagnitude(full))
        for threads in [1, 2] {
            let stepper = RecurrentStepper(model: m, batch: B, threads: threads)
            let state = RecurrentState(model: m, batch: B)
            var got = [Float](repeating: 0, count: B * L * V)
            for t in 0..<L {
                (0..<B).map { ids[$0 * L + t] }.withUnsafeBufferPointer { stepper.step(ids: $0.baseAddress!, state: state) }
                for b in 0..<B { for v in 0..<V { got[(b * L + t) * V + v] = stepper.logits[b * V + v] } }
            }
            expectClose("step, \(threads) threads", got, full, atol: 1e-5 * scale, rtol: 1e-5)
        }
    }

    /// Prefill (forward over the whole multiples of P, then steps) and generation continue exactly: prompts of
    /// lengths below, at and past P.
    @Test(arguments: [4, 6, 11])
    func prefillThenStepsMatchForward(k: Int) throws {
        let m = try Self.model()
        let (B, L, V) = (2, 20, m.config.vocabSize)
        let ids = randomTokens(B * L, V: V, seed: 14)
        let (got, want) = try m.prefillThenSteps(ids, B: B, L: L, k: k)
        for b in 0..<B {
            expectClose("prompt \(k), sequence \(b)", got[b], want[b], atol: 2e-5 * max(largestMagnitude(want[b]), 1))
        }
    }

    /// config.json and the weights round-trip; a config that does not make a U-Net is refused with its reason.
    @Test func checkpointRoundTripAndValidation() throws {
        let m = try Self.model()
        let dir = TempDir()
        try m.save(directory: dir.path)
        let back = try MambaModel.load(directory: dir.path)
        #expect(back.config == m.config)
        #expect(back.params.buffer.array == m.params.buffer.array)
        let text = try String(contentsOfFile: dir.file("config.json"), encoding: .utf8)
        #expect(text.contains("\"model_type\" : \"sashimi\"") || text.contains("\"model_type\": \"sashimi\""))
        var bad = Self.config()
        bad.stageLayers = [2, 1]
        #expect(throws: MambaKitError.self) { try bad.validate() }
        bad = Self.config()
        bad.pooling = [1, 3]
        #expect(throws: MambaKitError.self) { try bad.validate() }
        bad = Self.config()
        bad.modelType = .mamba
        #expect(throws: MambaKitError.self) { try bad.validate() }
        #expect(throws: MambaKitError.self) { _ = try ModelSpec.poolFactors("4,x") }
        #expect(throws: MambaKitError.self) { _ = try ModelSpec.poolFactors("64,64,2") }
        #expect(try ModelSpec.poolFactors("4, 4") == [4, 4])
    }

    /// The command line end to end on real speech: train with --unet, resume, evaluate in chunks of several sizes
    /// (equal losses), generate, inspect; a classifier too; bad --unet values get clear errors.
    @Test func commandLine() throws {
        let tmp = TempDir()
        let out = tmp.file("lm")
        let shape = ["--format", "audio", "--sample-rate", "8000", "--unet", "4,4", "--d-model", "16", "--layers", "1",
                     "--seq-len", "512", "--batch-size", "2", "--log-every", "2", "--eval-every", "6"]
        let train = try CLI.run(["train", "--data", "samples/audio/fsdd/train/3", "--out", out, "--steps", "6"] + shape)
        #expect(train.status == 0, "\(train.stderr)")
        let resumed = try CLI.run(["train", "--data", "samples/audio/fsdd/train/3", "--format", "audio", "--out", out,
                                   "--steps", "8", "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let model = try MambaModel.load(directory: out)
        #expect(model.config.modelType == .sashimi && model.config.pooling == [4, 4] && model.config.stageLayers == [1, 1, 1])
        var losses: [Double] = []
        for chunk in ["4096", "1000", "333"] {
            let eval = try CLI.run(["eval", "--model", out, "--data", "samples/audio/fsdd/test/3", "--json", "--chunk", chunk])
            #expect(eval.status == 0, "\(eval.stderr)")
            losses.append((try JSONSerialization.jsonObject(with: eval.stdout) as! [String: Any])["loss"] as! Double)
        }
        #expect(losses.allSatisfy { abs($0 - losses[0]) < 1e-5 * losses[0] }, "chunked eval: \(losses)")
        let wav = tmp.file("gen.wav")
        let gen = try CLI.run(["generate", "--model", out, "--seconds", "0.05", "--output", wav,
                               "--prompt-audio", "samples/audio/fsdd/test/3/3_nicolas_0.wav"])
        #expect(gen.status == 0, "\(gen.stderr)")
        #expect(try AudioFile.readMono(wav, sampleRate: 8000).count == 400)
        let inspect = try CLI.run(["inspect", "--model", out])
        #expect(inspect.status == 0 && inspect.out.contains("sashimi") && inspect.out.contains("every 16 tokens"), "\(inspect.out)")

        let cls = tmp.file("cls")
        let ct = try CLI.run(["classify", "train", "--train", "samples/audio/fsdd/train", "--out", cls, "--steps", "4",
                              "--unet", "4", "--stage-layers", "0,1", "--d-model", "16", "--seq-len", "800",
                              "--batch-size", "4"])
        #expect(ct.status == 0, "\(ct.stderr)")
        #expect(try MambaModel.load(directory: cls).config.stageLayers == [0, 1])
        let ce = try CLI.run(["classify", "eval", "--model", cls, "--data", "samples/audio/fsdd/test", "--json"])
        #expect(ce.status == 0, "\(ce.stderr)")

        for (args, message) in [(["--unet", "4,x"], "--unet '4,x'"), (["--unet", "1"], "--unet '1'"),
                                (["--pool-expand", "2"], "--pool-expand needs --unet"),
                                (["--unet", "4", "--mixer", "mamba2"], "Mamba-1 stages"),
                                (["--stage-layers", "1,1"], "--stage-layers needs --unet"),
                                (["--unet", "4", "--stage-layers", "1,1,1"], "--stage-layers needs 2 counts"),
                                (["--unet", "4", "--stage-layers", "0,0"], "at least one block")] {
            let r = try CLI.run(["train", "--data", "samples/audio/fsdd/train/3", "--format", "audio", "--out",
                                 tmp.file("bad"), "--steps", "1"] + args)
            #expect(r.status != 0 && r.stderr.contains("error: ") && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }
}
