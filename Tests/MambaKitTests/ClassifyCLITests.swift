import Foundation
import MambaKit
import Testing

/// `mambakit fragments`, `classify train|eval|predict` and `train --format fasta` run as a user runs them, on the
/// DNA under samples/dna/.
@Suite(.serialized) struct ClassifyCLITests {
    static let tiny = ["--d-model", "32", "--layers", "2", "--d-state", "8", "--batch-size", "8", "--log-every", "10",
                       "--eval-every", "20", "--checkpoint-every", "20", "--threads", "2"]

    @Test func fragmentsTrainEvalPredict() throws {
        let tmp = TempDir()
        let data = tmp.file("frag")
        let frag = try CLI.run(["fragments", "--from", "samples/dna/origin/lambda_phage.fa.gz",
                                "samples/dna/origin/h_sapiens.fa.gz", "--length", "100", "--counts", "40,10,20",
                                "--out", data, "--seed", "3"])
        #expect(frag.status == 0, "\(frag.stderr)")
        for split in ["train", "val", "test"] {
            for c in ["lambda_phage", "h_sapiens"] {
                let recs = try SequenceReader(path: "\(data)/\(split)/\(c).fa").readAll()
                #expect(recs.count == ["train": 40, "val": 10, "test": 20][split]!)
                #expect(recs.allSatisfy { $0.sequence.count == 100 })
            }
        }
        // Fragments are cut from the genome as they are: each one is found where its name says.
        let lambda = try SequenceReader(path: "samples/dna/origin/lambda_phage.fa.gz").readAll()[0].sequence
        for r in try SequenceReader(path: "\(data)/test/lambda_phage.fa").readAll().prefix(5) {
            let range = r.name.split(separator: ":").last!.split(separator: "-").map { Int($0)! }
            #expect(Array(lambda[(range[0] - 1)..<range[1]]) == r.sequence)
            // Test fragments come from the last 10 % of the genome (default fractions 0.8, 0.1, 0.1).
            #expect(range[0] - 1 >= Int(Double(lambda.count) * 0.9))
        }

        let model = tmp.file("clf")
        let train = try CLI.run(["classify", "train", "--train", data + "/train", "--val", data + "/val", "--out", model,
                                 "--steps", "40", "--lr", "4e-3", "--case", "upper", "--strand", "rc-average",
                                 "--class-weights", "balanced"] + Self.tiny)
        #expect(train.status == 0, "\(train.stderr)")
        #expect(train.stdout.isEmpty)
        let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/config.json"))) as! [String: Any]
        let mk = cfg["mambakit"] as! [String: Any]
        #expect(mk["classes"] as? [String] == ["h_sapiens", "lambda_phage"])
        #expect(mk["strand"] as? String == "rc-average")
        #expect(mk["task"] as? String == "classification")

        let eval = try CLI.run(["classify", "eval", "--model", model, "--data", data + "/test", "--json"])
        #expect(eval.status == 0, "\(eval.stderr)")
        let j = try JSONSerialization.jsonObject(with: eval.stdout) as! [String: Any]
        for k in ["accuracy", "macro_f1", "mcc", "classes", "confusion_matrix"] { #expect(j[k] != nil, "no \(k)") }
        let confusion = j["confusion_matrix"] as! [[Int]]
        #expect(confusion.flatMap { $0 }.reduce(0, +) == 40)
        #expect((j["accuracy"] as! Double) > 0.5, "accuracy \(j["accuracy"]!) after 40 steps")

        let pred = try CLI.run(["classify", "predict", "--model", model, "--input", data + "/test/h_sapiens.fa"])
        #expect(pred.status == 0, "\(pred.stderr)")
        let lines = pred.out.split(separator: "\n")
        #expect(lines.first == "id\tlabel\tp_h_sapiens\tp_lambda_phage")
        #expect(lines.count == 21)
        for line in lines.dropFirst() {
            let cols = line.split(separator: "\t")
            #expect(cols.count == 4)
            let p = cols[2...].map { Double($0)! }
            #expect(abs(p.reduce(0, +) - 1) < 1e-4)
            #expect(cols[1] == (p[0] >= p[1] ? "h_sapiens" : "lambda_phage"))
        }
        // The predicted probabilities agree with eval: count the rows labelled h_sapiens.
        let right = lines.dropFirst().filter { $0.split(separator: "\t")[1] == "h_sapiens" }.count
        #expect(right == confusion[0][0])

        // A FASTA plus a labels TSV is the other layout.
        let tsv = tmp.file("labels.tsv")
        var text = "id\tlabel\n"
        var fasta = ""
        for c in ["h_sapiens", "lambda_phage"] {
            for r in try SequenceReader(path: "\(data)/test/\(c).fa").readAll() {
                text += "\(r.name)\t\(c)\n"
                fasta += ">\(r.name)\n" + String(decoding: r.sequence, as: UTF8.self) + "\n"
            }
        }
        try text.write(toFile: tsv, atomically: false, encoding: .utf8)
        try Data(Gzip.compress(Array(fasta.utf8))).write(to: URL(fileURLWithPath: tmp.file("all.fa.gz")))
        let eval2 = try CLI.run(["classify", "eval", "--model", model, "--data", tmp.file("all.fa.gz"), "--labels", tsv, "--json"])
        #expect(eval2.status == 0, "\(eval2.stderr)")
        let j2 = try JSONSerialization.jsonObject(with: eval2.stdout) as! [String: Any]
        #expect(j2["confusion_matrix"] as! [[Int]] == confusion)
    }

    @Test func badInputGetsAClearError() throws {
        let tmp = TempDir()
        // A class directory whose file is not FASTA.
        try FileManager.default.createDirectory(atPath: tmp.file("d"), withIntermediateDirectories: true)
        try ">a\nACGT\n".write(toFile: tmp.file("d/x.fa"), atomically: false, encoding: .utf8)
        try "hello\n".write(toFile: tmp.file("d/y.fa"), atomically: false, encoding: .utf8)
        let r = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"), "--steps", "1"] + Self.tiny)
        #expect(r.status != 0)
        #expect(r.stderr.contains("error: expected '>' or '@'") && r.stderr.contains("y.fa, line 1"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("o/model.safetensors")))
        // A single class.
        try FileManager.default.removeItem(atPath: tmp.file("d/y.fa"))
        let one = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"), "--steps", "1"] + Self.tiny)
        #expect(one.status != 0 && one.stderr.contains("at least two"), "\(one.stderr)")
        // A non-IUPAC letter under the DNA tokenizer names the file, the record and the position.
        try ">ok\nACGT\n>bad\nACGJT\n".write(toFile: tmp.file("d/y.fa"), atomically: false, encoding: .utf8)
        let bad = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"), "--steps", "1"] + Self.tiny)
        #expect(bad.status != 0 && bad.stderr.contains("y.fa, record 2 'bad'"), "\(bad.stderr)")
        // predict on a model that is not a classifier.
        let lm = tmp.file("lm")
        let t = try CLI.run(["train", "--format", "fasta", "--data", "samples/dna/origin/lambda_phage.fa.gz", "--out", lm,
                             "--steps", "2", "--seq-len", "64"] + Self.tiny)
        #expect(t.status == 0, "\(t.stderr)")
        let p = try CLI.run(["classify", "predict", "--model", lm, "--input", tmp.file("d/x.fa")])
        #expect(p.status != 0 && p.stderr.contains("not a classifier"), "\(p.stderr)")
        #expect(p.stdout.isEmpty)
    }

    @Test func fastaPretrainingThenFineTuning() throws {
        let tmp = TempDir()
        let lm = tmp.file("lm")
        let t = try CLI.run(["train", "--format", "fasta", "--data", "samples/dna/origin/lambda_phage.fa.gz", "--out", lm,
                             "--steps", "30", "--seq-len", "128", "--case", "upper", "--vocabulary", "nucleotide",
                             "--lr", "5e-3", "--warmup", "5"] + Self.tiny)
        #expect(t.status == 0, "\(t.stderr)")
        let e = try CLI.run(["eval", "--model", lm, "--data", "samples/dna/origin/lambda_phage.fa.gz", "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let j = try JSONSerialization.jsonObject(with: e.stdout) as! [String: Any]
        #expect(j["tokens"] as? Int == 48_502 - 1)
        #expect(j["records"] as? Int == 1)
        // Uniform over the 13-token vocabulary is 3.7 bits; over A, C, G, T 2 bits.
        #expect((j["bits_per_base"] as! Double) < 2.1, "bits per base \(j["bits_per_base"]!) after 30 steps")
        // Generation writes bases (the nucleotide vocabulary's specials, never seen in training, are not sampled).
        let g = try CLI.run(["generate", "--model", lm, "--prompt", "ACGT", "--max-new-tokens", "30", "--seed", "1"])
        #expect(g.status == 0, "\(g.stderr)")
        #expect(g.stdout.count == 30 && g.stdout.allSatisfy { Array("ACGTNacgtn".utf8).contains($0) }, "\(g.out)")

        // Fine-tune from it: the shape comes from the pretrained model; shape flags are refused.
        let data = tmp.file("frag")
        #expect(try CLI.run(["fragments", "--from", "samples/dna/origin/lambda_phage.fa.gz", "samples/dna/origin/s_aureus.fa.gz",
                             "--length", "64", "--counts", "20,6,6", "--out", data]).status == 0)
        let refused = try CLI.run(["classify", "train", "--train", data + "/train", "--out", tmp.file("c0"), "--init", lm,
                                   "--d-model", "64", "--steps", "2"])
        #expect(refused.status != 0 && refused.stderr.contains("--d-model cannot be set with --init"), "\(refused.stderr)")
        let ft = try CLI.run(["classify", "train", "--train", data + "/train", "--val", data + "/val", "--out", tmp.file("c"),
                              "--init", lm, "--steps", "4", "--batch-size", "4", "--threads", "2"])
        #expect(ft.status == 0, "\(ft.stderr)")
        // The backbone starts from the pretrained weights: before any step they are equal, so after 4 small steps
        // the embedding is still close to the pretrained one and far from a fresh initialisation.
        let pre = try MambaModel.load(directory: lm).params.values("backbone.embeddings.weight")
        let tuned = try MambaModel.load(directory: tmp.file("c")).params.values("backbone.embeddings.weight")
        #expect(maxAbsDiff(pre, tuned) < 0.05, "fine-tuned embedding moved \(maxAbsDiff(pre, tuned)) from the pretrained one")
    }
}

