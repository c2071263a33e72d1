import Foundation

/// The `classify` task of a pipeline file:
///
///     task: classify
///     data:                                   # one of three sources
///       fragments: { sources: [a.fa.gz, b.fa.gz], lengths: [256, 1024], counts: [600, 100, 200],
///                    fractions: [0.8, 0.1, 0.1], seed: 1 }          # train/val/test, per class and length
///       shuffled_control: { positives: promoters.fa.gz, count: 1000, fractions: [0.8, 0.1, 0.1], seed: 1,
///                           positive_class: promoter, negative_class: shuffled }
///       directories: { train: DIR, val: DIR, test: DIR }
///     classify: { pooling: mean, strand: rc-average, rc_augment: true, audio_augment: true, baseline: false, class_weights: none,
///                 vocabulary: bytes, case: upper, iupac: keep, val_fraction: 0.1 }
///     pretrain: { data: [genome.fa.gz], steps: 300, seq_len: 1024, batch_size: 8, lr: 2e-3, compare_scratch: true }
///     model: {...}   train: {...}              # as for language models; `train` drives the classifier
///
/// Outputs under `runs/<name>/`: per variant (fragment length, and scratch/pretrained when `pretrain` compares)
/// `<variant>/data/{train,val,test}/`, `<variant>/model/` (the classifier run), `<variant>/eval.json` (test set),
/// `<variant>/predictions.tsv`; `pretrain/` (the language model); `summary.json`.
public struct ClassifySpec {
    public enum DataSource {
        case fragments(sources: [String], lengths: [Int], counts: [Int], fractions: [Double], seed: UInt64, maxAmbiguous: Double)
        case shuffledControl(positives: String, count: Int?, fractions: [Double], seed: UInt64, positiveClass: String, negativeClass: String)
        case directories(train: String, val: String?, test: String?)
    }

    public struct Pretrain {
        public var data: [String]
        public var train = PipelineSpec.TrainSpec()
        public var compareScratch = true
    }

    public var data: DataSource
    public var pooling = Pooling.mean
    public var strand = StrandStrategy.none
    public var rcAugment = true
    public var audioAugment = true
    /// Also fit the linear baseline (`classify baseline`: 5-mer frequencies for DNA, the log-mel summary for audio)
    /// on each variant's training set and measure it on the same test set.
    public var baseline = false
    public var classWeights = "none"
    public var tokenizer = ModelTokenizer.dna(DNATokenizer())
    public var valFraction = 0.1
    public var pretrain: Pretrain?

    /// [train, val, test] fractions: each in [0, 1], summing to at most 1.
    public static func checkFractions(_ f: [Double], _ source: SettingSource) throws {
        for v in f { try Settings.check("fraction", v, source) }
        guard f.reduce(0, +) <= 1 + 1e-9 else {
            throw MambaKitError(.config, "\(source.name(Settings.table["fraction"]!))s sum to \(f.reduce(0, +)), more than 1",
                                at: source.location)
        }
    }

