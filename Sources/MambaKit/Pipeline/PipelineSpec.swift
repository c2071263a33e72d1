import Foundation
import Yams

/// A pipeline file (YAML): data → model → train → eval → generate, with outputs under `runs/<name>/`.
///
///     name: bytes-lm
///     data:  { format: bytes, train: [samples/text/a.txt, ...], eval: samples/text/b.txt, val_fraction: 0.05 }
///     model: { d_model: 128, layers: 2, d_state: 16, d_conv: 4, expand: 2 }
///     train: { steps: 300, batch_size: 8, seq_len: 256, lr: 3e-3, warmup: 30, seed: 0, eval_every: 100, ... }
///     generate: { prompt: "In the beginning", max_new_tokens: 200, temperature: 0.8, top_k: 0, top_p: 0.95, seed: 1 }
///
/// Relative paths are taken from the current directory. Every key is checked: a misspelt key is an error naming
/// the file and the key, not a silently ignored setting. `mambakit train --config FILE` reads the `model`, `train`
/// and `data` sections of the same format, with command-line flags taking precedence.
public struct PipelineSpec {
    public var name: String
    public var format: DataFormat = .bytes
    public var trainData: [String] = []
    public var evalData: String?
    /// Language models: orders of interpolated Kneser–Ney n-gram baselines counted on `trainData` and measured on
    /// `evalData` (`data.ngram`), reported beside the models.
    public var ngramOrders: [Int] = []
    public var valFraction: Double?
    /// `data.token_cache`: where tokenized corpora are kept (default `TokenStore.defaultDirectory`).
    public var tokenCache: String?
    /// Audio language models: the model's sample rate and quantiser.
    public var audio = AudioTokenizer()
    public var model = ModelSpec()
    /// Language models: stacks to train one after another with the same data and schedule, each a `model` section
    /// of its own merged over `model` (`mambakit run` compares them in `summary.json`).
    /// Stacks compared by an LM pipeline, each with its own model keys and, optionally, the training options that
    /// compare ways of training (`carry_state`, `carry_reset`, `seq_len_warmup`).
    public var variants: [(name: String, model: ModelSpec, train: TrainSpec)] = []
    /// `data.by_position`: position buckets for the evaluation (`Evaluator.Bucket.parseBoundaries`).
    public var byPosition: [Int] = []
    public var train = TrainSpec()
    /// Where `train.epochs` was given (the file and line), for the error when a language model gets it.
    public var epochsLocation: String?

    static let epochsForLanguageModel =
        "train.epochs applies to classification; a language model samples random windows, so its budget is train.steps"

    /// A language model has no epochs: `train.epochs` in its pipeline or `--config` is an error naming the line.
    public func refuseEpochsForLanguageModel() throws {
        if train.epochs != nil { throw MambaKitError(.config, Self.epochsForLanguageModel, at: epochsLocation) }
    }
    public var generate: GenerateSpec?
    public var threads: Int?
    /// `lm` (default): next-token training; `classify`: a sequence classifier (see `ClassifySpec`).
    public var task = "lm"
    public var classify: ClassifySpec?

    /// Training options with nil meaning "not given".
    public struct TrainSpec: Equatable, Sendable {
        public var steps: Int?, batchSize: Int?, seqLen: Int?, lr: Double?, warmup: Int?, seed: Int?
        public var weightDecay: Double?, gradClip: Double?, minLRRatio: Double?
        public var evalEvery: Int?, evalTokens: Int?, checkpointEvery: Int?, logEvery: Int?
        /// Language models: steps over which the window grows to `seqLen`.
        public var seqLenWarmup: Int?
        /// Language models: stateful training (`Trainer.Options.carryState`), and windows before a lane restarts.
        public var carryState: Bool?, carryReset: Int?
        /// Early stopping (classification): validations without improvement before stopping.
        public var patience: Int?
        /// Classification: passes over the training sequences (instead of `steps`).
        public var epochs: Int?
        public init() {}

