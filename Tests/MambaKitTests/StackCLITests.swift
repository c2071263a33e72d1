import Foundation
import MambaKit
import Testing

/// Every stack runs through the same commands a user types: `--mixer mamba2` and a hybrid `--pattern` train on bytes
/// (and resume), evaluate exactly in chunks, generate (Float32 and bfloat16 step weights), show their stack in
/// `inspect`, classify DNA (train, eval, predict, explain), pretrain on FASTA and fine-tune from it, and train on
/// audio; bad stacks get clear errors.
@Suite(.serialized) struct StackCLITests {
    static let stacks: [[String]] = [
        ["--mixer", "mamba2", "--layers", "2", "--head-dim", "16", "--d-state", "16", "--chunk-size", "16"],
        ["--pattern", "M-*", "--head-dim", "16", "--d-state", "16", "--chunk-size", "16", "--heads", "4",
         "--kv-heads", "2", "--attn-head-dim", "8", "--mlp-width", "64"],
    ]
    static let small = ["--d-model", "32", "--batch-size", "2", "--seq-len", "64", "--log-every", "5",
                        "--eval-every", "10", "--checkpoint-every", "10", "--threads", "2"]

    @Test(arguments: stacks)
    func bytesTrainResumeEvalGenerateInspect(stack: [String]) throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let train = try CLI.run(["train", "--data", "samples/text/genesis.txt", "--out", out, "--steps", "10"]
                                + Self.small + stack)
        #expect(train.status == 0, "\(train.stderr)")
        let resumed = try CLI.run(["train", "--data", "samples/text/genesis.txt", "--out", out, "--steps", "20", "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let model = try MambaModel.load(directory: out)
        #expect(model.config.pattern == (stack[0] == "--pattern" ? stack[1] : "MM"))
        var losses: [Double] = []
        for chunk in ["1000", "4096", "333"] {
            let eval = try CLI.run(["eval", "--model", out, "--data", "samples/text/ruth.txt", "--json", "--chunk", chunk])
            #expect(eval.status == 0, "\(eval.stderr)")
            losses.append((try JSONSerialization.jsonObject(with: eval.stdout) as! [String: Any])["loss"] as! Double)
        }
        #expect(losses.allSatisfy { abs($0 - losses[0]) < 1e-5 * losses[0] }, "chunked eval: \(losses)")
        #expect(losses[0] < log(256.0), "loss \(losses[0]) should beat uniform")
        for weights in ["f32", "bf16"] {
            let gen = try CLI.run(["generate", "--model", out, "--prompt", "In the beginning", "--max-new-tokens", "30",
                                   "--temperature", "0", "--weights", weights])
            #expect(gen.status == 0 && gen.stdout.count == 30, "\(weights): \(gen.stderr)")
        }
        let inspect = try CLI.run(["inspect", "--model", out])
        #expect(inspect.status == 0 && inspect.out.contains("stack") && inspect.out.contains("mamba-2"), "\(inspect.out)")
    }

    @Test(arguments: stacks)
    func dnaClassifyAndFineTuneAndAudio(stack: [String]) throws {
        let tmp = TempDir()
        let data = tmp.file("frag")
        #expect(try CLI.run(["fragments", "--from", "samples/dna/origin/lambda_phage.fa.gz",
                             "samples/dna/origin/s_aureus.fa.gz", "--length", "64", "--counts", "20,6,6",
                             "--out", data]).status == 0)
        let clf = tmp.file("clf")
        let t = try CLI.run(["classify", "train", "--train", data + "/train", "--val", data + "/val", "--out", clf,
                             "--steps", "6", "--d-model", "32", "--batch-size", "4", "--threads", "2"] + stack)
        #expect(t.status == 0, "\(t.stderr)")
        let e = try CLI.run(["classify", "eval", "--model", clf, "--data", data + "/test", "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let p = try CLI.run(["classify", "predict", "--model", clf, "--input", data + "/test/s_aureus.fa"])
        #expect(p.status == 0 && p.out.split(separator: "\n").count == 7, "\(p.stderr)")
        let name = try SequenceReader(path: data + "/test/s_aureus.fa").readAll()[0].name
        let x = try CLI.run(["classify", "explain", "--model", clf, "--input", data + "/test/s_aureus.fa", "--record", name])
        #expect(x.status == 0, "\(x.stderr)")
        // Genome pretraining with this stack, then a classifier from it.
        let lm = tmp.file("lm")
        let pre = try CLI.run(["train", "--format", "fasta", "--data", "samples/dna/origin/lambda_phage.fa.gz", "--out", lm,
                               "--steps", "4", "--seq-len", "64", "--d-model", "32", "--batch-size", "2"] + stack)
        #expect(pre.status == 0, "\(pre.stderr)")
        let ft = try CLI.run(["classify", "train", "--train", data + "/train", "--out", tmp.file("ft"), "--init", lm,
                              "--steps", "2", "--batch-size", "4"])
        #expect(ft.status == 0, "\(ft.stderr)")
        let refused = try CLI.run(["classify", "train", "--train", data + "/train", "--out", tmp.file("ft2"), "--init", lm,
                                   "--steps", "2"] + stack)
        #expect(refused.status != 0 && refused.stderr.contains("cannot be set with --init"), "\(refused.stderr)")
        // Audio: a waveform model with this stack.
        let audio = try CLI.run(["train", "--format", "audio", "--data", "samples/audio/digits", "--out", tmp.file("au"),
                                 "--steps", "2", "--seq-len", "256", "--d-model", "32", "--batch-size", "2"] + stack)
        #expect(audio.status == 0, "\(audio.stderr)")
    }

    /// A pipeline with `variants` trains each stack into its own directory and tables them in summary.json.
    @Test func variantsPipelineComparesStacks() throws {
        let tmp = TempDir()
        let yaml = """
            name: arch
            data: {format: bytes, train: [samples/text/ruth.txt], eval: samples/text/ruth.txt}
            model: {d_model: 32}
            variants:
              - {name: m1, mixer: mamba1, layers: 1}
              - {name: m2, mixer: mamba2, layers: 1, head_dim: 16, d_state: 16, chunk_size: 16}
              - {name: hy, pattern: "M*-", head_dim: 16, d_state: 16, heads: 2, kv_heads: 1, attn_head_dim: 16, mlp_width: 64}
            train: {steps: 4, batch_size: 2, seq_len: 64, log_every: 2, eval_every: 4, checkpoint_every: 4}
            """
        try yaml.write(toFile: tmp.file("arch.yaml"), atomically: false, encoding: .utf8)
        let r = try CLI.run(["run", tmp.file("arch.yaml"), "--runs-dir", tmp.file("runs"), "--threads", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tmp.file("runs/arch/summary.json")))) as! [String: Any]
        let results = summary["results"] as! [[String: Any]]
        #expect(results.map { $0["variant"] as! String } == ["m1", "m2", "hy"])
        #expect(results.map { $0["pattern"] as! String } == ["m", "M", "M*-"])
        #expect(results.map { $0["layout"] as! String } == ["mamba", "mamba2", "nemotron_h"])
        for x in results {
            #expect(((x["eval"] as? [String: Any])?["bits_per_byte"] as? Double ?? 99) < 8.5, "\(x)")
            #expect((x["train_tokens_per_s"] as? Double ?? 0) > 0 && (x["peak_rss_mb"] as? Double ?? 0) > 0)
            #expect(FileManager.default.fileExists(atPath: tmp.file("runs/arch/\(x["variant"]!)/model.safetensors")))
        }
        #expect((summary["table"] as! [String]).count == 5)
        // A variant with an unknown key, or two variants of one name, are refused before anything runs.
        for (bad, phrase) in [("- {name: m1, layerz: 2}", "layerz"), ("- {name: m1}\n  - {name: m1}", "appears twice")] {
            try yaml.replacingOccurrences(of: "- {name: m1, mixer: mamba1, layers: 1}", with: bad)
                .write(toFile: tmp.file("bad.yaml"), atomically: false, encoding: .utf8)
            let b = try CLI.run(["run", tmp.file("bad.yaml"), "--runs-dir", tmp.file("runs2")])
            #expect(b.status != 0 && b.stderr.contains(phrase) && b.stderr.contains("bad.yaml"), "\(b.stderr)")
        }
    }

    /// Every committed pipeline parses, and every stack that pipelines/bytes-architectures.yaml names builds, with
    /// about equal parameter counts (within 15 % of each other).
    @Test func committedPipelinesParseAndArchitecturesBuild() throws {
        let dir = CLI.root + "/pipelines"
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) where f.hasSuffix(".yaml") {
            _ = try PipelineSpec.load(path: dir + "/" + f)
        }
        let spec = try PipelineSpec.load(path: dir + "/bytes-architectures.yaml")
        #expect(spec.variants.map(\.name) == ["mamba1", "mamba2", "hybrid", "attention"])
        let configs = try spec.variants.map { try $0.model.merged(over: spec.model).config(vocabSize: 256) }
        #expect(configs.map(\.pattern) == ["mmmm", "MMMM", "M-M*-M-", "*-*-*-*-"])
        let counts = configs.map(\.parameterCount)
        #expect(Double(counts.max()!) / Double(counts.min()!) < 1.15, "parameter counts \(counts)")
    }

    @Test func badStacksGetClearErrors() throws {
        let tmp = TempDir()
        let cases: [([String], String)] = [
            (["--pattern", "M+M"], "unknown block '+'"),
            (["--pattern", "mM"], "mixes Mamba-1"),
            (["--mixer", "mamba3"], "mamba3"),
            (["--pattern", "M*", "--layers", "3"], "disagrees with --pattern"),
            (["--pattern", "M", "--head-dim", "48", "--d-model", "32"], "multiple of --head-dim"),
            (["--pattern", "*", "--heads", "3", "--kv-heads", "2"], "multiple of num_key_value_heads"),
            (["--pattern", "M", "--groups", "3", "--head-dim", "16", "--d-model", "32"], "n_groups"),
            (["--pattern", "M-", "--d-model", "4611686018427387904"], "larger than this version supports"),
            (["--mixer", "mamba2", "--expand", "1e300"], "larger than this version supports"),
        ]
        for (args, phrase) in cases {
            let r = try CLI.run(["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("o"), "--steps", "1"] + args)
            #expect(r.status != 0 && r.stderr.hasPrefix("error: ") && r.stderr.contains(phrase), "\(args): \(r.stderr)")
        }
        // Pipeline values reach ModelSpec without the CLI's checks: zero, negative and non-finite sizes are errors.
        for edit in [{ (s: inout ModelSpec) in s.headDim = 0 }, { $0.attnHeadDim = 0 }, { $0.heads = -2 },
                     { $0.groups = 0 }, { $0.expand = .nan }, { $0.chunkSize = 0 }] {
            var spec = ModelSpec()
            spec.pattern = "M*-"
            edit(&spec)
            #expect(throws: MambaKitError.self) { _ = try spec.config(vocabSize: 256) }
        }
        // Checkpoints with block types this version does not hold, or shapes that disagree with their tensors.
        let dir = tmp.file("m")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("hf_nemotron_h_tiny/model.safetensors"), toPath: dir + "/model.safetensors")
        let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("hf_nemotron_h_tiny/config.json")))) as! [String: Any]
        let edits: [(String, Any, String)] = [
            ("layers_block_type", ["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "mlp"], "mixture-of-experts"),
            ("layers_block_type", ["linear_attention", "mlp", "sliding_attention", "mlp", "linear_attention", "mlp"], "unknown block type 'sliding_attention'"),
            ("num_key_value_heads", 4, "k_proj.weight"),
            ("mamba_head_dim", 8, "has shape"),
            // Absurd sizes are refused before anything is allocated, never an overflow trap.
            ("mamba_num_heads", 1 << 40, "larger than this version supports"),
            ("mamba_head_dim", Int.max, "larger than this version supports"),
            ("intermediate_size", 1 << 62, "larger than this version supports"),
            ("num_attention_heads", 0, "positive"),
        ]
        for (key, value, phrase) in edits {
            var c = cfg
            c[key] = value
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: dir + "/config.json"))
            let r = try CLI.run(["eval", "--model", dir, "--data", "samples/text/ruth.txt"])
            #expect(r.status != 0 && r.stderr.contains(phrase) && !r.stderr.contains("Fatal error"), "\(key): \(r.stderr)")
        }
    }
}