    init(yaml o: [String: Any], reader r: YAMLReader) throws {
        let path = r.path
        guard let d = try r.map(o, "data") else { throw MambaKitError(.config, "task classify needs a data section", at: path) }
        try r.allow(d, ["format", "fragments", "shuffled_control", "directories"], in: "data")
        if let f = try r.string(d, "format"), f != "fasta" {
            throw MambaKitError(.config, "task classify reads data.format fasta (got '\(f)')", at: path)
        }
        func ints(_ m: [String: Any], _ k: String) throws -> [Int]? {
            guard let v = m[k] else { return nil }
            guard let a = v as? [Int] else { throw MambaKitError(.config, "'\(k)' must be a list of integers", at: path) }
            return a
        }
        func doubles(_ m: [String: Any], _ k: String) throws -> [Double]? {
            guard let v = m[k] else { return nil }
            guard let a = v as? [Any] else { throw MambaKitError(.config, "'\(k)' must be a list of numbers", at: path) }
            return try a.map { x in
                if let d = x as? Double { return d }
                if let i = x as? Int { return Double(i) }
                throw MambaKitError(.config, "'\(k)' must be a list of numbers (got \(x))", at: path)
            }
        }
        func strings(_ m: [String: Any], _ k: String) throws -> [String]? {
            guard let v = m[k] else { return nil }
            if let s = v as? String { return [s] }
            guard let a = v as? [Any], a.allSatisfy({ $0 is String }) else {
                throw MambaKitError(.config, "'\(k)' must be a path or a list of paths", at: path)
            }
            return a as? [String]
        }
        // A key given with no value (`fragments:`) is YAML null: not a source.
        let sources = [d["fragments"], d["shuffled_control"], d["directories"]].compactMap { $0 }.filter { !($0 is NSNull) }
        guard sources.count == 1 else {
            throw MambaKitError(.config, "data needs exactly one of fragments, shuffled_control, directories", at: path)
        }
        if let f = try r.map(d, "fragments") {
            try r.allow(f, ["sources", "lengths", "counts", "fractions", "seed", "max_ambiguous"], in: "data.fragments")
            guard let src = try strings(f, "sources"), !src.isEmpty, let lengths = try ints(f, "lengths"), !lengths.isEmpty
            else { throw MambaKitError(.config, "data.fragments needs sources and lengths", at: path) }
            let counts = try ints(f, "counts") ?? [800, 100, 200]
            let fractions = try doubles(f, "fractions") ?? [0.8, 0.1, 0.1]
            guard counts.count == 3, fractions.count == 3 else {
                throw MambaKitError(.config, "data.fragments counts and fractions are [train, val, test]", at: path)
            }
            let source = r.source("data.fragments")
            for v in lengths { try Settings.check("length", v, source) }
            for v in counts { try Settings.check("count", v, source) }
            try Self.checkFractions(fractions, source)
            let seed = try Settings.check("seed", try r.int(f, "seed") ?? 0, source)
            let maxAmbiguous = try Settings.check("max_ambiguous", try r.double(f, "max_ambiguous") ?? 0.1, source)
            data = .fragments(sources: src, lengths: lengths, counts: counts, fractions: fractions,
                              seed: UInt64(seed), maxAmbiguous: maxAmbiguous)
        } else if let c = try r.map(d, "shuffled_control") {
            try r.allow(c, ["positives", "count", "fractions", "seed", "positive_class", "negative_class"], in: "data.shuffled_control")
            guard let pos = try r.string(c, "positives") else {
                throw MambaKitError(.config, "data.shuffled_control needs positives", at: path)
            }
            let fractions = try doubles(c, "fractions") ?? [0.8, 0.1, 0.1]
            guard fractions.count == 3 else { throw MambaKitError(.config, "fractions are [train, val, test]", at: path) }
            let source = r.source("data.shuffled_control")
            try Self.checkFractions(fractions, source)
            let count = try Settings.check("count", try r.int(c, "count"), source)
            let seed = try Settings.check("seed", try r.int(c, "seed") ?? 0, source)
            data = .shuffledControl(positives: pos, count: count, fractions: fractions, seed: UInt64(seed),
                                    positiveClass: try r.string(c, "positive_class") ?? "positive",
                                    negativeClass: try r.string(c, "negative_class") ?? "shuffled")
        } else {
            guard let m = try r.map(d, "directories") else {
                throw MambaKitError(.config, "data needs exactly one of fragments, shuffled_control, directories", at: path)
            }
            try r.allow(m, ["train", "val", "test"], in: "data.directories")
            guard let t = try r.string(m, "train") else { throw MambaKitError(.config, "data.directories needs train", at: path) }
            data = .directories(train: t, val: try r.string(m, "val"), test: try r.string(m, "test"))
        }
        if let c = try r.map(o, "classify") {
            try r.allow(c, ["pooling", "strand", "rc_augment", "audio_augment", "baseline", "class_weights", "vocabulary", "case", "iupac", "val_fraction",
                            "format", "sample_rate", "quantizer"], in: "classify")
            if let p = try r.string(c, "pooling") {
                guard let v = Pooling(rawValue: p) else { throw MambaKitError(.config, "classify.pooling '\(p)' is not one of mean, last", at: path) }
                pooling = v
            }
            if let p = try r.string(c, "strand") {
                guard let v = StrandStrategy(rawValue: p) else { throw MambaKitError(.config, "classify.strand '\(p)' is not one of none, rc-average", at: path) }
                strand = v
            }
            rcAugment = try r.bool(c, "rc_augment") ?? rcAugment
            audioAugment = try r.bool(c, "audio_augment") ?? audioAugment
            baseline = try r.bool(c, "baseline") ?? baseline
            classWeights = try r.string(c, "class_weights") ?? classWeights
            let format = try r.string(c, "format") ?? "fasta"
            switch format {
            case "fasta":
                var t = [String: Any]()
                t["vocabulary"] = try r.string(c, "vocabulary") ?? "bytes"
                if let v = try r.string(c, "case") { t["case_policy"] = v }
                if let v = try r.string(c, "iupac") { t["iupac_policy"] = v }
                tokenizer = .dna(try DNATokenizer(json: t, location: "\(path), classify"))
            case "audio":
                var a: [String: Any] = ["type": "audio"]
                a["sample_rate"] = try r.int(c, "sample_rate") ?? 16000
                // As `classify train`: new classifiers normalise each clip before mu-law unless told otherwise.
                a["quantizer"] = try r.string(c, "quantizer") ?? AudioQuantizer.normalized.rawValue
                tokenizer = .audio(try AudioTokenizer(json: a, location: "\(path), classify"))
                rcAugment = false
            default:
                throw MambaKitError(.config, "classify.format '\(format)' is not one of fasta, audio", at: path)
            }
            valFraction = try Settings.check("val_fraction", try r.double(c, "val_fraction") ?? valFraction,
                                             r.source("classify"))
        }
        if let p = try r.map(o, "pretrain") {
            try r.allow(p, ["data", "steps", "batch_size", "seq_len", "lr", "warmup", "seed", "eval_every", "log_every",
                            "checkpoint_every", "compare_scratch"], in: "pretrain")
            guard let data = try strings(p, "data"), !data.isEmpty else {
                throw MambaKitError(.config, "pretrain needs data (genome files)", at: path)
            }
            var pre = Pretrain(data: data)
            pre.train.steps = try r.int(p, "steps")
            pre.train.batchSize = try r.int(p, "batch_size")
            pre.train.seqLen = try r.int(p, "seq_len")
            pre.train.lr = try r.double(p, "lr")
            pre.train.warmup = try r.int(p, "warmup")
            pre.train.seed = try r.int(p, "seed")
            pre.train.evalEvery = try r.int(p, "eval_every")
            pre.train.logEvery = try r.int(p, "log_every")
            pre.train.checkpointEvery = try r.int(p, "checkpoint_every")
            pre.compareScratch = try r.bool(p, "compare_scratch") ?? true
            try pre.train.validate(r.source("pretrain"))
            pretrain = pre
        }
    }
}

