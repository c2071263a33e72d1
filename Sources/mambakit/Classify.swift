import ArgumentParser
import Foundation
import MambaKit

/// Tokenizer options for DNA input, shared by `train --format fasta` and `classify train`.
struct DNATokenizerOptions: ParsableArguments {
    @Option(help: "Token vocabulary: bytes (default, tokenizer-free; soft-masking survives) or nucleotide (A C G T N, both cases, and specials).")
    var vocabulary: String?
    @Option(name: .customLong("case"), help: "Case policy: keep (default) or upper.") var casePolicy: String?
    @Option(help: "IUPAC ambiguity codes (RYSWKMBDHV): keep (default), toN or reject.") var iupac: String?

    func tokenizer() throws -> DNATokenizer {
        let vocabulary = self.vocabulary ?? "bytes", casePolicy = self.casePolicy ?? "keep", iupac = self.iupac ?? "keep"
        guard let v = DNAVocabulary(rawValue: vocabulary) else {
            throw MambaKitError(.usage, "--vocabulary '\(vocabulary)' is not one of \(DNAVocabulary.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let c = CasePolicy(rawValue: casePolicy) else {
            throw MambaKitError(.usage, "--case '\(casePolicy)' is not one of \(CasePolicy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let i = IUPACPolicy(rawValue: iupac) else {
            throw MambaKitError(.usage, "--iupac '\(iupac)' is not one of \(IUPACPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return DNATokenizer(vocabulary: v, casePolicy: c, iupacPolicy: i)
    }

    /// The flags given that differ from `saved` (a resumed run keeps its tokenizer).
    func changed(from saved: DNATokenizer) throws -> [String] {
        let t = try tokenizer()
        var out: [String] = []
        if vocabulary != nil && t.vocabulary != saved.vocabulary { out.append("--vocabulary \(saved.vocabulary.rawValue)") }
        if casePolicy != nil && t.casePolicy != saved.casePolicy { out.append("--case \(saved.casePolicy.rawValue)") }
        if iupac != nil && t.iupacPolicy != saved.iupacPolicy { out.append("--iupac \(saved.iupacPolicy.rawValue)") }
        return out
    }
}

/// Tokenizer options for audio, shared by `train --format audio` and `classify train --format audio`.
struct AudioTokenizerOptions: ParsableArguments {
    @Option(name: .customLong("sample-rate"), help: "Audio: the model's sample rate; files are resampled to it (default 16000).")
    var sampleRate: Int?
    @Option(help: "Audio: 8-bit quantiser, mulaw (default), normalized (per-clip mean removed and peak scaled to 1, then mu-law; the default of new audio classifiers), sashimi (per-clip min-max, then mu-law) or linear.")
    var quantizer: String?

    func tokenizer() throws -> AudioTokenizer {
        let quantizer = self.quantizer ?? "mulaw", sampleRate = self.sampleRate ?? 16000
        guard let q = AudioQuantizer(rawValue: quantizer) else {
            throw MambaKitError(.usage, "--quantizer '\(quantizer)' is not one of \(AudioQuantizer.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        try Settings.check("sample_rate", sampleRate, .flags)
        return AudioTokenizer(quantizer: q, sampleRate: sampleRate)
    }

    /// The tokenizer for new data whose first file is `file`: with no --sample-rate, the file's own rate (at most the
    /// usual 16 kHz; resampling 8 kHz speech to 16 kHz doubles every sequence and adds nothing). Returns the file's rate.
    func tokenizer(forDataStartingWith file: String) throws -> (AudioTokenizer, fileRate: Int) {
        var t = try tokenizer()
        let rate = try AudioFile.info(file).sampleRate
        if sampleRate == nil { t.sampleRate = min(t.sampleRate, max(AudioFile.minSampleRate, rate)) }
        return (t, rate)
    }

    func changed(from saved: AudioTokenizer) throws -> [String] {
        let t = try tokenizer()
        var out: [String] = []
        if sampleRate != nil && t.sampleRate != saved.sampleRate { out.append("--sample-rate \(saved.sampleRate)") }
        if quantizer != nil && t.quantizer != saved.quantizer { out.append("--quantizer \(saved.quantizer.rawValue)") }
        return out
    }
}

/// `--resume` keeps the run's tokenizer: tokenizer flags that say otherwise are an error, not ignored.
func refuseChangedTokenizer(out: String, dna: DNATokenizerOptions, audio: AudioTokenizerOptions) throws {
    guard let saved = try Trainer.savedRun(outDir: out) else { return }  // the task names the missing checkpoint
    var changed: [String] = []
    switch try ModelTokenizer(config: saved.config, at: out + "/config.json") {
    case let .dna(t): changed = try dna.changed(from: t)
    case let .audio(t): changed = try audio.changed(from: t)
    case .bytes: changed = try dna.changed(from: DNATokenizer())
    }
    if !changed.isEmpty {
        throw MambaKitError(.usage, "the run was trained with \(changed.joined(separator: " ")); a resumed run keeps its tokenizer (drop the flag or give that value)", at: out)
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sequence classification: train a classifier, evaluate it, predict labels for new sequences.",
        subcommands: [ClassifyTrain.self, ClassifyEval.self, ClassifyPredict.self, ClassifyExplain.self, ClassifyBaseline.self])
}

struct ClassifyTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a classifier on a directory with one FASTA/FASTQ (optionally .gz) per class, or a file plus --labels.")

    @Option(help: "Training data: a directory (one sequence file or folder per class; class = file stem; audio: one folder per class), or a sequence file with --labels.") var train: String
    @Option(help: "What the data is: fasta or audio (default: recognised from the first file's bytes).") var format: String?
    @Option(help: "TSV of id<TAB>label for a --train file.") var labels: String?
    @Option(help: "Validation data, laid out like --train (default: --val-fraction of --train, stratified).") var val: String?
    @Option(name: .customLong("val-labels"), help: "TSV of id<TAB>label for a --val file.") var valLabels: String?
    @Option(help: "Output directory: the best model by validation loss, checkpoints, metrics.jsonl.") var out: String
    @Option(help: "Initialise the backbone from this model directory (e.g. from train --format fasta).") var `init`: String?
    @Option(help: "Pooling over positions: mean (default) or last.") var pooling: String = "mean"
    @Option(help: "Strand strategy at inference: none (default) or rc-average.") var strand: String = "none"
    @Flag(inversion: .prefixedNo, help: "Reverse-complement augmentation in training (default on).") var rcAugment = true
    @Flag(name: .customLong("audio-augment"), inversion: .prefixedNo,
          help: "Audio: speed (±10 %), gain (±6 dB) and shift (±50 ms) augmentation in training (default on).")
    var audioAugment = true
    @Option(name: .customLong("class-weights"), help: "Loss weights: none (default), balanced, or one number per class in class order.") var classWeights: String = "none"
    @Option(help: "Passes over the training sequences (default: sized to the data, up to \(ClassificationTask.Budget.defaultEpochs) epochs and \(ClassificationTask.Budget.maxAutomaticSteps) steps, a validation every epoch, early stopping); instead of --steps.")
    var epochs: Int?
    @Option(help: "Stop after this many validations without a lower validation loss (default \(ClassificationTask.Budget.defaultPatience) when the budget is in epochs, 0 (never) with --steps).") var patience: Int?
    @Flag(help: "Continue the run in --out from its latest checkpoint.") var resume = false
    @OptionGroup var shape: ShapeAndScheduleOptions
    @OptionGroup var dna: DNATokenizerOptions
    @OptionGroup(title: "Audio (--format audio)") var audio: AudioTokenizerOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply(distributed: true)
            try shape.checkRanges()
            try Settings.check("patience", patience, .flags)
            try Settings.check("epochs", epochs, .flags)
            if epochs != nil && shape.steps != nil {
                throw MambaKitError(.usage, "--steps and --epochs are two ways to give one budget: give one of them")
            }
            var file = PipelineSpec(name: "classify")
            if let cfg = shape.config { file = try PipelineSpec.load(path: cfg) }
            var s = ClassificationTask.Settings(train: train, out: out)
            s.trainLabels = labels
            s.val = val
            s.valLabels = valLabels
            s.initFrom = `init`
            guard let p = Pooling(rawValue: pooling) else { throw MambaKitError(.usage, "--pooling '\(pooling)' is not one of mean, last") }
            guard let st = StrandStrategy(rawValue: strand) else { throw MambaKitError(.usage, "--strand '\(strand)' is not one of none, rc-average") }
            s.pooling = p
            s.strand = st
            s.rcAugment = rcAugment
            s.audioAugment = audioAugment
            s.classWeights = classWeights
            var format = self.format
            var firstFile: String? = nil
            if format == nil {
                let (kind, file) = try DataKind.recognise(train)
                firstFile = file
                guard let kind else {
                    throw MambaKitError(.usage, "cannot tell whether the data is FASTA/FASTQ or audio from its first file; pass --format fasta or --format audio", at: file)
                }
                format = kind.rawValue
                printErr("data: \(kind == .audio ? "audio" : "FASTA/FASTQ") (recognised from \(file); --format overrides)")
            }
            switch format ?? "" {
            case "fasta": s.tokenizer = .dna(try dna.tokenizer())
            case "audio":
                var t = try audio.tokenizer()
                // A new model from scratch takes the rate of the data.
                if audio.sampleRate == nil && !resume && `init` == nil {
                    let file = try firstFile ?? DataKind.recognise(train).file
                    let (chosen, rate) = try audio.tokenizer(forDataStartingWith: file)
                    t = chosen
                    printErr("audio: \(t.sampleRate) Hz (the first file, \(file), is at \(rate) Hz; --sample-rate overrides)")
                }
                // A new classifier normalises each clip (mean and peak) before mu-law, which is what carries over to
                // a voice never heard in training (BENCHMARKS.md).
                if audio.quantizer == nil && !resume && `init` == nil { t.quantizer = .normalized }
                s.tokenizer = .audio(t)
            default: throw MambaKitError(.usage, "--format '\(format ?? "")' is not one of fasta, audio")
            }
            s.valFraction = shape.valFraction ?? 0.1
            s.resume = resume
            if resume { try refuseChangedTokenizer(out: out, dna: dna, audio: audio) }
            var trainSpec = shape.trainSpec.merged(over: file.train)
            if let patience { trainSpec.patience = patience }
            if let epochs {
                trainSpec.epochs = epochs
                if shape.steps == nil { trainSpec.steps = nil }
            }
            let progress = ProgressRenderer()
            installInterruptHandler()
            let (trainer, _) = try ClassificationTask.train(
                s, model: try shape.modelSpec().merged(over: file.model), train: trainSpec,
                events: progress.handle, shouldStop: { interruptRequested != 0 })
            progress.finish()
            let best = trainer.bestLoss.isFinite ? String(format: ", best validation loss %.4f at step %d", trainer.bestLoss, trainer.bestStep) : ""
            printErr("classifier saved to \(out) (step \(trainer.step)\(best))")
        }
    }
}

struct ClassifyEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Accuracy, macro-F1, MCC and the confusion matrix on labelled data.")

    @Option(help: "Classifier directory.") var model: String
    @Option(help: "Labelled data, laid out as for classify train (a directory, or a file with --labels).") var data: String
    @Option(help: "TSV of id<TAB>label for a --data file.") var labels: String?
    @Option(help: "Override the model's strand strategy: none or rc-average.") var strand: String?
    @Option(help: "Tokens per forward chunk (the state is carried; memory does not grow with length).") var chunk: Int = 2048
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            try Settings.check("chunk", chunk, .flags)
            var loaded = try ClassificationTask.Loaded(directory: model)
            if let strand {
                guard let st = StrandStrategy(rawValue: strand) else { throw MambaKitError(.usage, "--strand '\(strand)' is not one of none, rc-average") }
                loaded.strand = st
            }
            let r = try ClassificationTask.evaluate(loaded, data: data, labels: labels, chunk: chunk)
            if json {
                try printJSON(r.json)
            } else {
                let m = r.metrics
                try say(String(format: "accuracy %.4f  macro-F1 %.4f  MCC %.4f  loss %.4f  over %d sequences (%.1f s)",
                             m.accuracy, m.macroF1, m.mcc, r.loss, m.count, r.seconds))
                let w = max(8, r.classes.map(\.count).max() ?? 0)
                func pad(_ s: String) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
                try say("confusion (rows true, columns predicted)")
                try say(pad("") + " " + r.classes.map(pad).joined(separator: " "))
                for (k, row) in m.confusion.enumerated() {
                    try say(pad(r.classes[k]) + " " + row.map { pad(String($0)) }.joined(separator: " "))
                }
            }
        }
    }
}

