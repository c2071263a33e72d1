import Foundation

/// DNA sequence classification end to end, shared by `mambakit classify train|eval|predict` and pipelines.
///
/// A classifier is a model directory like any other (config.json + model.safetensors) whose `mambakit` object says
/// `task: classification` and holds the classes, pooling, strand strategy and tokenizer, so eval and predict need
/// nothing but the directory.
public enum ClassificationTask {
    /// Settings of `classify train` beyond the shared model and schedule options.
    public struct Settings: Sendable {
        public var train: String
        public var trainLabels: String?
        public var val: String?
        public var valLabels: String?
        public var out: String
        /// A pretrained model directory (a language model from `train --format fasta`, or a classifier) whose
        /// backbone initialises this one.
        public var initFrom: String?
        public var pooling: Pooling = .mean
        public var strand: StrandStrategy = .none
        public var rcAugment = true
        /// Audio: speed, gain and shift augmentation in training (`AudioAugmentation`).
        public var audioAugment = true
        /// "balanced", "none", or comma-separated weights in class order.
        public var classWeights = "none"
        public var tokenizer = ModelTokenizer.dna(DNATokenizer())
        /// Validation fraction held out of --train when no --val is given.
        public var valFraction = 0.1
        public var resume = false
        public init(train: String, out: String) {
            self.train = train
            self.out = out
        }
    }

    /// Stores what eval/predict need in the config's `mambakit` object.
    static func annotate(_ c: inout MambaConfig, classes: [String], s: Settings) {
        c.mambakit["task"] = "classification"
        c.mambakit["format"] = s.tokenizer.format.rawValue
        c.mambakit["tokenizer"] = s.tokenizer.json
        c.mambakit["pooling"] = s.pooling.rawValue
        c.mambakit["strand"] = s.strand.rawValue
        c.classLabels = classes
    }

    /// The tokenizer a model was trained with (`mambakit.tokenizer`).
    public static func tokenizer(of c: MambaConfig, at location: String) throws -> ModelTokenizer {
        try ModelTokenizer(config: c, at: location)
    }

    /// The DNA tokenizer of a model that reads sequences: a DNA model's own, or for a byte model the byte
    /// vocabulary with case and IUPAC letters kept.
    public static func dnaTokenizer(of c: MambaConfig, at location: String) throws -> DNATokenizer {
        switch try ModelTokenizer(config: c, at: location) {
        case let .dna(t): return t
        case .bytes: return DNATokenizer()
        case .audio: throw MambaKitError(.usage, "an audio model does not read DNA sequences", at: location)
        }
    }

    public static func classWeights(_ spec: String, train: ClassificationDataset) throws -> [Float]? {
        switch spec {
        case "none", "": return nil
        case "balanced":
            return ClassificationObjective.balancedWeights(labels: train.examples.map(\.label), classes: train.classes.count)
        default:
            let w = spec.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
            guard w.count == train.classes.count, w.allSatisfy({ $0 != nil && $0! > 0 && $0!.isFinite }) else {
                throw MambaKitError(.usage, "--class-weights '\(spec)': expected balanced, none, or \(train.classes.count) positive numbers in class order (\(train.classes.joined(separator: ", ")))")
            }
            return w.map { $0! }
        }
    }

    /// The width and depth of a new DNA classifier trained from scratch on at most `smallDataTokens` tokens, when
    /// neither is given: on 1,080 fragments of 500 bp (5 genomes, BENCHMARKS.md) it reached 91 % test accuracy in
    /// 91 s, where the general default (4 layers of width 256) needs ten times as long per step.
    public static let smallDataTokens = 4_000_000
    public static var smallDataSpec: ModelSpec {
        var m = ModelSpec()
        m.dModel = 64
        m.layers = 2
        return m
    }

    /// The shape of a new audio classifier trained from scratch when no shape is given: the multi-scale backbone
    /// with no blocks at the sample rate — the embedding of each sample, a down-pool of 16 samples (2 ms at 8 kHz: a
    /// learnt filter bank of 128 outputs) — then two Mamba blocks of width 128 every 16 samples and two of width 256
    /// every 64, and the up-pools back to the sample rate for mean pooling. On 1,500 FSDD clips of three speakers it
    /// trains at about 200k samples/s on two cores (seven times the flat model) and, with per-clip normalisation,
    /// reaches 0.25 on a speaker it never heard — twice the flat model's, still below the log-mel softmax baseline's
    /// 0.41 (BENCHMARKS.md).
    public static var defaultAudioSpec: ModelSpec {
        var m = ModelSpec()
        m.unet = [16, 4]
        m.stageLayers = [0, 2, 2]
        m.dModel = 64
        return m
    }
    /// The token cap of an automatic budget for `defaultAudioSpec`: 2^26 tokens, about 6 minutes at its speed.
    public static let defaultAudioTokens = 1 << 26