/// What a pipeline reports while it runs: a stage starting (a line for the log), or a training event.
public enum PipelineEvent {
    case stage(String)
    case training(Trainer.Event)
}

public enum ClassificationPipeline {
    public typealias Event = PipelineEvent

    /// Writes `<dir>/{train,val,test}/<class>.fa`: each positive and a dinucleotide-shuffled copy of it, the
    /// records split by a seeded permutation, so a shuffled control always sits in the same split as its source.
    public static func writeShuffledControl(positives: String, count: Int?, fractions: [Double], seed: UInt64,
                                            positiveClass: String, negativeClass: String, out: String) throws {
        var records = try SequenceReader(path: positives).readAll().filter { !$0.sequence.isEmpty }
        var rng = RNG(seed: seed)
        for i in stride(from: records.count - 1, to: 0, by: -1) { records.swapAt(i, rng.int(below: i + 1)) }
        if let count { records = Array(records.prefix(count)) }
        guard records.count >= 3 else { throw MambaKitError(.usage, "need at least 3 records", at: positives) }
        let names = ["train", "val", "test"]
        var start = 0
        for (k, f) in fractions.enumerated() {
            let end = k == fractions.count - 1 ? records.count : min(records.count, start + Int((Double(records.count) * f).rounded()))
            var pos = "", neg = ""
            for r in records[start..<end] {
                pos += ">\(r.name)\n" + String(decoding: r.sequence, as: UTF8.self) + "\n"
                neg += ">\(r.name)_shuffled\n" + String(decoding: SequenceShuffle.dinucleotide(r.sequence, rng: &rng), as: UTF8.self) + "\n"
            }
            try ensureDirectory(out + "/" + names[k])
            try AtomicFile.writeText(pos, to: out + "/" + names[k] + "/" + positiveClass + ".fa")
            try AtomicFile.writeText(neg, to: out + "/" + names[k] + "/" + negativeClass + ".fa")
            start = end
        }
    }

