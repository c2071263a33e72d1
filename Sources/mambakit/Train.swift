import ArgumentParser
import Foundation
import MambaKit

/// Model-shape and schedule options shared by `train` (and, later, `classify train`). A contract: DESIGN.md §5.
struct ShapeAndScheduleOptions: ParsableArguments {
    @Option(help: "Training steps (default 1000).") var steps: Int?
    @Option(name: .customLong("batch-size"), help: "Sequences per step (default 8).") var batchSize: Int?
    @Option(name: .customLong("seq-len"), help: "Tokens per sequence (default 512).") var seqLen: Int?
    @Option(name: .customLong("d-model"), help: "Model width D (default 256).") var dModel: Int?
    @Option(help: "Layers of a pure stack (default 4).") var layers: Int?
    @Option(help: "The block of a pure stack: mamba1 (default) or mamba2.") var mixer: String?
    @Option(help: "A stack in the notation of arXiv 2406.07887: M Mamba-2, * attention, - MLP (e.g. M-M*-M-); all m for Mamba-1. Overrides --mixer and --layers.")
    var pattern: String?
    @Option(name: .customLong("d-state"), help: "SSM state size N (default 16 for Mamba-1, 64 for Mamba-2).") var dState: Int?
    @Option(name: .customLong("d-conv"), help: "Conv kernel K (default 4).") var dConv: Int?
    @Option(help: "Expansion E: d_inner = E·D (default 2).") var expand: Double?
    @Option(name: .customLong("head-dim"), help: "Mamba-2 head dim P (default 64): E·D/P heads.") var headDim: Int?
    @Option(help: "Mamba-2 groups G sharing B and C (default 1).") var groups: Int?
    @Option(name: .customLong("chunk-size"), help: "Mamba-2 SSD chunk length (default 64).") var chunkSize: Int?
    @Option(help: "Attention heads (default D / attention head dim).") var heads: Int?
    @Option(name: .customLong("kv-heads"), help: "Attention KV heads (default half the heads).") var kvHeads: Int?
    @Option(name: .customLong("attn-head-dim"), help: "Attention head dim (default 64).") var attnHeadDim: Int?
    @Option(name: .customLong("mlp-width"), help: "MLP width (default 4·D).") var mlpWidth: Int?
    @Option(help: "The multi-scale (SaShiMi) backbone: pooling factors, outer stage to centre, e.g. 4,4; --layers is then the Mamba-1 blocks per stage.")
    var unet: String?
    @Option(name: .customLong("pool-expand"), help: "With --unet: width multiplier per pooling (default 2).") var poolExpand: Int?
    @Option(name: .customLong("stage-layers"), help: "With --unet: blocks per stage, outer stage first, e.g. 0,2,2 (default --layers in each).")
    var stageLayers: String?
    @Option(help: "Peak learning rate (default 2e-3).") var lr: Double?
    @Option(help: "Linear warmup steps (default 100, capped at --steps).") var warmup: Int?
    @Option(help: "Random seed for initialisation and data order (default 0).") var seed: Int?
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay (default 0.1; never on norms, biases, A_log, D).") var weightDecay: Double?
    @Option(name: .customLong("grad-clip"), help: "Global gradient-norm clip (default 1.0).") var gradClip: Double?
    @Option(name: .customLong("val-fraction"), help: "Held-out tail of each file (default 0.05).") var valFraction: Double?
    @Option(name: .customLong("eval-every"), help: "Validate every N steps (default 200).") var evalEvery: Int?
    @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps (default 500).") var checkpointEvery: Int?
    @Option(name: .customLong("log-every"), help: "Log every N steps (default 10).") var logEvery: Int?
    @Option(help: "A pipeline-style YAML file whose model/train/data values the flags override.") var config: String?

    func modelSpec() throws -> ModelSpec {
        var m = ModelSpec()
        m.dModel = dModel; m.layers = layers; m.dState = dState; m.dConv = dConv; m.expand = expand
        m.mixer = try mixer.map(ModelSpec.mixer(named:)); m.pattern = pattern; m.headDim = headDim; m.groups = groups; m.chunkSize = chunkSize
        m.heads = heads; m.kvHeads = kvHeads; m.attnHeadDim = attnHeadDim; m.mlpWidth = mlpWidth
        m.unet = try unet.map(ModelSpec.poolFactors); m.poolExpand = poolExpand
        m.stageLayers = try stageLayers.map(ModelSpec.stageCounts)
        return m
    }