    /// How long a new run trains: `steps` when given, else a number of epochs (passes over the training sequences
    /// in expectation: batches are drawn with replacement) with early stopping on the validation loss.
    ///
    /// With neither `steps` nor `epochs` the budget is sized to the data: up to `defaultEpochs` epochs, at most
    /// `maxAutomaticSteps` steps and `maxAutomaticTokens` training tokens, a validation every epoch (at least every
    /// `maxEvalInterval` steps), and a stop after `defaultPatience` validations without a lower validation loss;
    /// the model kept is the best one by validation loss. Values given explicitly (`eval_every`, `patience`,
    /// `warmup`, `checkpoint_every`) are kept.
    public struct Budget: Sendable, Equatable {
        public static let defaultEpochs = 20
        public static let maxAutomaticSteps = 10_000
        /// 2^24 tokens: about 6 minutes for the small DNA classifier and 9 for a flat audio one at their measured 45k
        /// and 30k tokens/s on two cores, before early stopping (the multi-scale audio default: `defaultAudioTokens`).
        public static let maxAutomaticTokens = 1 << 24
        public static let maxEvalInterval = 500
        public static let defaultPatience = 3

        /// Steps in one epoch: ⌈training sequences / batch size⌉.
        public let stepsPerEpoch: Int
        /// The epochs asked for (or `defaultEpochs`), nil when the budget was given in steps.
        public let epochs: Int?
        /// Whether the budget came from the data alone (no `steps`, no `epochs`).
        public let automatic: Bool
        public let steps: Int
        public let evalEvery: Int
        public let patience: Int
        public let warmup: Int
        public let checkpointEvery: Int

        /// `trainTokens`: the tokens of one epoch (each sequence cropped to the training window); 0 if unknown.
        /// `tokenCap`: the most training tokens of an automatic budget (`maxAutomaticTokens` unless the model is known
        /// to be cheaper per token).
        public init(trainSequences n: Int, trainTokens: Int = 0, batchSize: Int, train t: PipelineSpec.TrainSpec,
                    tokenCap: Int = maxAutomaticTokens) {
            let defaults = Trainer.Options()
            stepsPerEpoch = max(1, (n + batchSize - 1) / max(batchSize, 1))
            if let steps = t.steps {
                epochs = nil
                automatic = false
                self.steps = steps
                evalEvery = t.evalEvery ?? defaults.evalEvery
                patience = t.patience ?? defaults.patience
                warmup = t.warmup ?? defaults.warmup
                checkpointEvery = t.checkpointEvery ?? defaults.checkpointEvery
                return
            }
            automatic = t.epochs == nil
            let e = t.epochs ?? Self.defaultEpochs
            epochs = e
            let (product, overflow) = e.multipliedReportingOverflow(by: stepsPerEpoch)
            var cap = automatic ? Self.maxAutomaticSteps : MambaKit.Settings.maxSteps
            if automatic && trainTokens > 0 {
                let byTokens = Double(tokenCap) / Double(trainTokens) * Double(stepsPerEpoch)
                cap = min(cap, max(stepsPerEpoch, Int(byTokens.rounded(.down))))
            }
            steps = overflow ? cap : min(product, cap)
            let every = t.evalEvery ?? min(stepsPerEpoch, Self.maxEvalInterval)
            evalEvery = every
            patience = t.patience ?? Self.defaultPatience
            // A tenth of the run, at most the usual 100 steps, so a short run is not all warmup.
            warmup = t.warmup ?? min(defaults.warmup, max(1, steps / 10))
            // A checkpoint at a validation about every 500 steps (the model itself is saved at every improvement).
            checkpointEvery = t.checkpointEvery ?? (every == 0 ? 0 : every * max(1, Self.maxEvalInterval / every))
        }

        func apply(to o: inout Trainer.Options) {
            o.steps = steps
            o.evalEvery = evalEvery
            o.patience = patience
            o.warmup = warmup
            o.checkpointEvery = checkpointEvery
        }