/// The training budget of `classify train` when it is not given in steps (`ClassificationTask.Budget`).
@Suite struct ClassificationBudgetTests {
    @Test func automaticBudgetIsEpochsOfTheData() {
        // 1,080 sequences in batches of 8: 135 steps an epoch.
        let b = ClassificationTask.Budget(trainSequences: 1080, batchSize: 8, train: PipelineSpec.TrainSpec())
        #expect(b.automatic && b.epochs == ClassificationTask.Budget.defaultEpochs)
        #expect(b.stepsPerEpoch == 135)
        #expect(b.steps == 135 * ClassificationTask.Budget.defaultEpochs)
        #expect(b.evalEvery == 135 && b.patience == ClassificationTask.Budget.defaultPatience)
        #expect(b.warmup == 100)
        #expect(b.checkpointEvery == 405, "a checkpoint at a validation about every 500 steps")
        // An epoch that does not divide evenly rounds up; a tiny set gets a short warmup, not a run of warmup.
        let tiny = ClassificationTask.Budget(trainSequences: 9, batchSize: 8, train: PipelineSpec.TrainSpec())
        #expect(tiny.stepsPerEpoch == 2 && tiny.steps == 40 && tiny.warmup == 4 && tiny.evalEvery == 2)
        // A large set is capped, and validates at least every maxEvalInterval steps.
        let big = ClassificationTask.Budget(trainSequences: 1_000_000, batchSize: 8, train: PipelineSpec.TrainSpec())
        #expect(big.steps == ClassificationTask.Budget.maxAutomaticSteps)
        #expect(big.evalEvery == ClassificationTask.Budget.maxEvalInterval)
        #expect(big.summary.contains("capped at 10000 steps (0.1 epochs)"), "\(big.summary)")
        // Long sequences are capped by tokens: 1,080 clips of 4,000 samples make 4.32M tokens an epoch, so 2^24
        // tokens are 3.88 epochs, 524 steps.
        let audio = ClassificationTask.Budget(trainSequences: 1080, trainTokens: 1080 * 4000, batchSize: 8,
                                              train: PipelineSpec.TrainSpec())
        #expect(audio.steps == 524, "\(audio.steps)")
        #expect(audio.summary.contains("capped at 524 steps (3.9 epochs)"), "\(audio.summary)")
        // The token cap never cuts below one epoch.
        let long = ClassificationTask.Budget(trainSequences: 80, trainTokens: 1 << 26, batchSize: 8,
                                             train: PipelineSpec.TrainSpec())
        #expect(long.steps == long.stepsPerEpoch)
        // Short DNA fragments are not capped: 540k tokens an epoch, 20 epochs.
        let dna = ClassificationTask.Budget(trainSequences: 1080, trainTokens: 540_000, batchSize: 8,
                                            train: PipelineSpec.TrainSpec())
        #expect(dna.steps == 2700)
    }