struct ClassifyPredict: ParsableCommand {
    /// Output held back before rows stream (see `run`).
    static let holdBytes = 8 << 20
    static let configuration = CommandConfiguration(
        commandName: "predict", abstract: "Predict labels: TSV on stdout with id, label and one p_<class> column per class.")

    @Option(help: "Classifier directory.") var model: String
    @Option(help: "FASTA/FASTQ file (optionally gzipped; - reads standard input); for an audio model an audio file or a folder of them.") var input: String
    @Option(help: "Override the model's strand strategy: none or rc-average.") var strand: String?
    @Option(help: "Tokens per forward chunk.") var chunk: Int = 2048
    @Option(name: .customLong("batch-size"), help: "Records classified together.") var batchSize: Int = 16
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            try Settings.check("chunk", chunk, .flags)
            try Settings.check("batch_size", batchSize, .flags)
            var loaded = try ClassificationTask.Loaded(directory: model)
            if let strand {
                guard let st = StrandStrategy(rawValue: strand) else { throw MambaKitError(.usage, "--strand '\(strand)' is not one of none, rc-average") }
                loaded.strand = st
            }
            // Rows are held back until the end or until `ClassifyPredict.holdBytes` have accumulated, so an input that
            // fails early leaves nothing on stdout, while memory stays bounded for any number of records. Past that
            // point rows stream; a later failure says how many rows were written before it (and the exit is non-zero).
            var out = Array(("id\tlabel\t" + loaded.classes.map { "p_" + $0 }.joined(separator: "\t") + "\n").utf8)
            var streaming = false
            var written = 0
            do {
                _ = try ClassificationTask.predict(loaded, input: input, batch: batchSize, chunk: chunk) { id, label, p in
                    out += Array((id + "\t" + label + "\t" + p.map { String(format: "%.6g", $0) }.joined(separator: "\t") + "\n").utf8)
                    written += 1
                    if out.count >= Self.holdBytes {
                        try writeStdout(out)
                        out.removeAll(keepingCapacity: true)
                        streaming = true
                    }
                }
            } catch let e as MambaKitError where streaming {
                throw MambaKitError(e.kind, e.message + " (stdout holds the first \(written) rows only)", at: e.location)
            }
            try writeStdout(out)
        }
    }
}

