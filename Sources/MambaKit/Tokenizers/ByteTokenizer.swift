/// The tokenizer-free vocabulary of MambaByte (arXiv 2401.13660): every byte is its own token, 0…255.
/// Nothing is lost or normalised, so any file round-trips exactly.
public enum ByteTokenizer {
    public static let vocabSize = 256
    public static let name = "bytes"

    public static func encode(_ bytes: [UInt8]) -> [Int32] { bytes.map { Int32($0) } }

    public static func decode(_ ids: [Int32]) -> [UInt8] { ids.map { UInt8(truncatingIfNeeded: $0) } }
}
