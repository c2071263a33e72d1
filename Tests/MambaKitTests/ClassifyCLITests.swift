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
        try text.write(toFile: tsv, atomically: true, encoding: .utf8)
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
        try ">a\nACGT\n".write(toFile: tmp.file("d/x.fa"), atomically: true, encoding: .utf8)
        try "hello\n".write(toFile: tmp.file("d/y.fa"), atomically: true, encoding: .utf8)
        let r = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"), "--steps", "1"] + Self.tiny)
        #expect(r.status != 0)
        #expect(r.stderr.contains("error: expected '>' or '@'") && r.stderr.contains("y.fa, line 1"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("o/model.safetensors")))
        // A single class.
        try FileManager.default.removeItem(atPath: tmp.file("d/y.fa"))
        let one = try CLI.run(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("o"), "--steps", "1"] + Self.tiny)
        #expect(one.status != 0 && one.stderr.contains("at least two"), "\(one.stderr)")
        // A non-IUPAC letter under the DNA tokenizer names the file, the record and the position.
        try ">ok\nACGT\n>bad\nACGJT\n".write(toFile: tmp.file("d/y.fa"), atomically: true, encoding: .utf8)
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