struct Fragments: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cut fixed-length fragments from genomes into train/val/test class directories (one FASTA per source file).")

    @Option(parsing: .upToNextOption, help: "Genome files (FASTA/FASTQ, optionally gzipped), one per class; class = file stem.") var from: [String]
    @Option(help: "Fragment length in bases.") var length: Int
    @Option(help: "Fragments per class in each split, e.g. 800,100,100 for train,val,test.") var counts: String = "800,100,100"
    @Option(help: "Share of every record given to each split, by position, e.g. 0.8,0.1,0.1.") var fractions: String = "0.8,0.1,0.1"
    @Option(help: "Split names.") var splits: String = "train,val,test"
    @Option(help: "Output directory: OUT/<split>/<class>.fa.") var out: String
    @Option(help: "Random seed.") var seed: Int = 0
    @Option(name: .customLong("max-ambiguous"), help: "Largest share of non-ACGT bases in a fragment.") var maxAmbiguous: Double = 0.1
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            let names = splits.split(separator: ",").map(String.init)
            let c = counts.split(separator: ",").map { Int($0) }
            let f = fractions.split(separator: ",").map { Double($0) }
            guard c.count == names.count, f.count == names.count, !c.contains(nil), !f.contains(nil) else {
                throw MambaKitError(.usage, "--splits, --counts and --fractions need one value per split, each a number (got \(names.count), \(c.count), \(f.count))")
            }
            try Settings.check("length", length, .flags)
            try Settings.check("seed", seed, .flags)
            try Settings.check("max_ambiguous", maxAmbiguous, .flags)
            for v in c.compactMap({ $0 }) { try Settings.check("count", v, .flags) }
            try ClassifySpec.checkFractions(f.compactMap { $0 }, .flags)
            let result = try FragmentSampler.write(
                sources: LanguageModelTask.expandPaths(from), length: length,
                splits: names.indices.map { FragmentSampler.Split(name: names[$0], fraction: f[$0]!, count: c[$0]!) },
                seed: UInt64(seed), out: out, maxAmbiguous: maxAmbiguous)
            try printJSON(["out": out, "length": length, "counts": result])
        }
    }
}