        /// Fills unset fields from `other`.
        public func merged(over other: TrainSpec) -> TrainSpec {
            var t = self
            t.steps = steps ?? other.steps; t.batchSize = batchSize ?? other.batchSize; t.seqLen = seqLen ?? other.seqLen
            t.lr = lr ?? other.lr; t.warmup = warmup ?? other.warmup; t.seed = seed ?? other.seed
            t.weightDecay = weightDecay ?? other.weightDecay; t.gradClip = gradClip ?? other.gradClip
            t.minLRRatio = minLRRatio ?? other.minLRRatio; t.evalEvery = evalEvery ?? other.evalEvery
            t.evalTokens = evalTokens ?? other.evalTokens; t.checkpointEvery = checkpointEvery ?? other.checkpointEvery
            t.logEvery = logEvery ?? other.logEvery
            t.patience = patience ?? other.patience
            t.seqLenWarmup = seqLenWarmup ?? other.seqLenWarmup
            t.carryState = carryState ?? other.carryState
            t.carryReset = carryReset ?? other.carryReset
            // Steps and epochs are one budget: a value given here replaces the other's value underneath.
            if steps != nil && epochs == nil { t.epochs = nil } else { t.epochs = epochs ?? other.epochs }
            if epochs != nil && steps == nil { t.steps = nil }
            return t
        }

        /// Checks every value that is set against `Settings`, naming it as `source` does.
        public func validate(_ source: SettingSource) throws {
            try Settings.check("steps", steps, source); try Settings.check("batch_size", batchSize, source)
            try Settings.check("seq_len", seqLen, source); try Settings.check("lr", lr, source)
            try Settings.check("warmup", warmup, source); try Settings.check("seed", seed, source)
            try Settings.check("weight_decay", weightDecay, source); try Settings.check("grad_clip", gradClip, source)
            try Settings.check("min_lr_ratio", minLRRatio, source); try Settings.check("eval_every", evalEvery, source)
            try Settings.check("eval_tokens", evalTokens, source)
            try Settings.check("checkpoint_every", checkpointEvery, source)
            try Settings.check("log_every", logEvery, source); try Settings.check("patience", patience, source)
            try Settings.check("epochs", epochs, source)
            try Settings.check("seq_len_warmup", seqLenWarmup, source)
            try Settings.check("carry_reset", carryReset, source)
            if steps != nil && epochs != nil {
                throw MambaKitError(source.location == nil ? .usage : .config,
                                    "\(source.name(Settings.setting("steps"))) and \(source.name(Settings.setting("epochs"))) are two ways to give one budget: give one of them",
                                    at: source.location)
            }
        }

        /// Options from `self`, falling back to `base`.
        public func apply(to base: Trainer.Options) -> Trainer.Options {
            var o = base
            if let v = steps { o.steps = v }
            if let v = batchSize { o.batchSize = v }
            if let v = seqLen { o.seqLen = v }
            if let v = lr { o.lr = v }
            if let v = warmup { o.warmup = v }
            if let v = seed { o.seed = UInt64(v) }
            if let v = weightDecay { o.weightDecay = v }
            if let v = gradClip { o.gradClip = v }
            if let v = minLRRatio { o.minLRRatio = v }
            if let v = evalEvery { o.evalEvery = v }
            if let v = evalTokens { o.evalTokens = v }
            if let v = checkpointEvery { o.checkpointEvery = v }
            if let v = logEvery { o.logEvery = v }
            if let v = patience { o.patience = v }
            if let v = seqLenWarmup { o.seqLenWarmup = v }
            if let v = carryState { o.carryState = v }
            if let v = carryReset { o.carryReset = v }
            return o
        }
    }

    public struct GenerateSpec: Equatable, Sendable {
        public var prompt: String = "\n"
        public var maxNewTokens: Int = 256
        public var temperature: Double = 1
        public var topK: Int = 0
        public var topP: Double = 1
        public var seed: Int = 0
        /// Audio models: seconds to generate, and a recording to continue.
        public var seconds: Double = 1
        public var promptAudio: String?

        public func validate(_ source: SettingSource) throws {
            try Settings.check("max_new_tokens", maxNewTokens, source)
            try Settings.check("temperature", temperature, source)
            try Settings.check("top_k", topK, source); try Settings.check("top_p", topP, source)
            try Settings.check("seed", seed, source); try Settings.check("seconds", seconds, source)
        }
    }

    public init(name: String) { self.name = name }

