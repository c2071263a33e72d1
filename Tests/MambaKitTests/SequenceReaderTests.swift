import CZlib
import Foundation
import MambaKit
import Testing

/// A unique temporary directory, removed by `cleanUp()`.
private struct SeqTempDir {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "/mambakit-seqreader-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = path + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }

    func write(_ name: String, _ text: String) throws -> String { try write(name, Array(text.utf8)) }

    func cleanUp() { try? FileManager.default.removeItem(atPath: path) }
}

private func readAll(_ path: String) throws -> [SequenceRecord] {
    let reader = try SequenceReader(path: path)
    var out: [SequenceRecord] = []
    while let r = try reader.next() { out.append(r) }
    return out
}

/// Reads every record and returns the error thrown, if any.
private func readError(_ path: String) -> MambaKitError? {
    do {
        _ = try readAll(path)
        return nil
    } catch let e as MambaKitError {
        return e
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Deterministic generator for the garbage tests.
private struct SeqSplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private let fastqExample = "@r1 first read\nACGTN\n+\n@@II#\n@r2\nacg\n+r2\n@AB\n"

@Suite("SequenceReader")
struct SequenceReaderTests {
    @Test func fastaMultiLineCRLFLowerCaseAndDescription() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let path = try dir.write("a.fa", ">  chr1  soft masked\tregion \r\nACGTac\r\ngtNN\r\n>chr2\r\nTTTT")
        let reader = try SequenceReader(path: path)
        #expect(reader.format == .fasta)
        let r1 = try #require(try reader.next())
        #expect(r1.name == "chr1")
        #expect(r1.description == "soft masked\tregion ")
        #expect(r1.sequence == bytes("ACGTacgtNN"))
        #expect(r1.quality == nil)
        let r2 = try #require(try reader.next())
        #expect(r2.name == "chr2")
        #expect(r2.description == "")
        #expect(r2.sequence == bytes("TTTT"))
        #expect(try reader.next() == nil)
        #expect(try reader.next() == nil)
    }

    @Test(arguments: ["\n", "\r\n"])
    func faidxExampleReadsBackExactly(terminator: String) throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let text = faidxExample.replacingOccurrences(of: "\n", with: terminator)
        let records = try readAll(try dir.write("ex.fa", text))
        #expect(records.count == 2)
        #expect(records[0].name == "one")
        #expect(records[0].description == "")
        #expect(records[0].sequence.count == 66)
        #expect(records[0].sequence == bytes(String(repeating: "ATGC", count: 16) + "AT"))
        #expect(records[1].name == "two")
        #expect(records[1].description == "another chromosome")
        #expect(records[1].sequence.count == 28)
        #expect(records[1].sequence == bytes(String(repeating: "ATGC", count: 7)))
    }

    @Test func emptyFastaRecordIsValid() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let records = try readAll(try dir.write("e.fa", ">empty\n>full x\nAC\n>last\n"))
        #expect(records.map(\.name) == ["empty", "full", "last"])
        #expect(records.map(\.sequence) == [[], bytes("AC"), []])
    }

    @Test func fastqWithQualityStartingWithAt() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let reader = try SequenceReader(path: try dir.write("r.fq", fastqExample))
        #expect(reader.format == .fastq)
        let r1 = try #require(try reader.next())
        #expect(r1.name == "r1")
        #expect(r1.description == "first read")
        #expect(r1.sequence == bytes("ACGTN"))
        #expect(r1.quality == bytes("@@II#"))
        let r2 = try #require(try reader.next())
        #expect(r2.name == "r2")
        #expect(r2.sequence == bytes("acg"))
        #expect(r2.quality == bytes("@AB"))
        #expect(try reader.next() == nil)
    }

    @Test func gzipReadsTheSameRecords() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        for (name, text) in [("ex.fa", faidxExample), ("r.fq", fastqExample)] {
            let plain = try readAll(try dir.write(name, text))
            let gz = try Gzip.compress(bytes(text))
            #expect(gz.prefix(2) == [0x1F, 0x8B])
            let reader = try SequenceReader(path: try dir.write(name + ".gz", gz))
            #expect(reader.isCompressed)
            var zipped: [SequenceRecord] = []
            while let r = try reader.next() { zipped.append(r) }
            #expect(zipped == plain)
            #expect(!plain.isEmpty)
        }
    }

    @Test func concatenatedGzipMembersReadAsOneStream() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        // The split falls inside a record, so the record spans two members.
        let text = faidxExample
        let cut = text.index(text.startIndex, offsetBy: 40)
        let first = try Gzip.compress(bytes(String(text[..<cut])))
        let second = try Gzip.compress(bytes(String(text[cut...])))
        let bgzfEOF: [UInt8] = [0x1F, 0x8B, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x06, 0x00, 0x42, 0x43,
                                0x02, 0x00, 0x1B, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
        let want = try readAll(try dir.write("ex.fa", text))
        #expect(try readAll(try dir.write("two.fa.gz", first + second)) == want)
        #expect(try readAll(try dir.write("bgzf.fa.gz", first + second + bgzfEOF)) == want)
        // An empty member in the middle is fine too.
        #expect(try readAll(try dir.write("mid.fa.gz", first + bgzfEOF + second)) == want)
    }

    @Test func truncatedGzipThrows() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let gz = try Gzip.compress(bytes(faidxExample))
        let path = try dir.write("cut.fa.gz", Array(gz.dropLast(10)))
        let error = try #require(readError(path))
        #expect(error.kind == .format)
        #expect(error.description.contains("truncated"))
        #expect(error.location == path)

        // Truncated in the second member.
        let two = gz + Array(gz.dropLast(10))
        let e2 = try #require(readError(try dir.write("cut2.fa.gz", two)))
        #expect(e2.kind == .format)
        #expect(e2.description.contains("truncated"))
    }

    @Test func corruptGzipAndTrailingGarbageThrow() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let gz = try Gzip.compress(bytes(String(repeating: faidxExample, count: 20)))
        var corrupt = gz
        for i in 12..<min(40, corrupt.count - 8) { corrupt[i] ^= 0x5A }
        let e1 = try #require(readError(try dir.write("bad.fa.gz", corrupt)))
        #expect(e1.kind == .format)

        let e2 = try #require(readError(try dir.write("tail.fa.gz", gz + bytes("garbage after the member\n"))))
        #expect(e2.kind == .format)
        let e3 = try #require(readError(try dir.write("tail1.fa.gz", gz + [0x0A])))
        #expect(e3.kind == .format)

        // A zlib (RFC 1950) stream after a gzip member is not another member.
        var zlibData = [UInt8](repeating: 0, count: 64)
        var zlibCount = UInt(zlibData.count)
        var source = bytes(">b\nTTTT\n")
        #expect(compress(&zlibData, &zlibCount, &source, UInt(source.count)) == Z_OK)
        let e4 = try #require(readError(try dir.write("zlib.fa.gz", gz + zlibData[0..<Int(zlibCount)])))
        #expect(e4.kind == .format)
        #expect(e4.message.contains("data after the last gzip member is not gzip"), "\(e4)")
    }

    @Test(arguments: [
        (">a\nAC\rGT\n", 2, "carriage return"),
        (">a\nACGT\r", 2, "carriage return"),
        (">a\r\r\nACGT\n", 1, "carriage return"),
        (">a\nACGT\nAC\u{0}T\n", 3, "binary data"),
        (">a\nACGT\n>b\nA\u{1}C\n", 4, "binary data"),
        ("@r\nAC\u{1}T\n+\nIIII\n", 2, "binary data"),
        ("@r\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n", 5, "expected '@'"),
        ("@r\nACGT\nIIII\n@s\n", 3, "'+'"),
        ("@r\nACGT\n+\nIII\n", 4, "quality length 3"),
        ("@r\nACGT\n+\n", 4, "ends inside"),
        ("@r\nACGT\n", 3, "ends inside"),
        ("@r\nACGT", 3, "ends inside"),
        ("@r\n", 2, "ends inside"),
        ("ACGT\n>a\nAC\n", 1, "expected '>' or '@'"),
        ("\u{0}\u{1}binary", 1, "expected '>' or '@'"),
    ])
    func malformedInputNamesFileAndLine(text: String, line: Int, fragment: String) throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        for compressed in [false, true] {
            let content = compressed ? try Gzip.compress(bytes(text)) : bytes(text)
            let path = try dir.write(compressed ? "bad.gz" : "bad", content)
            let error = try #require(readError(path), "no error for \(text.debugDescription)")
            #expect(error.kind == .format)
            #expect(error.description.contains("\(path), line \(line)"), "\(error)")
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test func emptyFileMissingFileAndDirectory() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        #expect(try readAll(try dir.write("empty.fa", "")).isEmpty)
        #expect(try readAll(try dir.write("blank.fa", "\n\n")).isEmpty)
        #expect(try readAll(try dir.write("empty.fa.gz", try Gzip.compress([]))).isEmpty)

        let missing = dir.path + "/missing.fa"
        let e1 = try #require(readError(missing))
        #expect(e1.kind == .io)
        #expect(e1.description.contains(missing))
        let e2 = try #require(readError(dir.path))
        #expect(e2.kind == .io)
        #expect(e2.description.contains(dir.path))
    }

    @Test func randomGarbageNeverCrashes() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        var rng = SeqSplitMix(state: 20_240_531)
        let alphabet = bytes(">@+ACGTacgtN \t\r\n\n\n") + [0, 1, 0x1F, 0x8B, 0xFF]
        var records = 0
        var errors = 0
        for round in 0..<300 {
            let count = Int.random(in: 0..<600, using: &rng)
            var data: [UInt8]
            if round % 2 == 0 {
                data = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                data = (0..<count).map { _ in alphabet.randomElement(using: &rng)! }
            }
            if round % 3 == 0 {
                data = try Gzip.compress(data)
                if round % 2 == 1, !data.isEmpty {
                    // Damage a few bytes of the compressed data.
                    for _ in 0..<3 {
                        let i = Int.random(in: 0..<data.count, using: &rng)
                        data[i] = UInt8.random(in: 0...255, using: &rng)
                    }
                }
            } else if round % 5 == 0 {
                data = [0x1F, 0x8B] + data
            }
            let path = try dir.write("garbage\(round)", data)
            do {
                records += try readAll(path).count
            } catch is MambaKitError {
                errors += 1
            }
        }
        #expect(records + errors > 0)
    }

    @Test func largeFastaStreams() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        var rng = SeqSplitMix(state: 7)
        let letters = bytes("ACGTacgtN")
        var text: [UInt8] = []
        var expected: [(String, Int, UInt64)] = []  // name, length, checksum
        var recordIndex = 0
        while text.count < 2_000_000 {
            let length = recordIndex == 3 ? 1_300_000 : Int.random(in: 1..<200_000, using: &rng)
            let width = recordIndex == 3 ? length : 60  // one record on a single line longer than a chunk
            let name = "seq\(recordIndex)"
            text += bytes(">\(name) record \(recordIndex)\n")
            var sum: UInt64 = 0
            var column = 0
            for _ in 0..<length {
                let b = letters.randomElement(using: &rng)!
                sum = sum &* 31 &+ UInt64(b)
                text.append(b)
                column += 1
                if column == width { text.append(0x0A); column = 0 }
            }
            if column > 0 { text.append(0x0A) }
            expected.append((name, length, sum))
            recordIndex += 1
        }
        for compressed in [false, true] {
            let path = try dir.write(compressed ? "big.fa.gz" : "big.fa", compressed ? try Gzip.compress(text) : text)
            let reader = try SequenceReader(path: path)
            var i = 0
            var bases = 0
            while let r = try reader.next() {
                try #require(i < expected.count)
                #expect(r.name == expected[i].0)
                #expect(r.description == "record \(i)")
                #expect(r.sequence.count == expected[i].1)
                #expect(r.sequence.reduce(UInt64(0)) { $0 &* 31 &+ UInt64($1) } == expected[i].2)
                bases += r.sequence.count
                i += 1
            }
            #expect(i == expected.count)
            #expect(bases == expected.reduce(0) { $0 + $1.1 })
        }
    }

    /// The line scanner reads eight bytes at a time: a control byte at any offset of a long line (sequence or header)
    /// is found, a tab or a non-ASCII byte is not one, and a CR is an error except right before the LF.
    @Test func controlBytesAtEveryOffsetOfLongLines() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        let width = 70
        for offset in 0..<width {
            for (byte, fragment) in [(UInt8(0x00), "binary data"), (0x01, "binary data"), (0x0B, "binary data"),
                                     (0x1F, "binary data"), (0x0D, "carriage return"), (0x09, nil), (0x20, nil),
                                     (0x7F, nil), (0x80, nil), (0xFF, nil)] as [(UInt8, String?)] {
                var line = [UInt8](repeating: UInt8(ascii: "A"), count: width)
                line[offset] = byte
                // The bad line is the sequence's second line (line 3), after a clean 70-byte line.
                let text = bytes(">r desc\n") + [UInt8](repeating: UInt8(ascii: "C"), count: width) + [0x0A] + line
                    + bytes("\nGG\n")
                let path = try dir.write("o\(offset)-\(byte).fa", text)
                let crlfOK = byte == 0x0D && offset == width - 1   // "...A\r\n" is a CRLF line
                if let fragment, !crlfOK {
                    let e = try #require(readError(path), "offset \(offset), byte \(byte)")
                    #expect(e.description.contains(fragment) && e.description.contains("line 3"), "\(e)")
                } else {
                    let r = try readAll(path)
                    let want = [UInt8](repeating: UInt8(ascii: "C"), count: width) + (crlfOK ? Array(line.dropLast()) : line)
                        + bytes("GG")
                    #expect(r.count == 1 && r[0].sequence == want, "offset \(offset), byte \(byte)")
                }
                // The same byte in a long header line.
                var header = bytes(">name ") + [UInt8](repeating: UInt8(ascii: "d"), count: width)
                header[6 + offset] = byte
                let hpath = try dir.write("h\(offset)-\(byte).fa", header + bytes("\nACGT\n"))
                let hcrlf = byte == 0x0D && offset == width - 1
                if let fragment, !hcrlf {
                    let e = try #require(readError(hpath), "header offset \(offset), byte \(byte)")
                    #expect(e.description.contains(fragment) && e.description.contains("line 1"), "\(e)")
                } else {
                    let r = try readAll(hpath)
                    #expect(r.count == 1 && r[0].sequence == bytes("ACGT"), "header offset \(offset), byte \(byte)")
                }
            }
        }
    }

    /// CRLF lines, and a control byte, across the reader's 1 MiB chunk boundaries.
    @Test func crlfAndControlBytesAcrossChunkBoundaries() throws {
        let dir = try SeqTempDir()
        defer { dir.cleanUp() }
        var rng = SeqSplitMix(state: 99)
        let letters = bytes("ACGTacgtN")
        var lf: [UInt8] = []
        var crlf: [UInt8] = []
        var lines = 0
        for record in 0..<40 {
            lf += bytes(">s\(record)\n")
            crlf += bytes(">s\(record)\r\n")
            lines += 1
            for _ in 0..<1000 {
                let line = (0..<61).map { _ in letters.randomElement(using: &rng)! }
                lf += line + [0x0A]
                crlf += line + [0x0D, 0x0A]
                lines += 1
            }
        }
        #expect(crlf.count > 2 << 20)
        let a = try readAll(try dir.write("lf.fa", lf))
        let b = try readAll(try dir.write("crlf.fa", crlf))
        #expect(a.count == 40 && a == b)
        // A NUL just past the first chunk boundary: the error names its line.
        var bad = lf
        let at = (1 << 20) + 3
        bad[at] = 0
        let line = bad[0..<at].filter { $0 == 0x0A }.count + 1
        let e = try #require(readError(try dir.write("nul.fa", bad)))
        #expect(e.description.contains("binary data") && e.description.contains("line \(line)"), "\(e)")
    }
}
