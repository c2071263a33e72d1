import Foundation
import MambaKit
import Testing

/// Interoperability with checkpoints written by transformers' `save_pretrained` (F32, F16, BF16) and in
/// mamba_ssm's layout (fixtures from scripts/make_fixtures.py), and our own save → load round trip.
@Suite struct CheckpointTests {
    static let expected = try! Fixtures.json("hf_tiny_expected.json")

    static func loss(_ model: MambaModel, text: String) throws -> Double {
        try Evaluator.nll(model: model, tokens: ByteTokenizer.encode(Array(text.utf8))).meanLoss
    }

    @Test func hfCheckpointGivesTheSameLossAndGreedyContinuation() throws {
        let model = try MambaModel.load(directory: Fixtures.path("hf_tiny"))
        let e = Self.expected
        let loss = try Self.loss(model, text: e["text"] as! String)
        #expect(abs(loss - (e["loss"] as! Double)) < 1e-5, "loss \(loss) vs transformers \(e["loss"]!)")
        var rng = RNG(seed: 0)
        var out: [Int32] = []
        try Generator(model: model).generate(
            prompt: (e["prompt_ids"] as! [Int]).map { Int32($0) }, count: 24, sampler: Sampler(temperature: 0), rng: &rng
        ) { out.append($0); return true }
        #expect(out.map { Int($0) } == e["greedy"] as! [Int])
    }

    /// Mamba-2 and NemotronH byte models saved by transformers: the same loss, evaluated whole and in chunks of 7
    /// with the state (and the KV cache) carried, and the same 24 greedy tokens through prefill and the step.
    @Test(arguments: ["hf_mamba2_tiny", "hf_nemotron_h_tiny"])
    func hfBlockCheckpointGivesTheSameLossAndGreedyContinuation(dir: String) throws {
        let model = try MambaModel.load(directory: Fixtures.path(dir))
        let e = try Fixtures.json(dir + "_expected.json")
        let tokens = ByteTokenizer.encode(Array((e["text"] as! String).utf8))
        for chunk in [2048, 7] {
            let loss = try Evaluator.nll(model: model, tokens: tokens, chunk: chunk).meanLoss
            #expect(abs(loss - (e["loss"] as! Double)) < 1e-5, "\(dir) chunk \(chunk): loss \(loss) vs transformers \(e["loss"]!)")
        }
        var rng = RNG(seed: 0)
        var out: [Int32] = []
        try Generator(model: model).generate(
            prompt: (e["prompt_ids"] as! [Int]).map { Int32($0) }, count: 24, sampler: Sampler(temperature: 0), rng: &rng
        ) { out.append($0); return true }
        #expect(out.map { Int($0) } == e["greedy"] as! [Int], "\(dir) greedy")
    }

    @Test func mambaSSMMamba2LayoutLoadsLikeHF() throws {
        let hf = try MambaModel.load(directory: Fixtures.path("hf_mamba2_tiny"))
        let ssm = try MambaModel.load(directory: Fixtures.path("mamba_ssm_mamba2_tiny"))
        #expect(ssm.config.layerKinds == hf.config.layerKinds && ssm.config.ssmHeads == hf.config.ssmHeads
                && ssm.config.nGroups == hf.config.nGroups && ssm.config.stateSize == hf.config.stateSize)
        for v in hf.params.layout.views { #expect(ssm.params.values(v.name) == hf.params.values(v.name), "\(v.name)") }
    }

    /// Ours → ours in each layout: the config reads back equal and every tensor bit for bit.
    @Test(arguments: ["hf_tiny", "hf_mamba2_tiny", "hf_nemotron_h_tiny"])
    func blockLayoutsSaveAndLoadBack(dir: String) throws {
        let model = try MambaModel.load(directory: Fixtures.path(dir))
        let tmp = TempDir()
        try model.save(directory: tmp.path)
        let back = try MambaModel.load(directory: tmp.path)
        #expect(back.config == model.config, "\(dir) config")
        #expect(back.config.timeStepLimit == model.config.timeStepLimit)
        #expect(back.params.buffer.array == model.params.buffer.array, "\(dir) parameters")
    }

