import Foundation

// DNA tokenizers: the byte vocabulary (every byte its own id, as in MambaByte and the Mamba paper's DNA models) or a
// small nucleotide vocabulary (as HyenaDNA/Caduceus's character tokenizer), both behind explicit policies for case
// (soft-masking) and IUPAC ambiguity codes (DESIGN.md §6). The letters and the complement table follow IUPAC as
// htslib and Biopython read them (FACTS.md): A C G T, N, and the ambiguity codes R Y S W K M B D H V, in both cases.
// Anything else (digits, '-', '*', '.', blanks, U) is an error that names its position: a tokenizer that silently
// drops or rewrites bytes would shift every later position.

/// What happens to lower-case (soft-masked) letters.
public enum CasePolicy: String, Sendable, CaseIterable {
    /// Lower case stays lower case: repeats soft-masked by RepeatMasker stay visible to the model (the default).
    case keep
    /// Everything is upper-cased first.
    case upper
}

/// What happens to the IUPAC ambiguity codes R Y S W K M B D H V (N is always a plain letter).
public enum IUPACPolicy: String, Sendable, CaseIterable {
    /// Kept: their own byte in the byte vocabulary, `<unk>` in the nucleotide vocabulary (the default).
    case keep
    /// Replaced by N (n if lower case and the case policy keeps case).
    case toN
    /// An error naming the position.
    case reject
}

/// The token ids a DNA sequence maps to.
public enum DNAVocabulary: String, Sendable, CaseIterable {
    /// 256 ids, id = byte value after the policies are applied; decoding is exact.
    case bytes
    /// 13 ids, fixed whatever the policies (so an id always means the same letter):
    ///
    /// | id | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12 |
    /// | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
    /// | symbol | `<pad>` | `<sep>` | `<unk>` | A | C | G | T | N | a | c | g | t | n |
    ///
    /// `<pad>` fills batches, `<sep>` starts or separates records (bos), `<unk>` stands for an ambiguity code kept
    /// under `IUPACPolicy.keep`. Lower case maps to ids 8–12 under `CasePolicy.keep` and to 3–7 under `.upper`.
    /// `encode` never emits `<pad>` or `<sep>`: the data pipeline places them.
    case nucleotide
}

/// Tokenizer of DNA sequences: a vocabulary and two policies. Stored in a model's `config.json` under `mambakit`
/// through `toJSON()` / `init(json:)`.
///
/// ```swift
/// let tok = DNATokenizer(vocabulary: .nucleotide, casePolicy: .upper)
/// let ids = try tok.encode(Array("ACgtN".utf8), location: "x.fa, record 'chr1'")   // [3, 4, 5, 6, 7]
/// ```
public struct DNATokenizer: Sendable, Equatable {
    public var vocabulary: DNAVocabulary
    public var casePolicy: CasePolicy
    public var iupacPolicy: IUPACPolicy

    /// Nucleotide-vocabulary ids of the special tokens.
    public static let padID: Int32 = 0
    public static let sepID: Int32 = 1
    public static let unkID: Int32 = 2
    /// The symbol of each nucleotide-vocabulary id (index = id).
    public static let nucleotideSymbols = ["<pad>", "<sep>", "<unk>", "A", "C", "G", "T", "N", "a", "c", "g", "t", "n"]

    public init(vocabulary: DNAVocabulary = .bytes, casePolicy: CasePolicy = .keep, iupacPolicy: IUPACPolicy = .keep) {
        self.vocabulary = vocabulary
        self.casePolicy = casePolicy
        self.iupacPolicy = iupacPolicy
    }

    /// 256 for `.bytes`, 13 for `.nucleotide` (see `DNAVocabulary`).
    public var vocabSize: Int {
        switch vocabulary {
        case .bytes: return 256
        case .nucleotide: return DNATokenizer.nucleotideSymbols.count
        }
    }