    /// The model keys of a `model` section (or of one of `variants`).
    static func modelSpec(_ m: [String: Any], reader r: YAMLReader, in section: String) throws -> ModelSpec {
        var spec = ModelSpec()
        try r.allow(m, ["d_model", "layers", "d_state", "d_conv", "expand", "dt_rank", "tie_embeddings", "mixer",
                        "pattern", "head_dim", "groups", "chunk_size", "heads", "kv_heads", "attn_head_dim",
                        "mlp_width", "unet", "pool_expand", "stage_layers"], in: section)
        spec.dModel = try r.int(m, "d_model")
        spec.layers = try r.int(m, "layers")
        spec.dState = try r.int(m, "d_state")
        spec.dConv = try r.int(m, "d_conv")
        spec.expand = try r.double(m, "expand")
        spec.dtRank = try r.int(m, "dt_rank")
        spec.tie = try r.bool(m, "tie_embeddings")
        if let mixer = try r.string(m, "mixer") {
            guard let k = try? ModelSpec.mixer(named: mixer) else {
                throw MambaKitError(.config, "\(section).mixer '\(mixer)' is not one of mamba1, mamba2", at: r.path)
            }
            spec.mixer = k
        }
        if let pattern = try r.string(m, "pattern") {
            do { _ = try ModelSpec.kinds(of: pattern) } catch let e as MambaKitError {
                throw MambaKitError(.config, "\(section).pattern: " + e.message, at: r.path)
            }
            spec.pattern = pattern
        }
        spec.headDim = try r.int(m, "head_dim")
        spec.groups = try r.int(m, "groups")
        spec.chunkSize = try r.int(m, "chunk_size")
        spec.heads = try r.int(m, "heads")
        spec.kvHeads = try r.int(m, "kv_heads")
        spec.attnHeadDim = try r.int(m, "attn_head_dim")
        spec.mlpWidth = try r.int(m, "mlp_width")
        // `unet: 4` reads as a number, `unet: 4,4` as text.
        if let unet = try (m["unet"] as? Int).map(String.init) ?? r.string(m, "unet") {
            do { spec.unet = try ModelSpec.poolFactors(unet) } catch let e as MambaKitError {
                throw MambaKitError(.config, "\(section).unet: " + e.message, at: r.path)
            }
        }
        spec.poolExpand = try r.int(m, "pool_expand")
        if let text = try (m["stage_layers"] as? Int).map(String.init) ?? r.string(m, "stage_layers") {
            do { spec.stageLayers = try ModelSpec.stageCounts(text) } catch let e as MambaKitError {
                throw MambaKitError(.config, "\(section).stage_layers: " + e.message, at: r.path)
            }
        }
        return spec
    }