    var trainSpec: PipelineSpec.TrainSpec {
        var t = PipelineSpec.TrainSpec()
        t.steps = steps; t.batchSize = batchSize; t.seqLen = seqLen; t.lr = lr; t.warmup = warmup; t.seed = seed
        t.weightDecay = weightDecay; t.gradClip = gradClip; t.evalEvery = evalEvery
        t.checkpointEvery = checkpointEvery; t.logEvery = logEvery
        return t
    }

    /// Every value given, against `Settings` (the same ranges as pipeline files and saved runs). Model sizes are
    /// checked by `ModelSpec`.
    func checkRanges() throws {
        try trainSpec.validate(.flags)
        try Settings.check("val_fraction", valFraction, .flags)
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Next-token pretraining on one or more files treated as long streams.")

    @Option(parsing: .upToNextOption, help: "Training files or directories of files.") var data: [String] = []
    @Option(help: "How to read --data: bytes (default), fasta or audio.") var format: String?
    @Option(help: "Run directory: model, checkpoints, metrics.jsonl.") var out: String
    @Flag(help: "Continue the run in --out from its latest checkpoint, bit for bit.") var resume = false
    @Option(name: .customLong("token-cache"), help: "Directory of tokenized corpora (default $MAMBAKIT_CACHE, else ~/.cache/mambakit/tokens).")
    var tokenCache: String?
    @Option(name: .customLong("seq-len-warmup"), help: "Grow the window from 64 tokens to --seq-len over the first N steps (default 0: off).")
    var seqLenWarmup: Int?
    @Flag(name: .customLong("carry-state"), help: "Stateful training: each batch lane reads its stream window after window, carrying the recurrent state across (gradient cut at each window edge).")
    var carryState = false
    @Option(name: .customLong("carry-reset"), help: "With --carry-state: restart a lane at a random place with a zero state after N windows (default 16; 0: only at the end of its stream).")
    var carryReset: Int?
    @OptionGroup var shape: ShapeAndScheduleOptions
    @OptionGroup(title: "DNA (--format fasta)") var dna: DNATokenizerOptions
    @OptionGroup(title: "Audio (--format audio)") var audio: AudioTokenizerOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply(distributed: true)
            try shape.checkRanges()
            var file = PipelineSpec(name: "train")
            if let cfg = shape.config { file = try PipelineSpec.load(path: cfg) }
            let format = try DataFormat.parse(format ?? file.format.rawValue)
            let data = self.data.isEmpty ? file.trainData : self.data
            guard !data.isEmpty else { throw MambaKitError(.usage, "no --data given (and no data.train in --config)") }
            let model = try shape.modelSpec().merged(over: file.model)
            try file.refuseEpochsForLanguageModel()
            var flags = shape.trainSpec
            flags.seqLenWarmup = seqLenWarmup
            flags.carryState = carryState ? true : nil
            flags.carryReset = carryReset
            try flags.validate(.flags)
            let trainSpec = flags.merged(over: file.train)
            if resume { try refuseChangedTokenizer(out: out, dna: dna, audio: audio) }
            let progress = ProgressRenderer()
            installInterruptHandler()
            let trainer = try LanguageModelTask.train(
                format: format, data: data, out: out, model: model, train: trainSpec,
                valFraction: shape.valFraction ?? file.valFraction, resume: resume, tokenizer: try dna.tokenizer(),
                audio: try audio.tokenizer(), cacheDirectory: tokenCache ?? file.tokenCache,
                tokenizing: progress.tokenizing, events: progress.handle, shouldStop: { interruptRequested != 0 })
            progress.finish()
            printErr("model saved to \(out) (step \(trainer.step))")
        }
    }
}

extension DataFormat {
    static func parse(_ s: String) throws -> DataFormat {
        guard let f = DataFormat(rawValue: s) else {
            throw MambaKitError(.usage, "--format '\(s)' is not one of \(DataFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return f
    }
}
