import Foundation
import MambaKit
import Testing

/// Stateful training (truncated backpropagation through time): windows that continue a carried state give the
/// logits of one forward over the whole stream, their backward is the gradient with the state held fixed (finite
/// differences), lanes tile their streams, and a stateful run resumes bit for bit.
@Suite(.serialized) struct CarriedStateTests {
    /// A Mamba-1 stack, a Mamba-2 stack with an MLP block, and the refused kinds.
    static func config(_ name: String) throws -> MambaConfig {
        var spec = ModelSpec()
        spec.dModel = 16
        switch name {
        case "mamba1":
            spec.layers = 2
            spec.dState = 4
            spec.dConv = 3
        case "mamba2":
            // A pure Mamba-2 stack: finite differences of relu² MLP stacks cross the kink at 0 (their gradients are
            // held to transformers' in ModelGoldenTests instead).
            (spec.pattern, spec.dState, spec.headDim, spec.chunkSize) = ("MM", 8, 8, 8)
        case "mamba2+mlp":
            (spec.pattern, spec.dState, spec.headDim, spec.chunkSize, spec.mlpWidth) = ("M-M", 8, 8, 8, 32)
        default:
            (spec.pattern, spec.dState, spec.headDim, spec.chunkSize) = ("M*", 8, 8, 8)
            (spec.attnHeadDim, spec.heads, spec.kvHeads) = (4, 4, 2)
        }
        return try spec.config(vocabSize: 256)
    }

    static func copyState(_ s: RecurrentState, model: MambaModel) -> RecurrentState {
        let c = RecurrentState(model: model, batch: s.batch)
        for (a, b) in zip(c.tensors, s.tensors) { a.ptr.update(from: b.ptr, count: b.count) }
        return c
    }

    static func ids(_ n: Int, seed: UInt64) -> [Int32] {
        var rng = RNG(seed: seed)
        return (0..<n).map { _ in Int32(rng.int(below: 256)) }
    }

