import Foundation
import MambaKit
import Testing

/// Training: schedule formula, resume == uninterrupted (bit for bit), interruption, NaN handling, data windows.
@Suite struct TrainerTests {
    static func corpus() throws -> TokenCorpus {
        var rng = RNG(seed: 3)
        // Two streams with structure (a repeated phrase with noise) so the loss moves.
        let phrase = Array("the state space model reads bytes. ".utf8)
        func stream(_ n: Int) -> [Int32] {
            (0..<n).map { i in rng.int(below: 10) == 0 ? Int32(rng.int(below: 256)) : Int32(phrase[i % phrase.count]) }
        }
        return try TokenCorpus(streams: [("a", stream(3000)), ("b", stream(1500))], valFraction: 0.1)
    }

    static func options(steps: Int) -> Trainer.Options {
        var o = Trainer.Options()
        o.steps = steps; o.batchSize = 2; o.seqLen = 24; o.lr = 5e-3; o.warmup = 2; o.seed = 11
        o.evalEvery = 3; o.evalTokens = 200; o.checkpointEvery = 2; o.logEvery = 1
        return o
    }

    static let config = MambaConfig(vocabSize: 256, dModel: 16, layers: 2, dState: 4, dConv: 3, expand: 2)

    static func losses(_ dir: String) throws -> [Int: Double] {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        var out: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if let l = o["loss"] as? Double { out[o["step"] as! Int] = l }
        }
        return out
    }

    @Test func scheduleWarmsUpThenDecaysByCosine() {
        let s = CosineSchedule(peak: 1e-3, minimum: 1e-4, warmup: 10, total: 110)
        #expect(abs(s.rate(step: 1) - 1e-4) < 1e-15)
        #expect(abs(s.rate(step: 10) - 1e-3) < 1e-15)
        #expect(abs(s.rate(step: 60) - (1e-4 + 0.5 * 9e-4)) < 1e-12)  // half way: cos(π/2) = 0
        #expect(abs(s.rate(step: 110) - 1e-4) < 1e-15)
        #expect(s.rate(step: 35) > s.rate(step: 36))
    }

    /// A Mamba-1 stack, and a hybrid `M*-M` (nemotron_h layout) with every block kind but Mamba-1.
    static func stack(_ name: String) throws -> MambaConfig {
        if name == "mamba1" { return config }
        var spec = ModelSpec()
        (spec.dModel, spec.pattern, spec.dState, spec.headDim, spec.chunkSize) = (16, "M*-M", 8, 8, 16)
        (spec.attnHeadDim, spec.heads, spec.kvHeads, spec.mlpWidth) = (4, 4, 2, 32)
        return try spec.config(vocabSize: 256)
    }

    @Test(arguments: ["mamba1", "hybrid"])
    func resumeContinuesBitForBit(stack: String) throws {
        try withThreadSettingsLock { try resumeContinuesBitForBitLocked(config: Self.stack(stack)) }
    }

    func resumeContinuesBitForBitLocked(config: MambaConfig) throws {
        let a = TempDir(), b = TempDir()
        let corpus = try Self.corpus()
        // Uninterrupted: 7 steps.
        let full = try Trainer(model: try MambaModel(config: config, seed: 5), corpus: corpus,
                           options: Self.options(steps: 7), outDir: a.path, dataFingerprint: ["x"])
        try full.run()
        // Interrupted after step 3 (a checkpoint is written on the interruption), then resumed in a new trainer.
        var polls = 0
        let first = try Trainer(model: try MambaModel(config: config, seed: 5), corpus: corpus,
                            options: Self.options(steps: 7), outDir: b.path, dataFingerprint: ["x"])
        do {
            try first.run(shouldStop: { polls += 1; return polls == 3 })
            Issue.record("expected an interruption")
        } catch let e as MambaKitError {
            #expect(e.kind == .interrupted)
        }
        #expect(first.step == 3)
        let second = try Trainer(model: try MambaModel(config: config, seed: 99), corpus: corpus,
                             options: Self.options(steps: 7), outDir: b.path, dataFingerprint: ["x"])
        try second.resume()
        #expect(second.step == 3)
        try second.run()
        for v in full.model.params.layout.views {
            #expect(full.model.params.values(v.name) == second.model.params.values(v.name), "\(v.name) differs after resume")
        }
        let la = try Self.losses(a.path), lb = try Self.losses(b.path)
        #expect(la.count == 7)
        #expect(la == lb, "losses \(la) vs \(lb)")
        #expect(la[7]! < la[1]!, "the loss should fall: \(la)")
        // The final model in OUT loads and equals the trainer's.
        let saved = try MambaModel.load(directory: b.path)
        #expect(saved.params.values("backbone.norm_f.weight") == second.model.params.values("backbone.norm_f.weight"))
    }

    @Test func resumeRefusesOtherDataOrShape() throws {
        let a = TempDir()
        let corpus = try Self.corpus()
        try Trainer(model: try MambaModel(config: Self.config, seed: 5), corpus: corpus, options: Self.options(steps: 2),
                    outDir: a.path, dataFingerprint: ["x"]).run()
        let other = try Trainer(model: try MambaModel(config: Self.config, seed: 5), corpus: corpus,
                            options: Self.options(steps: 4), outDir: a.path, dataFingerprint: ["y"])
        #expect(throws: MambaKitError.self) { try other.resume() }
        var c2 = Self.config
        c2.numHiddenLayers = 3
        let wider = try Trainer(model: try MambaModel(config: c2, seed: 5), corpus: corpus,
                            options: Self.options(steps: 4), outDir: a.path, dataFingerprint: ["x"])
        #expect(throws: MambaKitError.self) { try wider.resume() }
    }

    @Test func nonFiniteLossStopsAndKeepsTheLastCheckpoint() throws {
        let a = TempDir()
        let corpus = try Self.corpus()
        let t = try Trainer(model: try MambaModel(config: Self.config, seed: 5), corpus: corpus, options: Self.options(steps: 2),
                        outDir: a.path, dataFingerprint: ["x"])
        try t.run()
        let before = try Data(contentsOf: URL(fileURLWithPath: a.file("checkpoints/step-00000002/model.safetensors")))
        // Poison a weight: the next forward produces NaN.
        let model = try MambaModel.load(directory: a.path)
        model.params.ptr("backbone.norm_f.weight")[0] = .nan
        let bad = try Trainer(model: model, corpus: corpus, options: Self.options(steps: 4), outDir: a.path, dataFingerprint: ["x"])
        do {
            try bad.run()
            Issue.record("expected a numeric error")
        } catch let e as MambaKitError {
            #expect(e.kind == .numeric)
            #expect(e.description.contains("step-00000002"), "\(e)")
        }
        let after = try Data(contentsOf: URL(fileURLWithPath: a.file("checkpoints/step-00000002/model.safetensors")))
        #expect(before == after)
        #expect(try String(contentsOfFile: a.file("checkpoints/latest"), encoding: .utf8) == "step-00000002\n")
    }

    @Test func windowsStayInsideTheTrainingPartOfOneStream() throws {
        // Stream tokens encode (stream, position) so a window can be traced back.
        let a = (0..<100).map { Int32($0) }, b = (0..<50).map { Int32(1000 + $0) }
        let corpus = try TokenCorpus(streams: [("a", a), ("b", b)], valFraction: 0.2)
        var rng = RNG(seed: 1)
        var ids = [Int32](repeating: 0, count: 8 * 10), targets = ids
        var sawB = false
        for _ in 0..<50 {
            try corpus.sampleBatch(B: 8, L: 10, rng: &rng, ids: &ids, targets: &targets)
            for w in 0..<8 {
                let row = Array(ids[(w * 10)..<(w * 10 + 10)])
                let base = row[0] >= 1000 ? 1000 : 0
                sawB = sawB || base == 1000
                for t in 0..<10 {
                    #expect(ids[w * 10 + t] == row[0] + Int32(t))
                    #expect(targets[w * 10 + t] == row[0] + Int32(t) + 1)
                }
                // Held out: the last 20 of a, the last 10 of b.
                #expect(Int(targets[w * 10 + 9]) - base < (base == 0 ? 80 : 40))
            }
        }
        #expect(sawB)
        #expect(throws: MambaKitError.self) {
            try corpus.sampleBatch(B: 1, L: 80, rng: &rng, ids: &ids, targets: &targets)
        }
    }
}