    public static func load(path: String) throws -> PipelineSpec {
        let bytes = try FileInput.readBytes(path, maxBytes: 16 << 20)
        guard let text = String(bytes: bytes, encoding: .utf8) else {
            throw MambaKitError(.format, "not UTF-8 text", at: path)
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text, pipelineResolver) } catch {
            throw MambaKitError(.format, "not valid YAML: \(error)", at: path)
        }
        // Aliases are copies of their anchors: 300 bytes of nested aliases make 10^8 nodes ("billion laughs").
        var budget = maxYAMLNodes
        if let node, !(try countNodes(node, within: &budget, path: path)) {
            throw MambaKitError(.format, "the YAML expands to more than \(maxYAMLNodes) nodes once its aliases are "
                + "replaced by their anchors", at: path)
        }
        let root = node?.any  // what Yams.load returns
        guard let o = root as? [String: Any] else { throw MambaKitError(.format, "expected a mapping at the top level", at: path) }
        var lines: [String: Int] = [:]
        if let node { recordLines(node, prefix: "", into: &lines) }
        return try PipelineSpec(yaml: o, path: path, lines: lines)
    }

    init(yaml o: [String: Any], path: String, lines: [String: Int] = [:]) throws {
        let r = YAMLReader(path: path, lines: lines)
        try r.allow(o, ["name", "task", "data", "model", "variants", "train", "generate", "threads", "classify", "pretrain"],
                    in: "top level")
        task = try r.string(o, "task") ?? "lm"
        guard task == "lm" || task == "classify" else {
            throw MambaKitError(.config, "task '\(task)' is not one of lm, classify", at: path)
        }
        if task == "classify" {
            classify = try ClassifySpec(yaml: o, reader: r)
        } else if o["classify"] != nil || o["pretrain"] != nil {
            throw MambaKitError(.config, "'classify' and 'pretrain' sections need task: classify", at: path)
        }
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        name = try r.string(o, "name") ?? stem
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw MambaKitError(.config, "name must be a plain directory name (got '\(name)')", at: path)
        }
        threads = try Settings.check("threads", try r.int(o, "threads"), r.source(""))
        if task == "lm", let d = try r.map(o, "data") {
            try r.allow(d, ["format", "train", "eval", "val_fraction", "sample_rate", "quantizer", "ngram", "token_cache", "by_position"], in: "data")
            if let n = d["ngram"], !(n is NSNull) {
                guard let orders = (n as? Int).map({ [$0] }) ?? (n as? [Any])?.compactMap({ $0 as? Int }),
                      orders.count == ((n as? [Any])?.count ?? 1), (1...8).contains(orders.count) else {
                    throw MambaKitError(.config, "data.ngram must be an order or a list of 1 to 8 orders (got \(n))", at: r.at("ngram"))
                }
                for o in orders { try Settings.check("ngram_order", o, r.source("data")) }
                ngramOrders = orders
            }
            var a: [String: Any] = ["type": "audio"]
            a["sample_rate"] = try r.int(d, "sample_rate") ?? 16000
            a["quantizer"] = try r.string(d, "quantizer") ?? AudioQuantizer.mulaw.rawValue
            audio = try AudioTokenizer(json: a, location: "\(path), data")
            if let f = try r.string(d, "format") {
                guard let fmt = DataFormat(rawValue: f) else {
                    throw MambaKitError(.config, "data.format '\(f)' is not one of \(DataFormat.allCases.map(\.rawValue).joined(separator: ", "))", at: path)
                }
                format = fmt
            }
            if let one = d["train"] as? String { trainData = [one] } else if d["train"] != nil {
                guard let many = d["train"] as? [Any], many.allSatisfy({ $0 is String }) else {
                    throw MambaKitError(.config, "data.train must be a path or a list of paths", at: path)
                }
                trainData = many.compactMap { $0 as? String }
            }
            evalData = try r.string(d, "eval")
            tokenCache = try r.string(d, "token_cache")
            if let b = try r.string(d, "by_position") { byPosition = try Evaluator.Bucket.parseBoundaries(b, at: r.at("by_position")) }
            valFraction = try Settings.check("val_fraction", try r.double(d, "val_fraction"), r.source("data"))
        }
        if let m = try r.map(o, "model") { model = try Self.modelSpec(m, reader: r, in: "model") }
        if let v = o["variants"], !(v is NSNull) {
            guard task == "lm" else { throw MambaKitError(.config, "'variants' needs task: lm", at: path) }
            guard let list = v as? [Any], !list.isEmpty else {
                throw MambaKitError(.config, "'variants' must be a non-empty list of mappings, each with a name", at: path)
            }
            for (i, item) in list.enumerated() {
                guard var m = item as? [String: Any], let name = m["name"] as? String, !name.isEmpty,
                      !name.contains("/"), name != ".", name != ".." else {
                    throw MambaKitError(.config, "variants[\(i)] must be a mapping with a plain directory name under 'name'", at: path)
                }
                guard !variants.contains(where: { $0.name == name }) else {
                    throw MambaKitError(.config, "variants: the name '\(name)' appears twice", at: path)
                }
                m["name"] = nil
                var t = TrainSpec()
                t.carryState = try r.bool(m, "carry_state")
                t.carryReset = try r.int(m, "carry_reset")
                t.seqLenWarmup = try r.int(m, "seq_len_warmup")
                try t.validate(r.source("variants[\(i)] (\(name))"))
                for k in ["carry_state", "carry_reset", "seq_len_warmup"] { m[k] = nil }
                variants.append((name, try Self.modelSpec(m, reader: r, in: "variants[\(i)] (\(name))"), t))
            }
        }
        if let t = try r.map(o, "train") {
            try r.allow(t, ["steps", "batch_size", "seq_len", "lr", "warmup", "seed", "weight_decay", "grad_clip",
                            "min_lr_ratio", "eval_every", "eval_tokens", "checkpoint_every", "log_every", "patience",
                            "epochs", "seq_len_warmup", "carry_state", "carry_reset"],
                        in: "train")
            train.steps = try r.int(t, "steps")
            train.batchSize = try r.int(t, "batch_size")
            train.seqLen = try r.int(t, "seq_len")
            train.lr = try r.double(t, "lr")
            train.warmup = try r.int(t, "warmup")
            train.seed = try r.int(t, "seed")
            train.weightDecay = try r.double(t, "weight_decay")
            train.gradClip = try r.double(t, "grad_clip")
            train.minLRRatio = try r.double(t, "min_lr_ratio")
            train.evalEvery = try r.int(t, "eval_every")
            train.evalTokens = try r.int(t, "eval_tokens")
            train.checkpointEvery = try r.int(t, "checkpoint_every")
            train.logEvery = try r.int(t, "log_every")
            train.patience = try r.int(t, "patience")
            train.epochs = try r.int(t, "epochs")
            train.seqLenWarmup = try r.int(t, "seq_len_warmup")
            train.carryState = try r.bool(t, "carry_state")
            train.carryReset = try r.int(t, "carry_reset")
            if train.epochs != nil { epochsLocation = r.lines["train.epochs"].map { "\(path), line \($0)" } ?? path }
            try train.validate(r.source("train"))
        }
        if let g = try r.map(o, "generate") {
            try r.allow(g, ["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "seconds", "prompt_audio"],
                        in: "generate")
            var s = GenerateSpec()
            s.prompt = try r.string(g, "prompt") ?? s.prompt
            s.maxNewTokens = try r.int(g, "max_new_tokens") ?? s.maxNewTokens
            s.temperature = try r.double(g, "temperature") ?? s.temperature
            s.topK = try r.int(g, "top_k") ?? s.topK
            s.topP = try r.double(g, "top_p") ?? s.topP
            s.seed = try r.int(g, "seed") ?? s.seed
            s.seconds = try r.double(g, "seconds") ?? s.seconds
            s.promptAudio = try r.string(g, "prompt_audio")
            try s.validate(r.source("generate"))
            generate = s
        }
    }
}