    @Test func explicitValuesAreKept() {
        var t = PipelineSpec.TrainSpec()
        t.epochs = 3
        t.evalEvery = 50
        t.patience = 0
        let e = ClassificationTask.Budget(trainSequences: 1080, batchSize: 8, train: t)
        #expect(!e.automatic && e.epochs == 3 && e.steps == 405 && e.evalEvery == 50 && e.patience == 0)
        // Epochs asked for are not capped by the automatic limit.
        t = PipelineSpec.TrainSpec()
        t.epochs = 2
        let big = ClassificationTask.Budget(trainSequences: 1_000_000, batchSize: 8, train: t)
        #expect(big.steps == 250_000)
        // Steps keep the trainer's defaults (no early stopping unless asked).
        t = PipelineSpec.TrainSpec()
        t.steps = 300
        let s = ClassificationTask.Budget(trainSequences: 1080, batchSize: 8, train: t)
        let d = Trainer.Options()
        #expect(s.epochs == nil && s.steps == 300 && s.patience == 0 && s.evalEvery == d.evalEvery && s.warmup == d.warmup)
    }

    @Test func stepsAndEpochsAreOneBudget() throws {
        var flags = PipelineSpec.TrainSpec()
        flags.epochs = 4
        var file = PipelineSpec.TrainSpec()
        file.steps = 300
        // A value given over another source replaces the other form of the budget.
        let m = flags.merged(over: file)
        #expect(m.epochs == 4 && m.steps == nil)
        let back = file.merged(over: flags)
        #expect(back.steps == 300 && back.epochs == nil)
        // Both in one source is an error naming both.
        var both = PipelineSpec.TrainSpec()
        both.steps = 10
        both.epochs = 2
        let e = #expect(throws: MambaKitError.self) { try both.validate(.file("p.yaml", section: "train")) }
        #expect(e?.message.contains("train.steps and train.epochs") == true, "\(String(describing: e))")
        #expect(e?.location == "p.yaml")
    }