    @Test(arguments: ["mamba1", "mamba2", "mamba2+mlp"])
    func windowsFromACarriedStateGiveTheLogitsOfOneForward(stack: String) throws {
        let model = try MambaModel(config: Self.config(stack), seed: 3)
        let (B, L, windows, V) = (2, 11, 3, 256)
        let stream = Self.ids(B * L * windows, seed: 4)   // row b: tokens b·L·windows ..< (b+1)·L·windows
        let whole = model.logits(stream, B: B, L: L * windows)
        let state = RecurrentState(model: model, batch: B)
        let ws = Workspace(config: model.config, B: B, L: L, training: true)
        var worst: Float = 0, scale: Float = 0
        for k in 0..<windows {
            var ids: [Int32] = []
            for b in 0..<B {
                let from: Int = b * L * windows + k * L
                ids += stream[from..<(from + L)]
            }
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: state) }
            let got = ws.logits.array
            for b in 0..<B {
                let from: Int = (b * L * windows + k * L) * V
                let want = Array(whole[from..<(from + L * V)])
                let mine = Array(got[(b * L * V)..<((b + 1) * L * V)])
                worst = max(worst, maxAbsDiff(mine, want))
                scale = max(scale, largestMagnitude(want))
            }
        }
        // Float rounding of chunked vs whole scans and products: ~1e-6 of the logits' scale.
        #expect(worst <= 1e-5 * max(scale, 1), "\(stack): windows differ from the whole by \(worst) (scale \(scale))")
    }

    @Test(arguments: ["mamba1", "mamba2"])
    func backwardFromACarriedStateMatchesFiniteDifferences(stack: String) throws {
        let model = try MambaModel(config: Self.config(stack), seed: 5)
        let (B, L) = (2, 13)
        // A state from a prefix, then a window continuing it.
        let state = RecurrentState(model: model, batch: B)
        let prefix = Self.ids(B * 9, seed: 6)
        let pws = Workspace(config: model.config, B: B, L: 9, training: false)
        prefix.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: pws, state: state) }
        let ids = Self.ids(B * L, seed: 7)
        let targets = nextTokenTargets(ids, B: B, L: L)
        func meanLoss() -> Double {
            let ws = Workspace(config: model.config, B: B, L: L, training: false)
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: Self.copyState(state, model: model)) }
            let (sum, count) = targets.withUnsafeBufferPointer {
                CrossEntropy.forwardBackward(logits: ws.logits.ptr, targets: $0.baseAddress!, M: B * L, V: 256,
                                             dlogits: nil, scale: 1)
            }
            return sum / Double(count)
        }
        // The same window from a zero state has other gradients (the test sees the state).
        model.gradients(ids, targets: targets, B: B, L: L)
        let zeroState = model.params.layout.views.map { model.grads.values($0.name) }
        model.zeroGradients()
        let ws = Workspace(config: model.config, B: B, L: L, training: true)
        ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws, state: Self.copyState(state, model: model)) }
        ids.withUnsafeBufferPointer { i in
            targets.withUnsafeBufferPointer { t in _ = model.backward(ids: i.baseAddress!, targets: t.baseAddress!, ws: ws) }
        }
        let carried = model.params.layout.views.map { model.grads.values($0.name) }
        #expect(zip(carried, zeroState).contains { maxAbsDiff($0, $1) > 1e-4 * max(largestMagnitude($0), 1e-6) })
        // Finite differences of the loss from the fixed state.
        var rng = RNG(seed: 8)
        model.checkGradientsByFiniteDifferences(ids, targets: targets, B: B, L: L, rng: &rng, loss: meanLoss)
    }

    @Test func lanesTileTheirStreamsAndRestart() throws {
        // Tokens encode (stream, position).
        let a = (0..<300).map { Int32($0 % 256) }, b = (0..<120).map { Int32(($0 + 100) % 256) }
        let corpus = try TokenCorpus(streams: [("a", a), ("b", b)], valFraction: 0)
        var rng = RNG(seed: 2)
        let (B, L) = (3, 10)
        var lanes = [TokenCorpus.Lane?](repeating: nil, count: B)
        var ids = [Int32](repeating: 0, count: B * L), targets = ids
        var restarts = 0
        var previous = lanes
        for step in 0..<60 {
            let restarted = try corpus.nextWindows(lanes: &lanes, L: L, reset: 4, rng: &rng, ids: &ids, targets: &targets)
            if step == 0 { #expect(restarted == [0, 1, 2]) }
            restarts += restarted.count
            for lane in 0..<B {
                let l = lanes[lane]!
                let stream = l.stream == 0 ? a : b
                let start = l.position - L
                #expect(Array(ids[(lane * L)..<((lane + 1) * L)]) == Array(stream[start..<(start + L)]))
                #expect(Array(targets[(lane * L)..<((lane + 1) * L)]) == Array(stream[(start + 1)..<(start + L + 1)]))
                #expect(l.windows >= 1 && l.windows <= 4)
                if restarted.contains(lane) {
                    #expect(l.windows == 1)
                    // Restarted because it had read 4 windows or had no room for another.
                    if let p = previous[lane] { #expect(p.windows == 4 || p.position + L + 1 > (p.stream == 0 ? 300 : 120)) }
                } else {
                    // Continued: the window starts where the last one ended.
                    #expect(previous[lane]!.stream == l.stream && previous[lane]!.position == start)
                }
            }
            previous = lanes
        }
        #expect(restarts >= 60 * B / 4)
    }

    @Test(arguments: ["mamba1", "mamba2", "mamba2+mlp"])
    func statefulTrainingResumesBitForBit(stack: String) throws {
        try withThreadSettingsLock {
            // As saved and loaded (a pure Mamba-2 config made by ModelSpec carries MLP and attention defaults that
            // the mamba2 layout does not store, and `==` compares them).
            let made = TempDir()
            try MambaModel(config: Self.config(stack), seed: 0).save(directory: made.path)
            let config = try MambaModel.load(directory: made.path).config
            var o = TrainerTests.options(steps: 7)
            o.carryState = true
            o.carryReset = 3
            let a = TempDir(), b = TempDir()
            let corpus = try TrainerTests.corpus()
            let full = try Trainer(model: try MambaModel(config: config, seed: 5), corpus: corpus, options: o,
                               outDir: a.path, dataFingerprint: ["x"])
            try full.run()
            var polls = 0
            let first = try Trainer(model: try MambaModel(config: config, seed: 5), corpus: corpus, options: o,
                                outDir: b.path, dataFingerprint: ["x"])
            #expect(throws: MambaKitError.self) { try first.run(shouldStop: { polls += 1; return polls == 4 }) }
            let second = try Trainer(model: try MambaModel(config: config, seed: 1), corpus: corpus, options: o,
                                 outDir: b.path, dataFingerprint: ["x"])
            try second.resume()
            try second.run()
            for v in full.model.params.layout.views {
                #expect(full.model.params.values(v.name) == second.model.params.values(v.name), "\(stack) \(v.name)")
            }
            let la = try TrainerTests.losses(a.path)
            #expect(la == (try TrainerTests.losses(b.path)))
            // Not the windowed run: the carried state changes the losses.
            var plain = o
            plain.carryState = false
            let c = TempDir()
            try Trainer(model: try MambaModel(config: config, seed: 5), corpus: corpus, options: plain, outDir: c.path,
                        dataFingerprint: ["x"]).run()
            #expect(la != (try TrainerTests.losses(c.path)))
        }
    }

    @Test func theCommandLineRefusesWhatCannotCarryAState() throws {
        let tmp = TempDir()
        let base = ["train", "--data", "samples/text/ruth.txt", "--steps", "2", "--seq-len", "32", "--batch-size", "2",
                    "--d-model", "16", "--log-every", "1"]
        let attention = try CLI.run(base + ["--out", tmp.file("a"), "--pattern", "M*", "--carry-state"])
        #expect(attention.status != 0 && attention.stderr.contains("--carry-state needs a flat stack"), "\(attention.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("a")), "a refused run leaves no output directory")
        let unet = try CLI.run(base + ["--out", tmp.file("u"), "--unet", "4", "--carry-state"])
        #expect(unet.status != 0 && unet.stderr.contains("--carry-state needs a flat stack"), "\(unet.stderr)")
        let reset = try CLI.run(base + ["--out", tmp.file("r"), "--carry-reset", "3"])
        #expect(reset.status != 0 && reset.stderr.contains("add --carry-state"), "\(reset.stderr)")
        let ok = try CLI.run(base + ["--out", tmp.file("ok"), "--carry-state", "--carry-reset", "2", "--seq-len-warmup", "1"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let state = try String(contentsOfFile: tmp.file("ok/checkpoints/step-00000002/trainer_state.json"), encoding: .utf8)
        #expect(state.contains("\"lanes\""))
        let eval = try CLI.run(["eval", "--model", tmp.file("ok"), "--data", "samples/text/ruth.txt", "--by-position", "1k,4k", "--json"])
        #expect(eval.status == 0, "\(eval.stderr)")
        let o = try JSONSerialization.jsonObject(with: eval.stdout) as? [String: Any]
        let buckets = o?["by_position"] as? [[String: Any]] ?? []
        #expect(buckets.count == 3)
        #expect(buckets.reduce(0) { $0 + ($1["tokens"] as? Int ?? 0) } == o?["tokens"] as? Int)
        let bad = try CLI.run(["eval", "--model", tmp.file("ok"), "--data", "samples/text/ruth.txt", "--by-position", "4k,1k"])
        #expect(bad.status != 0 && bad.stderr.contains("must increase"), "\(bad.stderr)")
    }
}