struct ClassifyExplain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "What a classifier reads along one sequence: TSV of position, base, each layer's mean selective Δ and (mean pooling) each position's share of every class logit.")

    @Option(help: "Classifier directory.") var model: String
    @Option(help: "FASTA/FASTQ file (optionally gzipped; - reads standard input).") var input: String
    @Option(help: "The record to explain (default: the first).") var record: String?
    @Flag(name: .customLong("reverse-complement"), help: "Reverse-complement the record first.") var reverseComplement = false
    @Option(help: "Tokens per forward chunk.") var chunk: Int = 2048
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            try Settings.check("chunk", chunk, .flags)
            let loaded = try ClassificationTask.Loaded(directory: model)
            let reader = try SequenceReader(path: input)
            var found: SequenceRecord? = nil
            var index = 0
            while let r = try reader.next() {
                index += 1
                if record == nil || r.name == record { found = r; break }
            }
            guard let r = found else {
                throw MambaKitError(.usage, record.map { "no record named '\($0)'" } ?? "no records", at: input)
            }
            let seq = reverseComplement ? ReverseComplement.apply(r.sequence) : r.sequence
            let dna = try ClassificationTask.dnaTokenizer(of: loaded.classifier.model.config, at: model)
            let tokens = try dna.encode(seq, location: "\(input), record \(index) '\(r.name)'")
            let (delta, contrib, logits) = try loaded.classifier.explain(tokens, chunk: chunk)
            var out = "# record \(r.name); logits " + zip(loaded.classes, logits).map { "\($0)=\(String(format: "%.5g", $1))" }.joined(separator: " ") + "\n"
            out += "position\tbase\t" + delta.indices.map { "delta_\($0)" }.joined(separator: "\t")
            if contrib != nil { out += "\t" + loaded.classes.map { "contrib_" + $0 }.joined(separator: "\t") }
            out += "\n"
            for t in 0..<seq.count {
                out += "\(t + 1)\t\(Character(Unicode.Scalar(seq[t])))\t" + delta.map { String(format: "%.5g", $0[t]) }.joined(separator: "\t")
                if let contrib { out += "\t" + contrib[t].map { String(format: "%.5g", $0) }.joined(separator: "\t") }
                out += "\n"
            }
            try writeStdout(Array(out.utf8))
        }
    }
}