/// YAML 1.1's rules without base-60 numbers and timestamps: `7:7:33:…` read as a base-60 integer made Yams'
/// conversion trap on overflow (found by the pipeline fuzzer), and no pipeline value is a time of day or a date. Such
/// scalars stay strings, so a value like `steps: 1:30` is refused as "must be an integer (got 1:30)".
private let pipelineResolver: Resolver = {
    do {
        let int = "^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
        let float = "^(?:[-+]?(?:[0-9][0-9_]*)(?:\\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN))$"
        return try Resolver.default.removing(.timestamp).replacing(.int, with: int).replacing(.float, with: float)
    } catch {
        preconditionFailure("the pipeline YAML resolver's patterns do not compile: \(error)")
    }
}()

/// Most YAML nodes a pipeline file may expand to; each committed pipeline has fewer than 100.
private let maxYAMLNodes = 100_000

/// Counts `node` and everything under it against `budget` (an alias counts in full each time it is used); false as
/// soon as the budget is spent, so the count costs at most `budget` steps whatever the expanded size.
/// Walks the composed YAML before Yams converts it to Swift values: false once more than `budget` nodes are seen.
/// Throws for a mapping key that is not a plain scalar: Yams' conversion force-unwraps every key as a string, so a
/// sequence, mapping or alias key (`? [a, b] : 1`) trapped (found by the pipeline fuzzer).
private func countNodes(_ node: Node, within budget: inout Int, path: String) throws -> Bool {
    budget -= 1
    guard budget >= 0 else { return false }
    switch node {
    case .mapping(let mapping):
        for (key, value) in mapping {
            guard case .scalar = key else {
                throw MambaKitError(.format, "a mapping key must be a plain scalar, not a \(kindName(key))",
                                    at: key.mark.map { "\(path), line \($0.line)" } ?? path)
            }
            guard try countNodes(value, within: &budget, path: path) else { return false }
        }
    case .sequence(let sequence):
        for element in sequence where !(try countNodes(element, within: &budget, path: path)) { return false }
    case .scalar(let scalar):
        // `pipelineResolver` never reads a plain scalar as base 60 or as a date, but an explicit tag still can
        // (`!!int 7:7:33:…`), and Yams' conversion traps on a base-60 number that overflows.
        let tag = node.tag.description
        if tag == "tag:yaml.org,2002:timestamp"
            || ((tag == "tag:yaml.org,2002:int" || tag == "tag:yaml.org,2002:float") && scalar.string.contains(":")) {
            throw MambaKitError(.format, "'\(scalar.string.prefix(40))' tagged \(tag): base-60 numbers and dates are not pipeline values",
                                at: scalar.mark.map { "\(path), line \($0.line)" } ?? path)
        }
    case .alias:
        break
    }
    return true
}