    /// A first run with no schedule flags says what it will do and how long it will take, then stops on its own.
    @Test(.serialized) func firstRunSaysItsBudgetAndTime() throws {
        let tmp = TempDir()
        try FileManager.default.createDirectory(atPath: tmp.file("d"), withIntermediateDirectories: true)
        var rng = RNG(seed: 5)
        for (name, alphabet) in [("at", Array("AT".utf8)), ("gc", Array("GC".utf8))] {
            var s = ""
            for i in 0..<20 { s += ">\(name)\(i)\n" + String(decoding: (0..<40).map { _ in alphabet[rng.int(below: 2)] }, as: UTF8.self) + "\n" }
            try s.write(toFile: tmp.file("d/\(name).fa"), atomically: false, encoding: .utf8)
        }
        let r = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"),
                             "--d-model", "16", "--layers", "1", "--d-state", "4", "--threads", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        // 36 training sequences (a stratified tenth held out) in batches of 8: 5 steps an epoch.
        #expect(r.stderr.contains("budget: up to 20 epochs of 5 steps = 100 steps, validation every epoch, early stop after 3"), "\(r.stderr)")
        #expect(r.stderr.contains("step 4  time: "), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
        let metrics = try String(contentsOfFile: tmp.file("o/metrics.jsonl"), encoding: .utf8)
        let validations = metrics.split(separator: "\n").filter { $0.contains("val_loss") }.count
        let stopped = metrics.contains("\"early_stop\"")
        #expect(stopped || validations == 20, "every epoch validated until the end or an early stop")
        // --epochs on a resumed run sets its total length, as --steps does: 1 epoch, then 2.
        let tiny = ["--d-model", "16", "--layers", "1", "--d-state", "4", "--threads", "2"]
        let one = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o3"), "--epochs", "1"] + tiny)
        #expect(one.status == 0, "\(one.stderr)")
        let two = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o3"), "--epochs", "2", "--resume"] + tiny)
        #expect(two.status == 0, "\(two.stderr)")
        let latest = try String(contentsOfFile: tmp.file("o3/checkpoints/latest"), encoding: .utf8)
        #expect(latest.hasPrefix("step-00000010"), "\(latest)")
        let c = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o2"), "--steps", "5", "--epochs", "2"])
        #expect(c.status != 0 && c.stderr.contains("--steps and --epochs"), "\(c.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("o2/model.safetensors")))
    }
}
