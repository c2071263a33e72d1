import Foundation
import MambaKit
import Testing

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// IUPAC complement pairs, written out from FACTS.md (htslib / Biopython), independent of the implementation's table.
private let complementOf: [Character: Character] = [
    "A": "T", "T": "A", "C": "G", "G": "C", "R": "Y", "Y": "R", "K": "M", "M": "K", "B": "V", "V": "B",
    "D": "H", "H": "D", "S": "S", "W": "W", "N": "N",
    "a": "t", "t": "a", "c": "g", "g": "c", "r": "y", "y": "r", "k": "m", "m": "k", "b": "v", "v": "b",
    "d": "h", "h": "d", "s": "s", "w": "w", "n": "n",
]

@Suite struct DNATokenizerTests {
    // MARK: Reverse complement

    @Test func complementTableCoversEveryIUPACLetterInBothCases() {
        #expect(complementOf.count == 30)
        for (letter, want) in complementOf {
            let got = ReverseComplement.apply([letter.asciiValue!])
            #expect(got == [want.asciiValue!], "complement of \(letter)")
        }
    }

    @Test func reverseComplementReversesAndKeepsOtherBytes() {
        #expect(text(ReverseComplement.apply(bytes("ACGTTGCAaccN"))) == "NggtTGCAACGT")
        #expect(text(ReverseComplement.apply(bytes("AC-GT*.x"))) == "x.*AC-GT")
        #expect(ReverseComplement.apply([]) == [])
        // Every byte that is not an IUPAC letter maps to itself.
        let letters = Set(complementOf.keys.map { $0.asciiValue! })
        for b in 0...255 where !letters.contains(UInt8(b)) {
            #expect(ReverseComplement.table[b] == UInt8(b), "byte 0x\(String(b, radix: 16))")
        }
    }

    @Test func reverseComplementIsAnInvolution() {
        var rng = RNG(seed: 42)
        let alphabet = bytes("ACGTNRYSWKMBDHVacgtnryswkmbdhv-*")
        for _ in 0..<200 {
            let n = rng.int(below: 300)
            let s = (0..<n).map { _ in alphabet[rng.int(below: alphabet.count)] }
            let rc = ReverseComplement.apply(s)
            #expect(ReverseComplement.apply(rc) == s)
            #expect(rc.count == s.count)
        }
    }

    // MARK: Byte vocabulary

    @Test func bytesVocabularyDefaultsKeepEverything() throws {
        let tok = DNATokenizer()
        #expect(tok.vocabulary == .bytes && tok.casePolicy == .keep && tok.iupacPolicy == .keep)
        #expect(tok.vocabSize == 256)
        let s = bytes("ACGTNacgtnRYSWKMBDHVryswkmbdhv")
        let ids = try tok.encode(s, location: "test")
        #expect(ids == s.map { Int32($0) })
        #expect(tok.decode(ids) == s)
    }

    @Test func casePolicyUpper() throws {
        let tok = DNATokenizer(casePolicy: .upper)
        #expect(text(tok.decode(try tok.encode(bytes("acgtnRyswk"), location: "t"))) == "ACGTNRYSWK")
    }

    @Test func iupacPolicyToN() throws {
        let keepCase = DNATokenizer(iupacPolicy: .toN)
        #expect(text(keepCase.decode(try keepCase.encode(bytes("ACRYnsWk"), location: "t"))) == "ACNNnnNn")
        let upper = DNATokenizer(casePolicy: .upper, iupacPolicy: .toN)
        #expect(text(upper.decode(try upper.encode(bytes("ACRYnsWkgt"), location: "t"))) == "ACNNNNNNGT")
    }

    @Test func iupacPolicyRejectNamesTheCodeAndPosition() {
        let tok = DNATokenizer(iupacPolicy: .reject)
        #expect(thrown { _ = try tok.encode(bytes("ACGTNacgtn"), location: "t") } == nil)
        let e = thrown { _ = try tok.encode(bytes("ACGTNNy"), location: "x.fa, record 'chr2'") }
        #expect(e?.kind == .format)
        #expect(e?.message.contains("'y'") == true, "\(String(describing: e))")
        #expect(e?.message.contains("position 7") == true, "\(String(describing: e))")
        #expect(e?.message.contains("reject") == true, "\(String(describing: e))")
        #expect(e?.location == "x.fa, record 'chr2'")
    }