        /// One line for the log: what the run will do.
        public var summary: String {
            guard let epochs else {
                return "budget: \(steps) steps (\(String(format: "%.1f", Double(steps) / Double(stepsPerEpoch))) epochs of \(stepsPerEpoch) steps)"
            }
            var s = "budget: up to \(epochs) epochs of \(stepsPerEpoch) steps"
            let full = epochs.multipliedReportingOverflow(by: stepsPerEpoch)
            if full.overflow || full.partialValue > steps {
                s += ", capped at \(steps) steps (\(String(format: "%.1f", Double(steps) / Double(stepsPerEpoch))) epochs)"
            } else {
                s += " = \(steps) steps"
            }
            s += evalEvery == stepsPerEpoch ? ", validation every epoch" : ", validation every \(evalEvery) steps"
            if patience > 0 { s += ", early stop after \(patience) without a lower loss" }
            if automatic { s += " (sized to the data: --epochs or --steps to choose)" }
            return s
        }
    }

    /// Trains (or resumes) a classifier. The best model by validation loss is kept in `out` (early stopping after
    /// `patience` validations without improvement when it is positive).
    public static func train(_ s: Settings, model modelSpec: ModelSpec, train trainSpec: PipelineSpec.TrainSpec,
                             events: (Trainer.Event) -> Void, shouldStop: () -> Bool) throws -> (Trainer, ClassificationObjective) {
        // The run directory is ours from before a resume reads it until training ends.
        if trainSpec.seqLenWarmup != nil || trainSpec.carryState != nil || trainSpec.carryReset != nil {
            throw MambaKitError(.usage, "seq_len_warmup, carry_state and carry_reset are for language models' windows; a classifier reads whole sequences")
        }
        let lock = try RunLock(directory: s.out)
        defer { withExtendedLifetime(lock) {} }
        var baseOptions = Trainer.Options()
        baseOptions.keepBest = true
        var baseSpec = ModelSpec()
        var settings = s
        if s.resume {
            guard let saved = try Trainer.savedRun(outDir: s.out) else {
                throw MambaKitError(.io, "no checkpoint to resume from (checkpoints/latest is missing)", at: s.out)
            }
            baseOptions = saved.options
            baseSpec = ModelSpec(saved.config)
            settings.tokenizer = try tokenizer(of: saved.config, at: s.out)
            settings.pooling = Pooling(rawValue: saved.config.mambakit["pooling"] as? String ?? "") ?? s.pooling
            settings.strand = StrandStrategy(rawValue: saved.config.mambakit["strand"] as? String ?? "") ?? s.strand
        }
        // A pretrained backbone fixes the shape and the tokenizer.
        var pretrained: MambaModel? = nil
        if let i = s.initFrom, !s.resume {
            let m = try MambaModel.load(directory: i)
            settings.tokenizer = try tokenizer(of: m.config, at: i + "/config.json")
            if let flag = modelSpec.firstShapeFlag {
                throw MambaKitError(.usage, "\(flag) cannot be set with --init: the shape comes from the pretrained model", at: i)
            }
            baseSpec = ModelSpec(m.config)
            pretrained = m
        }
        var budget: Budget? = nil
        let tok = settings.tokenizer
        if case .audio = tok, s.rcAugment || settings.strand == .rcAverage {
            settings.strand = .none
        }
        let rcAugment = s.rcAugment && tok.complementIDs != nil
        var audioAugmentation: AudioAugmentation? = nil
        if case let .audio(t) = tok, s.audioAugment { audioAugmentation = AudioAugmentation(tokenizer: t) }
        var trainSet = try ClassificationDataset.load(s.train, labels: s.trainLabels, tokenizer: tok)
        var valSet: ClassificationDataset
        var options = trainSpec.apply(to: baseOptions)
        if let v = s.val {
            valSet = try ClassificationDataset.load(v, labels: s.valLabels, tokenizer: tok, classes: trainSet.classes)
        } else {
            let split = trainSet.stratifiedSplit(fraction: s.valFraction, seed: options.seed)
            trainSet = split.train
            valSet = split.held
        }
        guard !trainSet.examples.isEmpty else { throw MambaKitError(.usage, "no training sequences", at: s.train) }
        for (k, n) in trainSet.classCounts.enumerated() where n == 0 {
            throw MambaKitError(.usage, "class '\(trainSet.classes[k])' has no training sequences", at: s.train)
        }
        let longest = trainSet.examples.map(\.tokens.count).max() ?? 1
        if trainSpec.seqLen == nil && !s.resume { options.seqLen = min(longest, 4096) }
        // What one epoch reads: every training sequence, cropped to the window.
        let tokens = trainSet.examples.reduce(0) { $0 + min($1.tokens.count, options.seqLen) }
        // A new audio classifier with no shape given gets the multi-scale default, whose tokens are cheaper.
        let audioDefault: Bool
        if case .audio = tok {
            let m = modelSpec
            audioDefault = !s.resume && pretrained == nil && m.dModel == nil && m.layers == nil && m.mixer == nil
                && m.pattern == nil && m.unet == nil && m.stageLayers == nil
        } else {
            audioDefault = false
        }
        // Its schedule, measured with it (BENCHMARKS.md): batches of 16 at a peak rate of 3e-3, unless given.
        if audioDefault {
            if trainSpec.batchSize == nil { options.batchSize = 16 }
            if trainSpec.lr == nil { options.lr = 3e-3 }
        }
        if !s.resume {
            let b = Budget(trainSequences: trainSet.examples.count, trainTokens: tokens, batchSize: options.batchSize,
                           train: trainSpec, tokenCap: audioDefault ? defaultAudioTokens : Budget.maxAutomaticTokens)
            b.apply(to: &options)
            budget = b
        } else if trainSpec.epochs != nil {
            // A resumed run keeps its schedule; --epochs sets the total length (from step 0) like --steps does.
            let b = Budget(trainSequences: trainSet.examples.count, trainTokens: tokens, batchSize: options.batchSize,
                           train: trainSpec)
            options.steps = b.steps
            budget = b
        }
        try options.validate(.api("classify train"))
        var spec = modelSpec.merged(over: baseSpec)
        var notes: [String] = []
        if audioDefault {
            spec = spec.merged(over: Self.defaultAudioSpec)
            notes.append("model: the multi-scale audio default (no blocks at the sample rate, a 16-sample down-pool, 2 Mamba blocks of width 128 every 16 samples and 2 of width 256 every 64; --d-model, --layers or --unet to choose)")
        } else if case .audio = tok {
            spec = spec.merged(over: LanguageModelTask.audioDefaults(for: spec))
        } else if !s.resume && pretrained == nil && spec.dModel == nil && spec.layers == nil && spec.pattern == nil {
            if tokens <= smallDataTokens {
                spec = spec.merged(over: smallDataSpec)
                notes.append("model: \(smallDataSpec.layers ?? 0) layers of width \(smallDataSpec.dModel ?? 0) for a small training set (\(tokens) tokens; --d-model and --layers to choose)")
            }
        }
        var config = try spec.config(vocabSize: tok.vocabSize)
        if let p = pretrained { config = p.config; config.mambakit = [:] }
        annotate(&config, classes: trainSet.classes, s: settings)
        try LanguageModelTask.checkTrainingMemory(config: config, options: options, lmHead: false)
        let model: MambaModel
        if s.resume {
            model = try MambaModel(config: config)
        } else {
            if FileManager.default.fileExists(atPath: s.out + "/checkpoints/latest") {
                throw MambaKitError(.usage, "the output directory already holds a training run; pass --resume to continue it or choose another --out", at: s.out)
            }
            model = try MambaModel(config: config, seed: options.seed)
            if let p = pretrained {
                // Every backbone tensor from the pretrained model; the classifier head stays freshly initialised.
                for v in p.params.layout.views where model.params.layout.contains(v.name) && !v.name.hasPrefix("classifier.") {
                    model.params.ptr(v.name).update(from: p.params.ptr(v), count: v.count)
                }
            }
        }
        let classifier = try SequenceClassifier(model: model, pooling: settings.pooling)
        let weights = try classWeights(s.classWeights, train: trainSet)
        let objective = try ClassificationObjective(
            classifier: classifier, train: trainSet.examples, validation: valSet.examples, batchSize: options.batchSize,
            maxLength: options.seqLen, classWeights: weights, complement: tok.complementIDs, rcAugment: rcAugment,
            audioAugment: audioAugmentation, strand: settings.strand, chunk: 2048)
        let fingerprint = trainSet.fingerprint + (s.val.map { _ in valSet.fingerprint } ?? [])
        let trainer = try Trainer(model: model, objective: objective, options: options, outDir: s.out, dataFingerprint: fingerprint)
        if s.resume { try trainer.resume() }
        if let budget { notes.append(budget.summary) }
        for n in notes { events(.note(n)) }
        try trainer.run(events: events, shouldStop: shouldStop)
        return (trainer, objective)
    }

