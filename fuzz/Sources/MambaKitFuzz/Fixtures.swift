import Foundation
import MambaKit

/// The fixed files some targets read beside the fuzzed one, written once per process into its work directory:
/// a small FASTA and FASTQ, plain and BGZF (in 256-byte blocks, so the .gzi has entries), with their indexes; the
/// FASTA the label TSVs refer to.
struct FuzzFixtures {
    struct Indexed {
        let plain: String
        let bgzf: String
        let index: FastaIndex
        let gzi: BGZFIndex
    }

    let fasta: Indexed
    let fastq: Indexed
    let labelsFasta: String

    static let fastaText: String = {
        var rng = SplitMix(seed: 7)
        func bases(_ n: Int, _ alphabet: String) -> String {
            let letters = Array(alphabet)
            return String((0..<n).map { _ in letters[Int(rng.next() % UInt64(letters.count))] })
        }
        func lines(_ s: String, width: Int) -> String {
            var out = ""
            var rest = Substring(s)
            while !rest.isEmpty {
                out += rest.prefix(width) + "\n"
                rest = rest.dropFirst(width)
            }
            return out
        }
        return ">chr1 first record\n" + lines(bases(300, "ACGT"), width: 60)
            + ">chr2\n" + lines(bases(61, "acgtNRY"), width: 60)
            + ">empty\n"
            + ">chr3\tdescription with tab\n" + lines(bases(250, "ACGTN"), width: 50)
            + ">chr4\n" + lines(bases(7, "ACGT"), width: 60)
    }()

    static let fastqText: String = {
        var rng = SplitMix(seed: 11)
        var text = ""
        for (i, length) in [40, 1, 75, 12].enumerated() {
            let seq = String((0..<length).map { _ in Array("ACGTN")[Int(rng.next() % 5)] })
            let qual = String((0..<length).map { _ in Character(Unicode.Scalar(UInt8(33 + rng.next() % 41))) })
            text += "@read\(i + 1) sample=\(i)\n\(seq)\n+\n\(qual)\n"
        }
        return text
    }()

    static let labelsFastaText = ">s1 first\nACGTACGTAA\n>s2\nGGGCCCAAAT\n>s3\nacgtnacgtn\n>s4\nTTTTT\n"

    /// A small valid config.json (a byte-level Mamba-1 model), a seed of the config target.
    static let configJSON = """
        {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "state_size": 4,
         "expand": 2, "conv_kernel": 4, "mambakit": {"format": "bytes", "tokenizer": "bytes"}}
        """

    init(directory: String) throws {
        fasta = try Self.indexed(Array(Self.fastaText.utf8), name: "fixed.fa", in: directory)
        fastq = try Self.indexed(Array(Self.fastqText.utf8), name: "fixed.fq", in: directory)
        labelsFasta = directory + "/labels.fa"
        try Data(Self.labelsFastaText.utf8).write(to: URL(fileURLWithPath: labelsFasta))
    }

    /// Writes `text` plain and as BGZF and indexes both; checks that the two indexes agree.
    private static func indexed(_ text: [UInt8], name: String, in directory: String) throws -> Indexed {
        let plain = directory + "/" + name
        let bgzfPath = plain + ".gz"
        try Data(text).write(to: URL(fileURLWithPath: plain))
        try Data(try bgzf(text, blockSize: 256)).write(to: URL(fileURLWithPath: bgzfPath))
        let (index, none) = try FastaIndex.build(scanning: plain)
        let (bgzfIndex, gzi) = try FastaIndex.build(scanning: bgzfPath)
        guard none == nil, let gzi, !gzi.blocks.isEmpty, bgzfIndex == index else {
            fail("the fixed file \(name) did not index as expected")
        }
        return Indexed(plain: plain, bgzf: bgzfPath, index: index, gzi: gzi)
    }
}

/// `bytes` as BGZF: blocks of at most `blockSize` input bytes, then the empty end-of-file block, as bgzip writes.
func bgzf(_ bytes: [UInt8], blockSize: Int) throws -> [UInt8] {
    var out: [UInt8] = []
    var start = 0
    while start < bytes.count {
        let end = min(start + blockSize, bytes.count)
        out += try bgzfBlock(Array(bytes[start..<end]))
        start = end
    }
    return out + (try bgzfBlock([]))
}

/// One BGZF block: a gzip member (from `Gzip.compress`, whose header is the plain 10 bytes) given the FEXTRA flag
/// and a 6-byte extra field holding the `BC` subfield with the block size minus one.
func bgzfBlock(_ data: [UInt8]) throws -> [UInt8] {
    let member = try Gzip.compress(data)
    precondition(member.count >= 18 && member[3] == 0, "unexpected gzip header from Gzip.compress")
    let size = member.count + 8
    precondition(size <= 65536, "BGZF block too large")
    var block = Array(member[0..<10])
    block[3] = 0x04
    block += [6, 0, 0x42, 0x43, 2, 0, UInt8((size - 1) & 0xFF), UInt8((size - 1) >> 8)]
    return block + member[10...]
}

/// SplitMix64, for the fixed files' bases (any fixed sequence would do; this one is short).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