    @Test func nonIUPACBytesAreErrorsUnderEveryPolicy() {
        for vocab in DNAVocabulary.allCases {
            for c in CasePolicy.allCases {
                for i in IUPACPolicy.allCases {
                    let tok = DNATokenizer(vocabulary: vocab, casePolicy: c, iupacPolicy: i)
                    for (seq, pos, shown) in [("ACGT-A", 5, "'-' (0x2d)"), ("U", 1, "'U' (0x55)"),
                                              ("acgtn*", 6, "'*' (0x2a)"), ("AC GT", 3, "0x20"),
                                              ("ACGT\r", 5, "0x0d"), ("AAAE", 4, "'E' (0x45)")] {
                        let e = thrown { _ = try tok.encode(bytes(seq), location: "r.fa, record 'one'") }
                        #expect(e?.kind == .format)
                        #expect(e?.message.contains("byte \(shown) at position \(pos) (1-based)") == true,
                                "\(seq): \(String(describing: e))")
                        #expect(e?.location == "r.fa, record 'one'")
                    }
                    #expect(thrown { _ = try tok.encode([0xC3, 0x41], location: "t") }?.message
                        .contains("byte 0xc3 at position 1") == true)
                }
            }
        }
    }

    // MARK: Nucleotide vocabulary

    @Test func nucleotideIDs() throws {
        let tok = DNATokenizer(vocabulary: .nucleotide)
        #expect(tok.vocabSize == 13)
        #expect(DNATokenizer.nucleotideSymbols == ["<pad>", "<sep>", "<unk>", "A", "C", "G", "T", "N",
                                                   "a", "c", "g", "t", "n"])
        #expect(DNATokenizer.padID == 0 && DNATokenizer.sepID == 1 && DNATokenizer.unkID == 2)
        #expect(try tok.encode(bytes("ACGTNacgtn"), location: "t") == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        // Ambiguity codes are <unk> under .keep, N/n under .toN.
        #expect(try tok.encode(bytes("RyA"), location: "t") == [2, 2, 3])
        let toN = DNATokenizer(vocabulary: .nucleotide, iupacPolicy: .toN)
        #expect(try toN.encode(bytes("RyA"), location: "t") == [7, 12, 3])
        // Upper case folds lower-case letters onto the upper-case ids.
        let upper = DNATokenizer(vocabulary: .nucleotide, casePolicy: .upper)
        #expect(try upper.encode(bytes("ACGTNacgtn"), location: "t") == [3, 4, 5, 6, 7, 3, 4, 5, 6, 7])
        #expect(upper.vocabSize == 13)
    }

    @Test func nucleotideDecode() throws {
        let tok = DNATokenizer(vocabulary: .nucleotide)
        let s = bytes("ACGTNacgtnNNa")
        #expect(tok.decode(try tok.encode(s, location: "t")) == s)
        // Specials: pad and sep dropped, unk and out-of-range ids read as N.
        #expect(text(tok.decode([1, 3, 2, 6, 0, 0, 13, -1, 8])) == "ANTNNa")
    }

    @Test func bytesDecodeOutOfRangeIsN() {
        #expect(text(DNATokenizer().decode([65, 256, -1, 99])) == "ANNc")
    }

    @Test func everyPolicyCombinationRoundTripsItsOwnOutput() throws {
        // decode(encode(s)) is a fixed point: encoding it again gives the same ids.
        let s = bytes("ACGTNacgtnRYSWKMBDHVryswkmbdhv")
        for vocab in DNAVocabulary.allCases {
            for c in CasePolicy.allCases {
                for i in IUPACPolicy.allCases where i != .reject {
                    let tok = DNATokenizer(vocabulary: vocab, casePolicy: c, iupacPolicy: i)
                    let ids = try tok.encode(s, location: "t")
                    #expect(ids.allSatisfy { $0 >= 0 && Int($0) < tok.vocabSize })
                    let again = try tok.encode(tok.decode(ids), location: "t")
                    if vocab == .nucleotide && i == .keep {
                        // <unk> decodes as N, which encodes as N: the one lossy step.
                        #expect(again.count == ids.count)
                    } else {
                        #expect(again == ids, "\(vocab) \(c) \(i)")
                    }
                }
            }
        }
    }

    @Test func encodesLongSequences() throws {
        var rng = RNG(seed: 7)
        let alphabet = bytes("ACGTacgtN")
        let s = (0..<1_000_000).map { _ in alphabet[rng.int(below: alphabet.count)] }
        let tok = DNATokenizer(vocabulary: .nucleotide)
        let ids = try tok.encode(s, location: "t")
        #expect(tok.decode(ids) == s)
    }

    // MARK: JSON

    @Test func jsonRoundTripForEverySetting() throws {
        for vocab in DNAVocabulary.allCases {
            for c in CasePolicy.allCases {
                for i in IUPACPolicy.allCases {
                    let tok = DNATokenizer(vocabulary: vocab, casePolicy: c, iupacPolicy: i)
                    let json = tok.toJSON()
                    #expect(json["type"] as? String == "dna")
                    #expect(json["vocab_size"] as? Int == tok.vocabSize)
                    #expect(try DNATokenizer(json: json) == tok)
                    // Through real JSON text, as config.json stores it.
                    let data = try JSONSerialization.data(withJSONObject: ["mambakit": ["tokenizer": json]])
                    let back = try JSONSerialization.jsonObject(with: data) as! [String: Any]
                    let obj = (back["mambakit"] as! [String: Any])["tokenizer"] as! [String: Any]
                    #expect(try DNATokenizer(json: obj) == tok)
                    let written = JSONWriter.string(json)
                    let parsed = try JSONSerialization.jsonObject(with: Data(written.utf8)) as! [String: Any]
                    #expect(try DNATokenizer(json: parsed) == tok)
                }
            }
        }
    }

    @Test func jsonDefaultsAndErrors() throws {
        #expect(try DNATokenizer(json: ["vocabulary": "nucleotide"]) == DNATokenizer(vocabulary: .nucleotide))
        let missing = thrown { _ = try DNATokenizer(json: ["case_policy": "upper"]) }
        #expect(missing?.kind == .config)
        #expect(missing?.message.contains("'vocabulary' is missing") == true)
        let bad = thrown { _ = try DNATokenizer(json: ["vocabulary": "bytes", "iupac_policy": "drop"]) }
        #expect(bad?.message.contains("expected one of keep, toN, reject") == true, "\(String(describing: bad))")
        let size = thrown { _ = try DNATokenizer(json: ["vocabulary": "nucleotide", "vocab_size": 256]) }
        #expect(size?.message.contains("vocab_size is 256") == true, "\(String(describing: size))")
        let type = thrown { _ = try DNATokenizer(json: ["type": "bpe", "vocabulary": "bytes"], location: "m/config.json") }
        #expect(type?.message.contains("expected dna") == true)
        #expect(type?.location == "m/config.json")
    }

    // MARK: The committed samples

    /// Every file of samples/dna/ reads with SequenceReader (gzip and BGZF) and holds only IUPAC letters.
    @Test func dnaSamplesReadAndTokenize() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("samples/dna").path
        let expected: [(String, Int, Int)] = [   // path, records, bases
            ("origin/lambda_phage.fa.gz", 1, 48_502), ("origin/s_aureus.fa.gz", 1, 200_000),
            ("origin/h_pylori.fa.gz", 1, 200_000), ("origin/c_elegans.fa.gz", 1, 200_000),
            ("origin/h_sapiens.fa.gz", 1, 40_000), ("genome/h_pylori_f32.fa.gz", 1, 1_578_824),
            ("promoters/dm3_upstream2000_subset.fa.gz", 1000, 2_000_000), ("bgzf/genes.fasta.gz", 20, 69_469),
        ]
        let tok = DNATokenizer(vocabulary: .nucleotide, iupacPolicy: .reject)
        for (file, records, bases) in expected {
            let path = root + "/" + file
            let reader = try SequenceReader(path: path)
            #expect(reader.isCompressed && reader.format == .fasta, "\(file)")
            var n = 0, total = 0
            while let r = try reader.next() {
                n += 1
                total += r.sequence.count
                _ = try tok.encode(r.sequence, location: "\(path), record '\(r.name)'")
            }
            #expect(n == records && total == bases, "\(file): \(n) records, \(total) bases")
        }
    }
}
