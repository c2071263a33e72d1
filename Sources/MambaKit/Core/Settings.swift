/// The allowed range of every number a user sets — a command-line flag, a pipeline YAML key, an option saved in
/// `trainer_state.json`, a field of `Trainer.Options` — in one table. Every source is checked against the same
/// entry and names its own place in the error: `--log-every must be an integer from 1 to 1000000000 (got 0)`, or
/// `train.log_every must be … (got 0), pipelines/x.yaml`.
///
/// Ranges are what makes sense, not what happens to run: they keep every size that reaches an allocation within
/// `SizeLimits` (where the product of two settings matters, e.g. batch × seq_len, the consumer checks the product
/// with overflow-checked arithmetic), and they refuse NaN and infinities everywhere.
public struct Setting: Sendable {
    /// The key in YAML and JSON files (`batch_size`), and the command-line flag (`--batch-size`) where there is one.
    public let key: String
    public let flag: String?
    public let lo: Double, hi: Double
    /// Whether `lo` itself is excluded (a learning rate must be > 0).
    public let loOpen: Bool
    public let integer: Bool
    /// What the edge values mean, shown in the error (e.g. "0: never").
    public let note: String?

    static func int(_ key: String, _ flag: String?, _ lo: Int, _ hi: Int, _ note: String? = nil) -> Setting {
        Setting(key: key, flag: flag, lo: Double(lo), hi: Double(hi), loOpen: false, integer: true, note: note)
    }

    static func real(_ key: String, _ flag: String?, _ lo: Double, _ hi: Double, loOpen: Bool = false,
                     _ note: String? = nil) -> Setting {
        Setting(key: key, flag: flag, lo: lo, hi: hi, loOpen: loOpen, integer: false, note: note)
    }

    var rangeText: String {
        func num(_ v: Double) -> String {
            if integer || v == v.rounded(), abs(v) < 1e15 { return String(Int(v)) }
            return String(v)
        }
        let core: String
        if integer {
            core = "an integer from \(num(lo)) to \(num(hi))"
        } else if loOpen {
            core = "a number > \(num(lo)) and ≤ \(num(hi))"
        } else {
            core = "a number from \(num(lo)) to \(num(hi))"
        }
        return note.map { "\(core) (\($0))" } ?? core
    }

    func contains(_ v: Double) -> Bool {
        v.isFinite && (loOpen ? v > lo : v >= lo) && v <= hi && (!integer || v == v.rounded())
    }
}

/// Where a set of values came from: it decides how an error names the value.
public enum SettingSource: Sendable {
    /// Command-line flags: `--batch-size`.
    case flags
    /// A file and the section the keys are in: `train.batch_size`, at `path`.
    case file(String, section: String)
    /// A library call: `Trainer.Options.batch_size`.
    case api(String)
    /// A YAML file, with the line of every key path (`train.batch_size`) so the error names the line.
    case yaml(String, section: String, lines: [String: Int])

    func name(_ s: Setting) -> String {
        switch self {
        case .flags: return s.flag ?? s.key
        case .file(_, let section), .yaml(_, let section, _): return section.isEmpty ? s.key : "\(section).\(s.key)"
        case .api(let type): return "\(type).\(s.key)"
        }
    }

    var location: String? {
        switch self {
        case .file(let path, _), .yaml(let path, _, _): return path
        default: return nil
        }
    }

    /// Where setting `s` is: the file, and for YAML its line.
    func location(of s: Setting) -> String? {
        if case .yaml(let path, _, let lines) = self, let line = lines[name(s)] { return "\(path), line \(line)" }
        return location
    }
}

public enum Settings {
    /// Largest step, sequence and batch counts: far above any real run, small enough that their products with model
    /// sizes stay exact in `Int` and in `Double`.
    public static let maxSteps = 1_000_000_000
    public static let maxTokens = 1 << 24

