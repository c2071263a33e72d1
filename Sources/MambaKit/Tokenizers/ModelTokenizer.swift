/// How a model turns its data into tokens, as stored in config.json's `mambakit.tokenizer`: `"bytes"` (or absent,
/// for a 256-token model), a DNA tokenizer object (`"type": "dna"`), or an audio tokenizer object (`"type": "audio"`,
/// with the quantiser and sample rate). eval, generate, classify and predict read it, so they need no extra flags.
public enum ModelTokenizer: Sendable, Equatable {
    case bytes
    case dna(DNATokenizer)
    case audio(AudioTokenizer)

    public init(config c: MambaConfig, at location: String) throws {
        switch c.mambakit["tokenizer"] {
        case let o as [String: Any]:
            switch o["type"] as? String {
            case "audio": self = .audio(try AudioTokenizer(json: o, location: location + ", mambakit.tokenizer"))
            default: self = .dna(try DNATokenizer(json: o, location: location + ", mambakit.tokenizer"))
            }
        case let s as String where s == ByteTokenizer.name:
            self = .bytes
        case nil where c.vocabSize == 256:
            self = .bytes
        default:
            throw MambaKitError(.config, "mambakit.tokenizer is missing or not understood", at: location)
        }
        guard vocabSize == c.vocabSize else {
            throw MambaKitError(.config, "the tokenizer has \(vocabSize) tokens but the model's vocab_size is \(c.vocabSize)", at: location)
        }
    }

    public var vocabSize: Int {
        switch self {
        case .bytes: return 256
        case let .dna(t): return t.vocabSize
        case let .audio(t): return t.vocabSize
        }
    }

    /// The value stored in `mambakit.tokenizer`.
    public var json: Any {
        switch self {
        case .bytes: return ByteTokenizer.name
        case let .dna(t): return t.toJSON()
        case let .audio(t): return t.toJSON()
        }
    }

    /// The data format this tokenizer reads.
    public var format: DataFormat {
        switch self {
        case .bytes: return .bytes
        case .dna: return .fasta
        case .audio: return .audio
        }
    }

    /// Token id → id of its reverse complement (DNA only).
    public var complementIDs: [Int32]? {
        if case let .dna(t) = self { return t.complementIDs }
        return nil
    }
}
