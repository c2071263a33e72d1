import Foundation
import MambaKit
import Testing

/// Audio end to end: a classifier that learns two tones, and the CLI's waveform model (train, eval in bits per
/// sample, generation of a WAV of the asked length, prompt continuation).
@Suite(.serialized) struct AudioModelTests {
    /// A noisy tone of `freq` Hz, random phase and amplitude, `n` samples at `rate`.
    static func tone(_ freq: Double, n: Int, rate: Int, rng: inout RNG) -> [Float] {
        let phase = rng.uniform(0, 2 * Double.pi)
        let amp = rng.uniform(0.2, 0.8)
        return (0..<n).map { i in
            Float(amp * sin(2 * Double.pi * freq * Double(i) / Double(rate) + phase) + 0.05 * rng.normal())
        }
    }

    @Test func classifierLearnsTwoTonesInSeconds() throws {
        let tok = AudioTokenizer(quantizer: .mulaw, sampleRate: 8000)
        var rng = RNG(seed: 31)
        func data(_ count: Int) -> [LabeledSequence] {
            (0..<count).map { i in
                let label = i % 2
                let x = Self.tone(label == 0 ? 300 : 1100, n: 400, rate: 8000, rng: &rng)
                return LabeledSequence(id: "t\(i)", tokens: tok.encode(x), label: label)
            }
        }
        let train = data(256), test = data(200)
        var c = MambaConfig(vocabSize: 256, dModel: 32, layers: 2, dState: 8, dConv: 4)
        c.classLabels = ["low", "high"]
        let model = try MambaModel(config: c, seed: 4)
        let clf = try SequenceClassifier(model: model, pooling: .mean)
        let objective = try ClassificationObjective(classifier: clf, train: train, validation: [], batchSize: 8,
                                                    maxLength: 400)
        var o = Trainer.Options()
        o.steps = 60; o.batchSize = 8; o.seqLen = 400; o.lr = 5e-3; o.warmup = 10; o.checkpointEvery = 0
        o.evalEvery = 0; o.logEvery = 1000
        let dir = TempDir()
        let clock = ContinuousClock()
        let t0 = clock.now
        try Trainer(model: model, objective: objective, options: o, outDir: dir.path, dataFingerprint: []).run()
        let acc = try objective.evaluate(test).metrics.accuracy
        #expect(acc > 0.95, "two-tone accuracy \(acc) after 60 steps (\(clock.now - t0))")
    }

    @Test func waveformModelTrainsEvaluatesAndGenerates() throws {
        let tmp = TempDir()
        let out = tmp.file("lm")
        let train = try CLI.run(["train", "--format", "audio", "--data", "samples/audio/digits/one", "samples/audio/digits/two",
                                 "--out", out, "--steps", "6", "--seq-len", "800", "--batch-size", "2", "--d-model", "32",
                                 "--layers", "2", "--d-state", "8", "--sample-rate", "8000", "--eval-every", "6",
                                 "--threads", "2"])
        #expect(train.status == 0, "\(train.stderr)")
        let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as! [String: Any]
        let mk = cfg["mambakit"] as! [String: Any]
        #expect(mk["format"] as? String == "audio")
        #expect((mk["tokenizer"] as? [String: Any])?["sample_rate"] as? Int == 8000)

        // eval needs no audio flags: the rate and quantiser come from the model. Every sample is predicted.
        let e = try CLI.run(["eval", "--model", out, "--data", "samples/audio/asterisk-digits/three", "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let j = try JSONSerialization.jsonObject(with: e.stdout) as! [String: Any]
        let samples = try AudioFile.readMono(CLI.root + "/samples/audio/asterisk-digits/three/allison.wav", sampleRate: 8000).count
        #expect(j["tokens"] as? Int == samples)
        #expect(abs((j["bits_per_sample"] as! Double) - (j["loss"] as! Double) / log(2)) < 1e-9)

        // A WAV of the asked length at the model's rate.
        let wav = tmp.file("g.wav")
        let g = try CLI.run(["generate", "--model", out, "--output", wav, "--seconds", "0.25", "--seed", "3"])
        #expect(g.status == 0, "\(g.stderr)")
        #expect(g.stderr.contains("real-time factor"))
        let info = try AudioFile.info(wav)
        #expect(info.sampleRate == 8000 && info.channels == 1 && info.frames == 2000)

        // Continuing a prompt starts from the prompt's state: the same seed after two different prompts gives
        // different audio, and the same prompt twice gives the same audio.
        func continuation(_ prompt: String, _ name: String) throws -> [Float] {
            let r = try CLI.run(["generate", "--model", out, "--output", tmp.file(name), "--seconds", "0.05",
                                 "--seed", "5", "--prompt-audio", prompt, "--temperature", "0"])
            #expect(r.status == 0, "\(r.stderr)")
            return try AudioFile.readMono(tmp.file(name), sampleRate: 8000)
        }
        let a = try continuation("samples/audio/digits/one/en+m1_35_140.wav", "a.wav")
        let a2 = try continuation("samples/audio/digits/one/en+m1_35_140.wav", "a2.wav")
        let b = try continuation("samples/audio/music/melody.wav", "b.wav")
        #expect(a == a2)
        #expect(a.count == 400 && b.count == 400)
        #expect(a != b, "continuations of two different prompts are identical")
        // --include-prompt writes the prompt (as the model heard it) before the continuation.
        let withPrompt = try CLI.run(["generate", "--model", out, "--output", tmp.file("p.wav"), "--seconds", "0.05",
                                      "--seed", "5", "--prompt-audio", "samples/audio/digits/one/en+m1_35_140.wav",
                                      "--temperature", "0", "--include-prompt"])
        #expect(withPrompt.status == 0, "\(withPrompt.stderr)")
        #expect(try AudioFile.info(tmp.file("p.wav")).frames == 8000 + 400)
    }

    @Test func audioClassifierThroughTheCLI() throws {
        let tmp = TempDir()
        let out = tmp.file("clf")
        let train = try CLI.run(["classify", "train", "--format", "audio", "--train", "samples/audio/asterisk-digits",
                                 "--out", out, "--steps", "4", "--batch-size", "4", "--d-model", "16", "--layers", "1",
                                 "--d-state", "4", "--sample-rate", "4000", "--seq-len", "2000", "--val-fraction", "0",
                                 "--threads", "2"])
        #expect(train.status == 0, "\(train.stderr)")
        let e = try CLI.run(["classify", "eval", "--model", out, "--data", "samples/audio/asterisk-digits", "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let j = try JSONSerialization.jsonObject(with: e.stdout) as! [String: Any]
        #expect((j["classes"] as? [String])?.count == 10)
        #expect((j["confusion_matrix"] as! [[Int]]).flatMap { $0 }.reduce(0, +) == 10)
        let p = try CLI.run(["classify", "predict", "--model", out, "--input", "samples/audio/asterisk-digits/five"])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(p.out.split(separator: "\n").count == 2)
        // DNA-only options are refused for an audio model.
        let x = try CLI.run(["classify", "explain", "--model", out, "--input", "samples/audio/asterisk-digits/five/allison.wav"])
        #expect(x.status != 0)
    }
}