    /// Tokens for one sequence (no special tokens added). Throws `MambaKitError(.format)` at `location` (e.g. "x.fa,
    /// record 'chr1'") for a byte that is not an IUPAC letter, or for an ambiguity code under `IUPACPolicy.reject`;
    /// the message names the byte and its 1-based position in the sequence.
    public func encode(_ seq: [UInt8], location: String) throws -> [Int32] {
        let table = lookupTable()
        var out = [Int32](repeating: 0, count: seq.count)
        var bad = -1
        seq.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                table.withUnsafeBufferPointer { t in
                    for i in 0..<s.count {
                        let id = t[Int(s[i])]
                        if id < 0 { bad = i; return }
                        o[i] = id
                    }
                }
            }
        }
        if bad >= 0 { throw encodeError(byte: seq[bad], index: bad, location: location) }
        return out
    }

    /// Bytes for ids. Never fails: in the nucleotide vocabulary `<pad>` and `<sep>` are dropped and `<unk>` decodes
    /// as N; an id outside the vocabulary decodes as N.
    public func decode(_ ids: [Int32]) -> [UInt8] {
        let n = UInt8(ascii: "N")
        switch vocabulary {
        case .bytes:
            return ids.map { (0...255).contains($0) ? UInt8($0) : n }
        case .nucleotide:
            let letters = Array("???ACGTNacgtn".utf8)
            var out: [UInt8] = []
            out.reserveCapacity(ids.count)
            for id in ids {
                switch id {
                case DNATokenizer.padID, DNATokenizer.sepID: continue
                case 3..<Int32(letters.count): out.append(letters[Int(id)])
                default: out.append(n)
                }
            }
            return out
        }
    }

    // MARK: - Tables

    /// Token id per byte value after both policies; -1 where `encode` must throw.
    func lookupTable() -> [Int32] {
        var t = [Int32](repeating: -1, count: 256)
        for upper in IUPAC.letters {
            for byte in [upper, upper | 0x20] {
                let isLower = byte != upper
                if IUPAC.ambiguity.contains(upper) && iupacPolicy == .reject { continue }
                // The letter after the policies: ambiguity codes may become N, lower case may become upper.
                var letter = IUPAC.ambiguity.contains(upper) && iupacPolicy == .toN ? UInt8(ascii: "N") : upper
                let lower = isLower && casePolicy == .keep
                if lower { letter |= 0x20 }
                switch vocabulary {
                case .bytes:
                    t[Int(byte)] = Int32(letter)
                case .nucleotide:
                    if let k = Array("ACGTN".utf8).firstIndex(of: letter & ~0x20) {
                        t[Int(byte)] = Int32(3 + k + (lower ? 5 : 0))
                    } else {
                        t[Int(byte)] = DNATokenizer.unkID
                    }
                }
            }
        }
        return t
    }

    private func encodeError(byte: UInt8, index: Int, location: String) -> MambaKitError {
        let shown = byte >= 0x21 && byte < 0x7F ? "'\(Character(Unicode.Scalar(byte)))' (0x\(hex(byte)))" : "0x\(hex(byte))"
        if IUPAC.ambiguity.contains(byte & ~0x20) {
            return MambaKitError(.format, "IUPAC ambiguity code \(shown) at position \(index + 1) (1-based) of the "
                + "sequence is rejected by iupac_policy 'reject'", at: location)
        }
        return MambaKitError(.format, "byte \(shown) at position \(index + 1) (1-based) of the sequence is not an "
            + "IUPAC nucleotide letter (expected one of ACGTN RYSWKMBDHV, either case)", at: location)
    }

    private func hex(_ b: UInt8) -> String {
        let s = String(b, radix: 16, uppercase: false)
        return s.count == 1 ? "0" + s : s
    }

    // MARK: - JSON (the `mambakit.tokenizer` object of config.json)

    /// `{"type": "dna", "vocabulary": ..., "case_policy": ..., "iupac_policy": ..., "vocab_size": ...}`.
    public func toJSON() -> [String: Any] {
        ["type": "dna", "vocabulary": vocabulary.rawValue, "case_policy": casePolicy.rawValue,
         "iupac_policy": iupacPolicy.rawValue, "vocab_size": vocabSize]
    }

    /// Reads what `toJSON()` wrote. `vocabulary` is required; a missing policy takes its default; `type`, if given,
    /// must be "dna" and `vocab_size`, if given, must match the vocabulary. Unknown keys are ignored.
    public init(json: [String: Any], location: String = "config.json, mambakit.tokenizer") throws {
        func value<T: RawRepresentable & CaseIterable>(_ key: String, _: T.Type, default d: T?) throws -> T
        where T.RawValue == String {
            guard let raw = json[key] else {
                if let d { return d }
                throw MambaKitError(.config, "tokenizer setting '\(key)' is missing", at: location)
            }
            let allowed = T.allCases.map { $0.rawValue }.joined(separator: ", ")
            guard let s = raw as? String, let v = T(rawValue: s) else {
                throw MambaKitError(.config, "tokenizer setting '\(key)' is \(raw) (expected one of \(allowed))",
                                    at: location)
            }
            return v
        }
        if let type = json["type"], (type as? String) != "dna" {
            throw MambaKitError(.config, "tokenizer type is \(type) (expected dna)", at: location)
        }
        self.init(vocabulary: try value("vocabulary", DNAVocabulary.self, default: nil),
                  casePolicy: try value("case_policy", CasePolicy.self, default: .keep),
                  iupacPolicy: try value("iupac_policy", IUPACPolicy.self, default: .keep))
        if let size = json["vocab_size"] {
            guard let n = (size as? Int) ?? (size as? NSNumber)?.intValue, n == vocabSize else {
                throw MambaKitError(.config, "tokenizer vocab_size is \(size) but vocabulary '\(vocabulary.rawValue)' "
                    + "has \(vocabSize) tokens", at: location)
            }
        }
    }
}

/// The IUPAC nucleotide letters (upper case).
enum IUPAC {
    static let letters = Set("ACGTNRYSWKMBDHV".utf8)
    static let ambiguity = Set("RYSWKMBDHV".utf8)
}

/// Reverse complement over the IUPAC alphabet (FACTS.md): A↔T, C↔G, R↔Y, K↔M, B↔V, D↔H, S, W and N themselves, case
/// kept. Every other byte ('-', '*', '.', digits) is kept as it is, so gapped or masked text keeps its positions.
public enum ReverseComplement {
    /// The complement of each byte value.
    public static let table: [UInt8] = {
        var t = (0...255).map { UInt8($0) }
        let pairs = ["AT", "CG", "RY", "KM", "BV", "DH", "SS", "WW", "NN"]
        for p in pairs {
            let a = p.utf8.first!, b = p.utf8.last!
            t[Int(a)] = b
            t[Int(b)] = a
            t[Int(a | 0x20)] = b | 0x20
            t[Int(b | 0x20)] = a | 0x20
        }
        return t
    }()

    public static func apply(_ seq: [UInt8]) -> [UInt8] {
        let n = seq.count
        return [UInt8](unsafeUninitializedCapacity: n) { out, count in
            table.withUnsafeBufferPointer { t in
                seq.withUnsafeBufferPointer { s in
                    for i in 0..<n { out[n - 1 - i] = t[Int(s[i])] }
                }
            }
            count = n
        }
    }
}