    @Test(arguments: [("hf_tiny_f16", "loss_f16_upcast"), ("hf_tiny_bf16", "loss_bf16_upcast")])
    func halfPrecisionCheckpointsLoadExactly(dir: String, key: String) throws {
        let model = try MambaModel.load(directory: Fixtures.path(dir))
        let loss = try Self.loss(model, text: Self.expected["text"] as! String)
        #expect(abs(loss - (Self.expected[key] as! Double)) < 1e-5, "\(dir): loss \(loss) vs \(Self.expected[key]!)")
    }

    @Test func mambaSSMLayoutLoadsLikeHF() throws {
        let hf = try MambaModel.load(directory: Fixtures.path("hf_tiny"))
        let ssm = try MambaModel.load(directory: Fixtures.path("mamba_ssm_tiny"))
        #expect(ssm.config == hf.config)
        for v in hf.params.layout.views { #expect(ssm.params.values(v.name) == hf.params.values(v.name), "\(v.name)") }
    }

    @Test func mambaSSMPaddedVocabulary() throws {
        let e = try Fixtures.json("mamba_ssm_pad_expected.json")
        let model = try MambaModel.load(directory: Fixtures.path("mamba_ssm_pad"))
        #expect(model.config.vocabSize == e["padded_vocab_size"] as! Int)
        let rows = (e["input_ids"] as! [[Int]])
        var sum = 0.0, count = 0
        for r in rows {
            let res = try Evaluator.nll(model: model, tokens: r.map { Int32($0) })
            sum += res.sum; count += res.count
        }
        let loss = sum / Double(count)
        #expect(abs(loss - (e["loss"] as! Double)) < 1e-5, "loss \(loss) vs \(e["loss"]!)")
    }

    /// Fixtures: models written by `mambakit train` in each layout (Mamba-1; `--mixer mamba2`; `--pattern M*-`), and
    /// the loss transformers computed after loading them (scripts/check_transformers_roundtrip.py).
    @Test(arguments: ["mambakit_saved", "mambakit_saved_mamba2", "mambakit_saved_nemotron_h"])
    func modelSavedByMambaKitGivesTransformersLoss(dir: String) throws {
        let e = try Fixtures.json(dir + "_transformers.json")
        let model = try MambaModel.load(directory: Fixtures.path(dir))
        let bytes = Array(try FileInput.readBytes(CLI.root + "/" + (e["data"] as! String)).prefix(e["max_bytes"] as! Int))
        let r = try Evaluator.nll(model: model, tokens: ByteTokenizer.encode(bytes), chunk: 700)
        #expect(r.count == e["tokens"] as! Int)
        #expect(abs(r.meanLoss - (e["loss"] as! Double)) < 1e-5, "loss \(r.meanLoss) vs transformers \(e["loss"]!)")
    }

    @Test(arguments: [SafeTensorDType.F32, .F16, .BF16])
    func saveLoadRoundTrip(dtype: SafeTensorDType) throws {
        let tmp = TempDir()
        let config = MambaConfig(vocabSize: 256, dModel: 24, layers: 2, dState: 5, dConv: 3, expand: 2, useBias: true, tie: false)
        let model = try MambaModel(config: config, seed: 7)
        try model.save(directory: tmp.path, dtype: dtype)
        let back = try MambaModel.load(directory: tmp.path)
        #expect(back.config == config)
        for v in model.params.layout.views {
            let a = model.params.values(v.name), b = back.params.values(v.name)
            // F32 is exact; F16 keeps 11 significant bits, BF16 8 (relative rounding error 2^-11, 2^-8).
            let rel: Float = dtype == .F32 ? 0 : (dtype == .F16 ? 1.0 / 2048 : 1.0 / 256)
            expectClose("\(dtype) \(v.name)", b, a, atol: dtype == .F16 ? 6e-8 : 0, rtol: rel)
        }
        // What other readers see: HF's keys, F32 by default, and format metadata transformers checks for.
        let file = try SafeTensorsFile(path: tmp.file("model.safetensors"))
        #expect(file.metadata["format"] == "pt")
        #expect(file.info("lm_head.weight") != nil)
        #expect(file.info("backbone.embeddings.weight")?.shape == [256, 24])
    }

    @Test func tiedHeadIsOmittedLikeSavePretrained() throws {
        let tmp = TempDir()
        let model = try MambaModel(config: MambaConfig(vocabSize: 256, dModel: 16, layers: 1), seed: 1)
        try model.save(directory: tmp.path)
        #expect(try SafeTensorsFile(path: tmp.file("model.safetensors")).info("lm_head.weight") == nil)
    }

    // MARK: bad checkpoints

    func expectError(_ kind: MambaKitError.Kind, containing phrase: String, _ body: () throws -> Void,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("expected an error containing '\(phrase)'", sourceLocation: sourceLocation)
        } catch let e as MambaKitError {
            #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains(phrase), "\(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    func copyOfTiny() throws -> TempDir {
        let tmp = TempDir()
        for f in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: Fixtures.path("hf_tiny/" + f), toPath: tmp.file(f))
        }
        return tmp
    }

    @Test func missingDirectoryFileAndWeights() throws {
        let tmp = TempDir()
        expectError(.io, containing: "no such directory") { _ = try MambaModel.load(directory: tmp.file("nope")) }
        _ = FileManager.default.createFile(atPath: tmp.file("plain"), contents: Data("x".utf8))
        expectError(.io, containing: "expected a directory") { _ = try MambaModel.load(directory: tmp.file("plain")) }
        expectError(.io, containing: "no config.json") { _ = try MambaModel.load(directory: tmp.path) }
        try FileManager.default.copyItem(atPath: Fixtures.path("hf_tiny/config.json"), toPath: tmp.file("config.json"))
        expectError(.io, containing: "no model.safetensors") { _ = try MambaModel.load(directory: tmp.path) }
        _ = FileManager.default.createFile(atPath: tmp.file("pytorch_model.bin"), contents: Data([0x80, 2]))
        expectError(.format, containing: "pickle") { _ = try MambaModel.load(directory: tmp.path) }
    }

    @Test func configThatDisagreesWithTheTensors() throws {
        let tmp = try copyOfTiny()
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tmp.file("config.json")))) as! [String: Any]
        cfg["state_size"] = 16
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: tmp.file("config.json")))
        expectError(.shape, containing: "A_log") { _ = try MambaModel.load(directory: tmp.path) }
        cfg["state_size"] = 8
        cfg["num_hidden_layers"] = 3
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: tmp.file("config.json")))
        expectError(.format, containing: "missing tensors: backbone.layers.2") { _ = try MambaModel.load(directory: tmp.path) }
        cfg["num_hidden_layers"] = 1
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: tmp.file("config.json")))
        expectError(.format, containing: "unexpected tensors: backbone.layers.1") { _ = try MambaModel.load(directory: tmp.path) }
        cfg["num_hidden_layers"] = -1
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: tmp.file("config.json")))
        expectError(.config, containing: "num_hidden_layers must be positive") { _ = try MambaModel.load(directory: tmp.path) }
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: tmp.file("config.json")))
        expectError(.format, containing: "not a JSON object") { _ = try MambaModel.load(directory: tmp.path) }
    }

    @Test func truncatedWeights() throws {
        let tmp = try copyOfTiny()
        let data = try Data(contentsOf: URL(fileURLWithPath: tmp.file("model.safetensors")))
        try data.prefix(data.count - 10).write(to: URL(fileURLWithPath: tmp.file("model.safetensors")))
        expectError(.format, containing: "model.safetensors") { _ = try MambaModel.load(directory: tmp.path) }
    }
}