    /// A trained classifier with its tokenizer and settings.
    public struct Loaded {
        public let classifier: SequenceClassifier
        public let tokenizer: ModelTokenizer
        public var strand: StrandStrategy
        public var classes: [String] { classifier.classes }

        public init(directory: String) throws {
            let m = try MambaModel.load(directory: directory)
            guard !m.config.classLabels.isEmpty else {
                throw MambaKitError(.usage, "not a classifier (config.json names no mambakit.classes); train one with mambakit classify train", at: directory)
            }
            classifier = try SequenceClassifier(model: m)
            tokenizer = try ClassificationTask.tokenizer(of: m.config, at: directory + "/config.json")
            let name = m.config.mambakit["strand"] as? String ?? "none"
            guard let st = StrandStrategy(rawValue: name) else {
                throw MambaKitError(.config, "mambakit.strand '\(name)' is not one of none, rc-average", at: directory)
            }
            strand = st
        }

        public func complement() -> [Int32]? { strand == .rcAverage ? tokenizer.complementIDs : nil }
    }

    public struct EvalReport {
        public let loss: Double
        public let metrics: ClassificationMetrics
        public let classes: [String]
        public let seconds: Double
        public var json: [String: Any] {
            var o = metrics.json(classes: classes)
            o["loss"] = loss
            o["seconds"] = seconds
            o["sequences_per_s"] = Double(metrics.count) / max(seconds, 1e-9)
            return o
        }
    }