private func kindName(_ node: Node) -> String {
    switch node {
    case .scalar: return "scalar"
    case .mapping: return "mapping"
    case .sequence: return "sequence"
    case .alias: return "alias"
    }
}

/// Records the line of every mapping key under `node` by its dotted path (`train.steps`; sequence elements by index,
/// `variants.0.name`). Called once the node count is known to be bounded.
private func recordLines(_ node: Node, prefix: String, into lines: inout [String: Int]) {
    switch node {
    case .mapping(let mapping):
        for (key, value) in mapping {
            guard let k = key.string else { continue }
            let path = prefix.isEmpty ? k : prefix + "." + k
            if let line = key.mark?.line { lines[path] = line }
            recordLines(value, prefix: path, into: &lines)
        }
    case .sequence(let sequence):
        for (i, element) in sequence.enumerated() { recordLines(element, prefix: "\(prefix).\(i)", into: &lines) }
    case .scalar, .alias:
        break
    }
}

/// Typed access to a YAML mapping with errors that name the file, the key and, where the key name occurs once in
/// the file, its line.
struct YAMLReader {
    let path: String
    /// Line of every key path (`recordLines`).
    let lines: [String: Int]

    init(path: String, lines: [String: Int] = [:]) {
        self.path = path
        self.lines = lines
        var seen: [String: [Int]] = [:]
        for (p, line) in lines { seen[String(p.split(separator: ".").last ?? ""), default: []].append(line) }
        uniqueNames = seen.compactMapValues { $0.count == 1 ? $0[0] : nil }
    }

    /// Key names that occur once in the file, with their line.
    private let uniqueNames: [String: Int]

    /// The settings source for `section` (dotted), naming lines.
    func source(_ section: String) -> SettingSource { .yaml(path, section: section, lines: lines) }

    /// The file, with the line of key `k` when its name occurs once.
    func at(_ k: String) -> String { uniqueNames[k].map { "\(path), line \($0)" } ?? path }

    func allow(_ o: [String: Any], _ keys: Set<String>, in section: String) throws {
        for k in o.keys where !keys.contains(k) {
            throw MambaKitError(.config, "unknown key '\(k)' in \(section) (expected one of \(keys.sorted().joined(separator: ", ")))", at: lines[section == "top level" ? k : section + "." + k].map { "\(path), line \($0)" } ?? at(k))
        }
    }

    func map(_ o: [String: Any], _ k: String) throws -> [String: Any]? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        guard let m = v as? [String: Any] else { throw MambaKitError(.config, "'\(k)' must be a mapping", at: at(k)) }
        return m
    }

    func string(_ o: [String: Any], _ k: String) throws -> String? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let s = v as? String { return s }
        throw MambaKitError(.config, "'\(k)' must be a string (got \(v))", at: at(k))
    }

    func int(_ o: [String: Any], _ k: String) throws -> Int? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let i = v as? Int { return i }
        throw MambaKitError(.config, "'\(k)' must be an integer (got \(v))", at: at(k))
    }

    func double(_ o: [String: Any], _ k: String) throws -> Double? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let d = v as? Double { return d }
        if let i = v as? Int { return Double(i) }
        // YAML 1.1 reads "3e-3" (no dot) as a string; accept numeric strings.
        if let s = v as? String, let d = Double(s) { return d }
        throw MambaKitError(.config, "'\(k)' must be a number (got \(v))", at: at(k))
    }

    func bool(_ o: [String: Any], _ k: String) throws -> Bool? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let b = v as? Bool { return b }
        throw MambaKitError(.config, "'\(k)' must be true or false (got \(v))", at: at(k))
    }
}