struct ClassifyBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baseline",
        abstract: "A linear baseline in seconds: softmax regression on k-mer frequencies (DNA) or a log-spectrogram summary (audio), trained on --train and measured on --data.")

    @Option(help: "Training data, laid out as for classify train.") var train: String
    @Option(help: "TSV of id<TAB>label for a --train file.") var labels: String?
    @Option(help: "Test data, laid out like --train.") var data: String
    @Option(name: .customLong("data-labels"), help: "TSV of id<TAB>label for a --data file.") var dataLabels: String?
    @Option(help: "DNA: k-mer length (default 5).") var k: Int = 5
    @Option(name: .customLong("sample-rate"), help: "Audio: the rate the files are resampled to (default: the first file's).") var sampleRate: Int?
    @Option(help: "L2 penalty on the weights (default 0.01).") var l2: Double = 0.01
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            try Settings.check("k", k, .flags)
            try Settings.check("l2", l2, .flags)
            let (kind, file) = try DataKind.recognise(train)
            let features: LinearBaseline.Features
            switch kind {
            case .audio:
                let rate = try sampleRate ?? AudioFile.info(file).sampleRate
                try Settings.check("sample_rate", rate, .flags)
                features = .spectrum(sampleRate: rate)
            case .sequences:
                features = .kmers(k)
            case nil:
                throw MambaKitError(.usage, "cannot tell whether the data is FASTA/FASTQ or audio from its first file", at: file)
            }
            let r = try LinearBaseline.run(train: train, trainLabels: labels, data: data, labels: dataLabels,
                                           features: features, l2: l2)
            if json {
                try printJSON(r.json)
            } else {
                let m = r.metrics
                try say(String(format: "accuracy %.4f  macro-F1 %.4f  MCC %.4f  over %d sequences; %@ (%d features), %d training sequences, %d iterations (%.1f s)",
                               m.accuracy, m.macroF1, m.mcc, m.count, r.features, r.featureCount, r.trainExamples, r.iterations, r.seconds))
            }
        }
    }
}