    /// Accuracy, macro-F1, MCC and the confusion matrix on a labelled directory (or file + labels).
    public static func evaluate(_ loaded: Loaded, data: String, labels: String?, chunk: Int = 2048) throws -> EvalReport {
        let ds = try ClassificationDataset.load(data, labels: labels, tokenizer: loaded.tokenizer, classes: loaded.classes)
        guard !ds.examples.isEmpty else { throw MambaKitError(.usage, "no sequences to evaluate", at: data) }
        let clock = ContinuousClock()
        let t0 = clock.now
        let r = try ClassificationObjective.evaluate(classifier: loaded.classifier, ds.examples, strand: loaded.strand,
                                                     complement: loaded.complement(), chunk: chunk)
        return EvalReport(loss: r.loss, metrics: r.metrics, classes: ds.classes, seconds: seconds(clock.now - t0))
    }

    /// Predictions for every record of `input`, streamed `batch` records at a time: `row(id, label, probabilities)`.
    public static func predict(_ loaded: Loaded, input: String, batch: Int = 16, chunk: Int = 2048,
                               row: (String, String, [Double]) throws -> Void) throws -> Int {
        var pending: [(String, [Int32])] = []
        var n = 0
        let complement = loaded.complement()
        func flush() throws {
            guard !pending.isEmpty else { return }
            let logits = try loaded.classifier.logits(pending.map(\.1), strand: loaded.strand, complement: complement,
                                                      chunk: chunk, batchSize: batch)
            for ((id, _), z) in zip(pending, logits) {
                let p = ClassificationHead.softmax(z)
                try row(id, loaded.classes[p.indices.max { p[$0] < p[$1] }!], p)
            }
            pending.removeAll()
        }
        switch loaded.tokenizer {
        case let .audio(t):
            // A file, or every audio file of a folder (sorted); the id is the path.
            for path in try ClassificationDataset.audioFiles(input) {
                n += 1
                pending.append((path, try ClassificationDataset.audioTokens(path, tokenizer: t)))
                if pending.count == batch { try flush() }
            }
        default:
            let dna = try ClassificationTask.dnaTokenizer(of: loaded.classifier.model.config, at: "the model")
            let reader = try SequenceReader(path: input)
            while let r = try reader.next() {
                n += 1
                pending.append((r.name, try ClassificationDataset.tokens(r, index: n, path: input, tokenizer: dna)))
                if pending.count == batch { try flush() }
            }
        }
        try flush()
        guard n > 0 else { throw MambaKitError(.usage, "no records to classify", at: input) }
        return n
    }
}