    /// Runs the whole pipeline; returns the summary written to `out/summary.json`.
    public static func run(_ spec: PipelineSpec, pipelinePath: String, out: String, resume: Bool,
                           events: (Event) -> Void, shouldStop: () -> Bool) throws -> [String: Any] {
        guard let c = spec.classify else { throw MambaKitError(.config, "not a classify pipeline", at: pipelinePath) }
        // Under mpirun every rank trains each model together; rank 0 alone prepares the data, evaluates and
        // writes (the others read what it prepared: the run directory is on a file system they all see).
        let group = ProcessGroup.world
        if group.isRoot { try ensureDirectory(out) }
        let clock = ContinuousClock()
        var summary: [String: Any] = ["name": spec.name, "pipeline": pipelinePath, "task": "classify"]

        // 1. Data variants: (name, train, val, test).
        var variants: [(name: String, train: String, val: String?, test: String?)] = []
        switch c.data {
        case let .fragments(sources, lengths, counts, fractions, seed, maxAmbiguous):
            for len in lengths {
                let dir = "\(out)/L\(len)/data"
                if group.isRoot && !(resume && FileManager.default.fileExists(atPath: dir + "/test")) {
                    events(.stage("cutting \(len)-base fragments into \(dir)"))
                    try FragmentSampler.write(
                        sources: LanguageModelTask.expandPaths(sources), length: len,
                        splits: zip(["train", "val", "test"], zip(fractions, counts)).map { FragmentSampler.Split(name: $0, fraction: $1.0, count: $1.1) },
                        seed: seed &+ UInt64(len), out: dir, maxAmbiguous: maxAmbiguous)
                }
                variants.append(("L\(len)", dir + "/train", dir + "/val", dir + "/test"))
            }
        case let .shuffledControl(positives, count, fractions, seed, pc, nc):
            let dir = out + "/data"
            if group.isRoot && !(resume && FileManager.default.fileExists(atPath: dir + "/test")) {
                events(.stage("writing positives and dinucleotide-shuffled controls into \(dir)"))
                try writeShuffledControl(positives: positives, count: count, fractions: fractions, seed: seed,
                                         positiveClass: pc, negativeClass: nc, out: dir)
            }
            variants.append(("main", dir + "/train", dir + "/val", dir + "/test"))
        case let .directories(train, val, test):
            variants.append(("main", train, val, test))
        }
        try group.barrier()

        // 2. Optional genome pretraining.
        var pretrainedDir: String? = nil
        if let p = c.pretrain {
            guard case let .dna(dna) = c.tokenizer else {
                throw MambaKitError(.config, "pretrain reads genomes: it needs a DNA tokenizer", at: pipelinePath)
            }
            let dir = out + "/pretrain"
            events(.stage("pretraining a DNA language model on \(p.data.joined(separator: ", "))"))
            let t0 = clock.now
            let trainer = try LanguageModelTask.train(
                format: .fasta, data: p.data, out: dir, model: spec.model, train: p.train, valFraction: 0.05,
                resume: resume && FileManager.default.fileExists(atPath: dir + "/checkpoints/latest"),
                tokenizer: dna, events: { events(.training($0)) }, shouldStop: shouldStop)
            summary["pretrain"] = ["dir": dir, "steps": trainer.step, "best_val_loss": trainer.bestLoss.isFinite ? trainer.bestLoss : NSNull(),
                                   "val_bits_per_base": trainer.bestLoss.isFinite ? trainer.bestLoss / log(2.0) : NSNull(),
                                   "seconds": seconds(clock.now - t0)]
            pretrainedDir = dir
        }

        // 3. Classifiers, test evaluation, predictions.
        var results: [[String: Any]] = []
        for v in variants {
            var inits: [(String, String?)] = [("", nil)]
            if let pd = pretrainedDir {
                inits = c.pretrain!.compareScratch ? [("scratch", nil), ("pretrained", pd)] : [("pretrained", pd)]
            }
            for (tag, initDir) in inits {
                let name = [v.name == "main" ? "" : v.name, tag].filter { !$0.isEmpty }.joined(separator: "-")
                let base = name.isEmpty ? out : out + "/" + name
                let modelDir = base + "/model"
                events(.stage("training the classifier \(name.isEmpty ? "" : name + " ")on \(v.train)"))
                var s = ClassificationTask.Settings(train: v.train, out: modelDir)
                s.val = v.val
                s.initFrom = initDir
                s.pooling = c.pooling
                s.strand = c.strand
                s.rcAugment = c.rcAugment
                s.audioAugment = c.audioAugment
                s.classWeights = c.classWeights
                s.tokenizer = c.tokenizer
                s.valFraction = c.valFraction
                s.resume = resume && FileManager.default.fileExists(atPath: modelDir + "/checkpoints/latest")
                let t0 = clock.now
                // With --init the shape comes from the pretrained model.
                let shape = initDir == nil ? spec.model : ModelSpec()
                let (trainer, _) = try ClassificationTask.train(s, model: shape, train: spec.train,
                                                                 events: { events(.training($0)) }, shouldStop: shouldStop)
                let trainSeconds = seconds(clock.now - t0)
                var row: [String: Any] = ["variant": name.isEmpty ? "main" : name, "model": modelDir, "steps": trainer.step,
                                          "best_step": trainer.bestStep, "train_seconds": trainSeconds,
                                          "parameters": trainer.model.config.parameterCount,
                                          "best_val_loss": trainer.bestLoss.isFinite ? trainer.bestLoss : NSNull()]
                if let test = v.test, group.isRoot {
                    events(.stage("evaluating on \(test)"))
                    let loaded = try ClassificationTask.Loaded(directory: modelDir)
                    let report = try ClassificationTask.evaluate(loaded, data: test, labels: nil)
                    var j = report.json
                    j["data"] = test
                    try AtomicFile.write(try JSONSerialization.data(withJSONObject: j, options: [.prettyPrinted, .sortedKeys]),
                                         to: base + "/eval.json")
                    try writePredictions(loaded, testDir: test, to: base + "/predictions.tsv")
                    row["test"] = ["accuracy": report.metrics.accuracy, "macro_f1": report.metrics.macroF1,
                                   "mcc": report.metrics.mcc, "loss": report.loss, "count": report.metrics.count,
                                   "sequences_per_s": Double(report.metrics.count) / max(report.seconds, 1e-9)]
                    events(.stage(String(format: "%@: test accuracy %.4f, macro-F1 %.4f, MCC %.4f",
                                         name.isEmpty ? spec.name : name, report.metrics.accuracy,
                                         report.metrics.macroF1, report.metrics.mcc)))
                    if c.baseline && (inits.count == 1 || tag == "scratch") {  // once per data variant
                        let features: LinearBaseline.Features
                        switch c.tokenizer {
                        case let .audio(t): features = .spectrum(sampleRate: t.sampleRate)
                        default: features = .kmers(5)
                        }
                        let b = try LinearBaseline.run(train: v.train, trainLabels: nil, data: test, labels: nil, features: features)
                        row["baseline"] = ["accuracy": b.metrics.accuracy, "macro_f1": b.metrics.macroF1,
                                           "mcc": b.metrics.mcc, "features": b.features, "seconds": b.seconds]
                        events(.stage(String(format: "baseline (%@): test accuracy %.4f, macro-F1 %.4f (%.1f s)",
                                             b.features, b.metrics.accuracy, b.metrics.macroF1, b.seconds)))
                    }
                }
                results.append(row)
            }
        }
        summary["results"] = results
        if group.isRoot {
            try AtomicFile.write(try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys]),
                                 to: out + "/summary.json")
        }
        return summary
    }

    /// `id, true, label, p_<class>…` for every record of every class file of a test directory.
    static func writePredictions(_ loaded: ClassificationTask.Loaded, testDir: String, to path: String) throws {
        var text = "id\ttrue\tlabel\t" + loaded.classes.map { "p_" + $0 }.joined(separator: "\t") + "\n"
        let files = try FileManager.default.contentsOfDirectory(atPath: testDir).filter { !$0.hasPrefix(".") }.sorted()
        for f in files {
            let truth = ClassificationDataset.className(ofFile: f)
            _ = try ClassificationTask.predict(loaded, input: testDir + "/" + f) { id, label, p in
                text += "\(id)\t\(truth)\t\(label)\t" + p.map { String(format: "%.6g", $0) }.joined(separator: "\t") + "\n"
            }
        }
        try AtomicFile.writeText(text, to: path)
    }
}