    /// Every numeric setting, by key.
    public static let table: [String: Setting] = {
        let all: [Setting] = [
            // Training (Trainer.Options; `train` in pipelines; `options` in trainer_state.json).
            .int("steps", "--steps", 1, maxSteps),
            .int("batch_size", "--batch-size", 1, 65_536),
            .int("seq_len", "--seq-len", 1, maxTokens),
            .real("lr", "--lr", 0, 10, loOpen: true),
            .real("min_lr_ratio", nil, 0, 1),
            .int("warmup", "--warmup", 0, maxSteps),
            .int("seq_len_warmup", "--seq-len-warmup", 0, maxSteps, "0: off"),
            .int("carry_reset", "--carry-reset", 0, maxSteps, "0: only at the end of the stream"),
            .real("weight_decay", "--weight-decay", 0, 10),
            .real("beta1", nil, 0, 0.999_999),
            .real("beta2", nil, 0, 0.999_999_999),
            .real("eps", nil, 0, 1, loOpen: true),
            .real("grad_clip", "--grad-clip", 0, 1e9, loOpen: true),
            .int("seed", "--seed", 0, 1 << 53),
            .real("val_fraction", "--val-fraction", 0, 0.9),
            .int("eval_every", "--eval-every", 0, maxSteps, "0: only at the end"),
            .int("eval_tokens", nil, 1, 1 << 30),
            .int("checkpoint_every", "--checkpoint-every", 0, maxSteps, "0: only at the end"),
            .int("log_every", "--log-every", 1, maxSteps),
            .int("keep_checkpoints", nil, 1, 1000),
            .int("patience", "--patience", 0, maxSteps, "0: never stop early"),
            .int("epochs", "--epochs", 1, 1_000_000),
            // Generation.
            .int("max_new_tokens", "--max-new-tokens", 0, maxTokens),
            .real("temperature", "--temperature", 0, 100, "0: greedy"),
            .int("top_k", "--top-k", 0, maxTokens, "0: all"),
            .real("top_p", "--top-p", 0, 1, loOpen: true, "1: off"),
            .real("seconds", "--seconds", 0, 86_400, loOpen: true),
            // Evaluation and inference.
            .int("chunk", "--chunk", 1, maxTokens),
            .int("threads", "--threads", 1, 1024),
            .int("length", "--length", 1, maxTokens),
            .real("max_ambiguous", "--max-ambiguous", 0, 1),
            // Audio: the model's sample rate (files are resampled to it).
            .int("sample_rate", "--sample-rate", 1000, 384_000),
            // Linear baselines (classify baseline).
            .int("k", "--k", 1, 8),
            .int("ngram_order", "--order", 1, 6),
            .real("l2", "--l2", 0, 1e6),
            // Datasets made by pipelines: record counts and split fractions.
            .int("count", "--counts", 0, 100_000_000),
            .real("fraction", "--fractions", 0, 1),
        ]
        return Dictionary(uniqueKeysWithValues: all.map { ($0.key, $0) })
    }()

    static func setting(_ key: String) -> Setting {
        guard let s = table[key] else { preconditionFailure("no setting named \(key)") }
        return s
    }

    static func error(_ s: Setting, _ got: String, _ source: SettingSource) -> MambaKitError {
        MambaKitError(source.location == nil ? .usage : .config,
                      "\(source.name(s)) must be \(s.rangeText) (got \(got))", at: source.location(of: s))
    }

    /// `v` if it lies in the range of setting `key`, else an error naming it as `source` does.
    @discardableResult
    public static func check(_ key: String, _ v: Int, _ source: SettingSource) throws -> Int {
        let s = setting(key)
        guard s.contains(Double(v)) else { throw error(s, String(v), source) }
        return v
    }

    @discardableResult
    public static func check(_ key: String, _ v: Double, _ source: SettingSource) throws -> Double {
        let s = setting(key)
        guard s.contains(v) else { throw error(s, String(v), source) }
        return v
    }

    /// Optional values: nil passes.
    @discardableResult
    public static func check(_ key: String, _ v: Int?, _ source: SettingSource) throws -> Int? {
        if let v { try check(key, v, source) }
        return v
    }

    @discardableResult
    public static func check(_ key: String, _ v: Double?, _ source: SettingSource) throws -> Double? {
        if let v { try check(key, v, source) }
        return v
    }
}
