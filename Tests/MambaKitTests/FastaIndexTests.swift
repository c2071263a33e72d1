import CZlib
import Foundation
import MambaKit
import Testing

// The .fai / .gzi index and random access: the faidx(5) manual-page vectors, fetches checked against SequenceReader
// on plain and BGZF files (BGZF written here block by block with zlib), and the errors for every broken rule.

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private func write(_ data: [UInt8], _ path: String) throws -> String {
    try Data(data).write(to: URL(fileURLWithPath: path))
    return path
}

private func readAll(_ path: String) throws -> [SequenceRecord] {
    try SequenceReader(path: path).readAll()
}

/// The 28-byte empty block that ends a BGZF file.
private let bgzfEOF: [UInt8] = [0x1F, 0x8B, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x06, 0x00, 0x42, 0x43,
                                0x02, 0x00, 0x1B, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]

/// BGZF-compresses `data` in blocks of at most `blockSize` input bytes: each block a gzip member (FLG.FEXTRA) whose
/// extra field is the `BC` subfield holding the block size minus one, raw deflate data, CRC32 and ISIZE; then the
/// EOF block. Returns the file and the (compressed, uncompressed) start of every data block.
private func bgzf(_ data: [UInt8], blockSize: Int = 65280) throws -> (file: [UInt8], starts: [BGZFIndex.Block]) {
    var file: [UInt8] = []
    var starts: [BGZFIndex.Block] = []
    var i = 0
    while i < data.count {
        let chunk = Array(data[i..<min(i + blockSize, data.count)])
        var stream = z_stream()
        guard deflateInit2_(&stream, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                            Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw MambaKitError(.io, "deflateInit2") }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(chunk.count))) + 16)
        var input = chunk
        let status = input.withUnsafeMutableBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                stream.next_in = inp.baseAddress
                stream.avail_in = UInt32(inp.count)
                stream.next_out = outp.baseAddress
                stream.avail_out = UInt32(outp.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        let cdata = Array(out[0..<(out.count - Int(stream.avail_out))])
        deflateEnd(&stream)
        guard status == Z_STREAM_END else { throw MambaKitError(.io, "deflate failed") }
        let total = 18 + cdata.count + 8
        precondition(total <= 65536)
        let crc = chunk.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32($0.count))) }
        starts.append(BGZFIndex.Block(compressedOffset: file.count, uncompressedOffset: i))
        file += [0x1F, 0x8B, 0x08, 0x04, 0, 0, 0, 0, 0, 0xFF, 6, 0, 0x42, 0x43, 2, 0,
                 UInt8((total - 1) & 0xFF), UInt8((total - 1) >> 8)]
        file += cdata
        file += (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * UInt32($0))) }
        file += (0..<4).map { UInt8(truncatingIfNeeded: UInt32(chunk.count) >> (8 * UInt32($0))) }
        i += chunk.count
    }
    return (file + bgzfEOF, starts)
}

@Suite("FastaIndex")
struct FastaIndexTests {
    @Test(arguments: [("\n", "one\t66\t5\t30\t31\ntwo\t28\t98\t14\t15\n"),
                      ("\r\n", "one\t66\t6\t30\t32\ntwo\t28\t103\t14\t16\n")])
    func faidxManualPageVectors(terminator: String, expected: String) throws {
        let dir = TempDir()
        let text = bytes(faidxExample.replacingOccurrences(of: "\n", with: terminator))
        let plain = try write(text, dir.file("ex.fa"))
        let (fai, gzi) = try FastaIndex.build(scanning: plain)
        #expect(fai.faiText == expected)
        #expect(fai.format == .fasta)
        #expect(gzi == nil)
        #expect(fai.entry(named: "two") == FastaIndexEntry(name: "two", length: 28, offset: terminator == "\n" ? 98 : 103,
                                                            lineBases: 14, lineWidth: terminator == "\n" ? 15 : 16))

        // BGZF: the same offsets, in uncompressed coordinates, whatever the block boundaries.
        for blockSize in [65280, 40, 7] {
            let compressed = try write(try bgzf(text, blockSize: blockSize).file, dir.file("ex\(blockSize).fa.gz"))
            let (zfai, zgzi) = try FastaIndex.build(scanning: compressed)
            #expect(zfai.faiText == expected)
            #expect(zgzi != nil)
        }

        // samtools-style files beside the input, read back.
        #expect(try FastaIndex.buildFiles(for: plain) == fai)
        #expect(try String(contentsOfFile: plain + ".fai", encoding: .utf8) == expected)
        #expect(!FileManager.default.fileExists(atPath: plain + ".gzi"))
        #expect(try FastaIndex(contentsOf: plain + ".fai") == fai)
        let file = try IndexedSequenceFile(path: plain)
        #expect(file.names == ["one", "two"])
        #expect(try file.fetch("one", 28..<34) == bytes("ATGCAT"))
        #expect(try file.fetch("two") == bytes(String(repeating: "ATGC", count: 7)))
    }

    @Test(arguments: [false, true])
    func fetchMatchesSequenceReaderOnRandomRanges(crlf: Bool) throws {
        let dir = TempDir()
        var rng = RNG(seed: crlf ? 11 : 10)
        let (text, records) = randomFasta(&rng, records: 14, maxLength: 3000, crlf: crlf)
        let plain = try write(text, dir.file("r.fa"))
        let (compressedBytes, _) = try bgzf(text, blockSize: 997)
        let compressed = try write(compressedBytes, dir.file("r.fa.gz"))
        let want = try readAll(plain)
        #expect(want.map(\.name) == records.map(\.0))
        #expect(want.map(\.sequence) == records.map(\.1))

        for path in [plain, compressed] {
            let (fai, gzi) = try FastaIndex.build(scanning: path)
            #expect((gzi != nil) == (path == compressed))
            let file = try IndexedSequenceFile(path: path, index: fai, bgzfIndex: gzi)
            #expect(file.names == want.map(\.name))
            for record in want {
                let n = record.sequence.count
                #expect(try file.length(of: record.name) == n)
                #expect(try file.fetch(record.name) == record.sequence, "\(path) \(record.name)")
                #expect(try file.fetch(record.name, n..<n) == [])
                #expect(try file.fetch(record.name, 0..<0) == [])
                for _ in 0..<25 where n > 0 {
                    let a = rng.int(below: n)
                    let b = a + 1 + rng.int(below: n - a)
                    let got = try file.fetch(record.name, a..<b)
                    #expect(got == Array(record.sequence[a..<b]), "\(path) \(record.name) \(a)..<\(b)")
                }
            }
        }
        // The plain and BGZF files index to the same .fai text.
        #expect(try FastaIndex.build(scanning: plain).fai == FastaIndex.build(scanning: compressed).fai)
    }

    @Test func fastqIndexAndQualities() throws {
        let dir = TempDir()
        let small = try write(bytes("@r1 first read\nACGTN\n+\n@@II#\n@r2\nacg\n+r2\n@AB\n"), dir.file("s.fq"))
        let (sfai, _) = try FastaIndex.build(scanning: small)
        #expect(sfai.format == .fastq)
        #expect(sfai.faiText == "r1\t5\t15\t5\t6\t23\nr2\t3\t33\t3\t4\t41\n")
        #expect(try FastaIndex(contentsOf: try write(bytes(sfai.faiText), dir.file("s.fq.fai"))) == sfai)

        var rng = RNG(seed: 12)
        for crlf in [false, true] {
            let (text, _) = randomFastq(&rng, records: 40, maxLength: 150, crlf: crlf)
            let plain = try write(text, dir.file("r\(crlf).fq"))
            let compressed = try write(try bgzf(text, blockSize: 500).file, dir.file("r\(crlf).fq.gz"))
            let want = try readAll(plain)
            #expect(want.count == 40)
            for path in [plain, compressed] {
                let (fai, gzi) = try FastaIndex.build(scanning: path)
                let file = try IndexedSequenceFile(path: path, index: fai, bgzfIndex: gzi)
                for record in want {
                    #expect(try file.fetch(record.name) == record.sequence)
                    #expect(try file.fetchQuality(record.name) == record.quality)
                    let n = record.sequence.count
                    if n > 2 {
                        #expect(try file.fetch(record.name, 1..<(n - 1)) == Array(record.sequence[1..<(n - 1)]))
                        #expect(try file.fetchQuality(record.name, 2..<n) == Array(record.quality![2..<n]))
                    }
                }
            }
        }
    }

    @Test func gziMatchesTheBlocksWritten() throws {
        let dir = TempDir()
        var rng = RNG(seed: 13)
        let (text, _) = randomFasta(&rng, records: 6, maxLength: 4000, crlf: false)
        let (file, starts) = try bgzf(text, blockSize: 1500)
        #expect(starts.count > 3)
        let path = try write(file, dir.file("b.fa.gz"))
        let gzi = try #require(try FastaIndex.build(scanning: path).gzi)
        // The .gzi leaves out the first block (0/0) and the empty EOF block.
        #expect(starts.first == BGZFIndex.Block(compressedOffset: 0, uncompressedOffset: 0))
        #expect(gzi.blocks == Array(starts.dropFirst()))
        #expect(try BGZFIndex.build(scanning: path) == gzi)

        // Layout: u64 LE count, then (compressed, uncompressed) u64 LE pairs.
        let raw = gzi.gziBytes
        #expect(raw.count == 8 + 16 * gzi.blocks.count)
        #expect(raw[0] == UInt8(gzi.blocks.count) && raw[1..<8].allSatisfy { $0 == 0 })
        let c1 = starts[1].compressedOffset
        #expect(Array(raw[8..<16]) == (0..<8).map { UInt8(truncatingIfNeeded: c1 >> (8 * $0)) })
        let u1 = starts[1].uncompressedOffset
        #expect(Array(raw[16..<24]) == (0..<8).map { UInt8(truncatingIfNeeded: u1 >> (8 * $0)) })
        #expect(try BGZFIndex(gziBytes: raw, source: "x.gzi") == gzi)

        // Lookup: the last block starting at or before an offset.
        #expect(gzi.start(for: 0) == BGZFIndex.Block(compressedOffset: 0, uncompressedOffset: 0))
        #expect(gzi.start(for: starts[1].uncompressedOffset - 1) == starts[0])
        #expect(gzi.start(for: starts[2].uncompressedOffset) == starts[2])
        #expect(gzi.start(for: text.count + 100) == starts.last)

        // buildFiles writes both, and opening by path picks them up.
        let fai = try FastaIndex.buildFiles(for: path)
        #expect(try BGZFIndex(contentsOf: path + ".gzi") == gzi)
        let opened = try IndexedSequenceFile(path: path)
        #expect(opened.index == fai)
        #expect(opened.bgzfIndex == gzi)
        let want = try readAll(path)
        for record in want { #expect(try opened.fetch(record.name) == record.sequence) }
    }

    @Test func crossCheckWithBgzipWhenInstalled() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/bgzip") else { return }  // optional tool
        let dir = TempDir()
        var rng = RNG(seed: 14)
        let (text, _) = randomFasta(&rng, records: 30, maxLength: 20_000, crlf: false)
        let plain = try write(text, dir.file("x.fa"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/bgzip")
        process.arguments = ["-c", "-i", "-I", dir.file("x.fa.gz.gzi"), plain]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0)
        let compressed = try write(Array(output), dir.file("x.fa.gz"))
        let (fai, gzi) = try FastaIndex.build(scanning: compressed)
        #expect(fai == (try FastaIndex.build(scanning: plain)).fai)
        #expect(try BGZFIndex(contentsOf: dir.file("x.fa.gz.gzi")) == gzi)
        let file = try IndexedSequenceFile(path: compressed, index: fai, bgzfIndex: gzi)
        for record in try readAll(plain) { #expect(try file.fetch(record.name) == record.sequence) }
    }

    @Test func plainGzipCannotBeIndexed() throws {
        let dir = TempDir()
        let text = bytes(faidxExample)
        let gz = try write(try Gzip.compress(text), dir.file("plain.fa.gz"))
        let e1 = try #require(caught { _ = try FastaIndex.build(scanning: gz) })
        #expect(e1.kind == .format)
        #expect(e1.message.contains("plain gzip (not BGZF) cannot be indexed"))
        #expect(e1.message.contains("bgzip"))
        #expect(e1.location == "\(gz), compressed byte 0")
        let e2 = try #require(caught { _ = try IndexedSequenceFile(path: gz) })
        #expect(e2.message.contains("plain gzip"))

        // BGZF blocks followed by a plain gzip member.
        let (blocks, _) = try bgzf(text)
        let mixed = try write(Array(blocks.dropLast(28)) + (try Gzip.compress(text)), dir.file("mixed.fa.gz"))
        let e3 = try #require(caught { _ = try FastaIndex.build(scanning: mixed) })
        #expect(e3.message.contains("not all BGZF"))
        #expect(e3.location == "\(mixed), compressed byte \(blocks.count - 28)")

        // A BGZF file needs its block index for random access.
        let good = try write(blocks, dir.file("good.fa.gz"))
        let fai = try FastaIndex.build(scanning: good).fai
        let e4 = try #require(caught { _ = try IndexedSequenceFile(path: good, index: fai) })
        #expect(e4.kind == .usage)
        #expect(e4.message.contains(".gzi"))
    }

    @Test func corruptAndTruncatedBGZF() throws {
        let dir = TempDir()
        let (blocks, _) = try bgzf(bytes(faidxExample))
        var corrupt = blocks
        corrupt[24] ^= 0x55  // inside the deflate data of the first block
        let e1 = try #require(caught { _ = try FastaIndex.build(scanning: try write(corrupt, dir.file("c.fa.gz"))) })
        #expect(e1.message.contains("corrupt BGZF block"))
        #expect(e1.location?.hasSuffix("compressed byte 0") == true)

        let cut = try write(Array(blocks.dropLast(40)), dir.file("t.fa.gz"))
        let e2 = try #require(caught { _ = try FastaIndex.build(scanning: cut) })
        #expect(e2.message.contains("truncated BGZF block"))
    }

    @Test(arguments: [
        (">a\nACGT\nACGTA\nAC\n", 3, "line of 5 bases is longer than the first line of record 'a' (4 bases)"),
        (">a\nACGT\nAC\nACGT\n", 3, "line of 2 bases is shorter than the first line of record 'a' (4 bases) but is not its last line"),
        (">a\r\nACGT\r\nACGT\nACGT\r\n", 3, "line ends with LF but the first line of record 'a' ends with CRLF"),
        (">a\nACGT\n\nACGT\n", 3, "blank line inside record 'a' (its sequence goes on at line 4)"),
        (">x\nAC\n>a\nACGT\n\n\nAC\n", 5, "blank line inside record 'a'"),
        (">a\nAC\rGT\n", 2, "carriage return not followed by a line feed"),
        (">a\nAC\u{1}T\n", 2, "binary data (byte 0x1)"),
        ("ACGT\n>a\nAC\n", 1, "expected '>' or '@' at the start of a record"),
        ("\n\n>\nACGT\n", 3, "record header without a name"),
        ("@r\nACGT\n+\nIII\n", 4, "quality length 3 differs from sequence length 4"),
        ("@r\nACGT\nIIII\n", 3, "expected a '+' line after the sequence of FASTQ record 'r'"),
        ("@r\nACGT\n+\n", 4, "file ends inside a FASTQ record (expected the quality line)"),
        ("@r\nACGT\n+\nIIII\n>s\nAC\n", 5, "expected '@' at the start of a FASTQ record"),
    ])
    func layoutErrorsNameFileAndLine(text: String, line: Int, message: String) throws {
        let dir = TempDir()
        for compressed in [false, true] {
            let path = try write(compressed ? try bgzf(bytes(text), blockSize: 5).file : bytes(text),
                                 dir.file(compressed ? "bad.fa.gz" : "bad.fa"))
            let e = try #require(caught { _ = try FastaIndex.build(scanning: path) })
            #expect(e.kind == .format)
            #expect(e.location == "\(path), line \(line)", "\(e)")
            #expect(e.message.contains(message), "\(e)")
        }
    }

    @Test func layoutsThatAreAllowed() throws {
        let dir = TempDir()
        // A shorter last line, trailing blank lines, an empty record, a CRLF record next to LF ones, no final newline.
        let text = ">a\nACGT\nAC\n\n\n>empty\n>b\r\nAAAA\r\nCC\r\n>c d\nACG"
        let path = try write(bytes(text), dir.file("ok.fa"))
        let fai = try FastaIndex.build(scanning: path).fai
        #expect(fai.faiText == "a\t6\t3\t4\t5\nempty\t0\t20\t0\t0\nb\t6\t24\t4\t6\nc\t3\t39\t3\t4\n")
        let file = try IndexedSequenceFile(path: path, index: fai)
        let want = try readAll(path)
        #expect(want.map(\.name) == ["a", "empty", "b", "c"])
        for r in want { #expect(try file.fetch(r.name) == r.sequence) }
        #expect(try FastaIndex(faiText: bytes(fai.faiText), source: "ok.fa.fai") == fai)
        #expect(try FastaIndex.build(scanning: try write([], dir.file("empty.fa"))).fai.entries.isEmpty)
    }

    @Test func duplicateNamesFollowThePolicy() throws {
        let dir = TempDir()
        let path = try write(bytes(">x\nAC\n>y\nGG\n>x second\nTTT\n"), dir.file("dup.fa"))
        let e = try #require(caught { _ = try FastaIndex.build(scanning: path) })
        #expect(e.kind == .format)
        #expect(e.location == "\(path), line 5")
        #expect(e.message.contains("duplicate sequence name 'x' (first on line 1)"))
        #expect(e.message.contains("keepFirst"))

        let (fai, _) = try FastaIndex.build(scanning: path, duplicates: .keepFirst)
        #expect(fai.names == ["x", "y"])
        #expect(fai.faiText == "x\t2\t3\t2\t3\ny\t2\t9\t2\t3\n")
        let file = try IndexedSequenceFile(path: path, index: fai)
        #expect(try file.fetch("x") == bytes("AC"))
        let opened = try IndexedSequenceFile(path: path, duplicates: .keepFirst)
        #expect(try opened.fetch("x") == bytes("AC"))

        // The same policy when reading a .fai.
        let faiText = bytes("x\t2\t3\t2\t3\ny\t2\t9\t2\t3\nx\t3\t22\t3\t4\n")
        let e2 = try #require(caught { _ = try FastaIndex(faiText: faiText, source: "dup.fai") })
        #expect(e2.location == "dup.fai, line 3")
        #expect(e2.message == "duplicate sequence name 'x' (first on line 1)")
        #expect(try FastaIndex(faiText: faiText, source: "dup.fai", duplicates: .keepFirst).names == ["x", "y"])

        // And when building from entries.
        let entry = FastaIndexEntry(name: "x", length: 2, offset: 3, lineBases: 2, lineWidth: 3)
        #expect(caught { _ = try FastaIndex(format: .fasta, entries: [entry, entry]) }?.location == "index entry 2")
        #expect(try FastaIndex(format: .fasta, entries: [entry, entry], duplicates: .keepFirst).entries == [entry])
    }

    @Test(arguments: [
        ("one\t66\t5\t30\n", 1, "expected 5 tab-separated columns"),
        ("one\t66\t5\t30\t31\ntwo\t28\tx\t14\t15\n", 2, "column OFFSET is not a non-negative integer: 'x'"),
        ("one\t66\t5\t30\t31\ntwo\t28\t98\t14\t15\t3\n", 2, "this line has 6 columns but line 1 has 5"),
        ("one\t-1\t5\t30\t31\n", 1, "column LENGTH is not a non-negative integer: '-1'"),
        ("one\t99999999999999999999\t5\t30\t31\n", 1, "column LENGTH is not a non-negative integer"),
        ("one\t66\t5\t0\t31\n", 1, "LINEBASES is 0 for the non-empty sequence 'one'"),
        ("one\t66\t5\t30\t30\n", 1, "LINEWIDTH 30 of 'one' is not larger than LINEBASES 30"),
        ("\t66\t5\t30\t31\n", 1, "empty sequence name"),
        ("one\t66\t5\t30\t31\n\ntwo\t28\t98\t14\t15\n", 2, "found 1"),
        ("one 66 5 30 31\n", 1, "found 1"),
    ])
    func badFaiLinesNameFileAndLine(text: String, line: Int, message: String) throws {
        let dir = TempDir()
        let path = try write(bytes(text), dir.file("bad.fai"))
        let e = try #require(caught { _ = try FastaIndex(contentsOf: path) })
        #expect(e.kind == .format)
        #expect(e.location == "\(path), line \(line)")
        #expect(e.message.contains(message), "\(e)")
    }

    @Test func faiWithCRLFAndFastqColumns() throws {
        let fai = try FastaIndex(faiText: bytes("one\t66\t6\t30\t32\r\ntwo\t28\t103\t14\t16\r\n"), source: "crlf.fai")
        #expect(fai.faiText == "one\t66\t6\t30\t32\ntwo\t28\t103\t14\t16\n")
        let fq = try FastaIndex(faiText: bytes("r1\t5\t15\t5\t6\t23\n"), source: "r.fq.fai")
        #expect(fq.format == .fastq)
        #expect(fq.entry(named: "r1")?.qualityOffset == 23)
    }

    @Test func badGziFiles() throws {
        let e1 = try #require(caught { _ = try BGZFIndex(gziBytes: [1, 0, 0], source: "a.gzi") })
        #expect(e1.location == "a.gzi")
        #expect(e1.message.contains("8-byte entry count"))
        let e2 = try #require(caught { _ = try BGZFIndex(gziBytes: [2, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 1, count: 16), source: "b.gzi") })
        #expect(e2.message.contains("24 bytes but its entry count 2 needs 8 + 16 × 2"))
        func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        let backwards = le(2) + le(500) + le(60000) + le(400) + le(120000)
        let e3 = try #require(caught { _ = try BGZFIndex(gziBytes: backwards, source: "c.gzi") })
        #expect(e3.location == "c.gzi, byte 24")
        #expect(e3.message.contains("block offsets must increase"))
        #expect(try BGZFIndex(gziBytes: le(0), source: "d.gzi").blocks.isEmpty)
    }

    @Test func unknownNamesAndOutOfRangeFetches() throws {
        let dir = TempDir()
        let path = try write(bytes(faidxExample), dir.file("ex.fa"))
        let file = try IndexedSequenceFile(path: path)

        let e1 = try #require(caught { _ = try file.fetch("three") })
        #expect(e1.kind == .usage)
        #expect(e1.location == path)
        #expect(e1.message == "no sequence named 'three' in the index of 2 sequences")
        let e2 = try #require(caught { _ = try file.fetch("two another chromosome") })
        #expect(e2.message.contains("a name is the first word of the header line"))

        let e3 = try #require(caught { _ = try file.fetch("one", 60..<67) })
        #expect(e3.kind == .usage)
        #expect(e3.location == path)
        #expect(e3.message == "range 60..<67 is outside 'one' (length 66; ranges are 0-based and half-open)")
        #expect(caught { _ = try file.fetch("two", -1..<3) }?.message.contains("range -1..<3 is outside 'two'") == true)
        #expect(caught { _ = try file.length(of: "x") }?.message.contains("no sequence named 'x'") == true)
        #expect(caught { _ = try file.fetchQuality("one") }?.message.contains("the index is of a FASTA file") == true)
        #expect(try file.fetch("one", 66..<66) == [])
        #expect(try file.fetch("one", 65..<66) == bytes("T"))
    }

    @Test func anIndexThatNoLongerMatchesTheFile() throws {
        let dir = TempDir()
        let path = try write(bytes(faidxExample), dir.file("ex.fa"))
        let fai = try FastaIndex.build(scanning: path).fai

        // Rewritten with CRLF: base 0 of 'one' now sits where the index expects it, but a line feed comes first.
        _ = try write(bytes(faidxExample.replacingOccurrences(of: "\n", with: "\r\n")), path)
        let e1 = try #require(caught { _ = try IndexedSequenceFile(path: path, index: fai).fetch("one") })
        #expect(e1.kind == .format)
        #expect(e1.message.contains("the index does not match the file"))
        #expect(e1.location == "\(path), byte 5")

        // Truncated.
        _ = try write(Array(bytes(faidxExample).prefix(100)), path)
        let e2 = try #require(caught { _ = try IndexedSequenceFile(path: path, index: fai).fetch("two") })
        #expect(e2.message.contains("the file has 100 bytes but the index refers to byte"))
    }

    /// Mutated FASTA/FASTQ: whenever both the index and SequenceReader accept a file, they agree on every record.
    @Test func indexAgreesWithSequenceReaderOnMutatedInput() throws {
        let dir = TempDir()
        var agreed = 0
        for round in 0..<300 {
            var rng = RNG(seed: 7_000 + UInt64(round))
            var text = round % 3 == 0
                ? randomFastq(&rng, records: 1 + rng.int(below: 6), maxLength: 40, crlf: rng.int(below: 3) == 0).text
                : randomFasta(&rng, records: 1 + rng.int(below: 6), maxLength: 300, crlf: rng.int(below: 3) == 0).text
            let alphabet = bytes(">@+ACGTacgtN \t\r\n\n\n")
            for _ in 0..<(1 + rng.int(below: 2)) where !text.isEmpty {
                let i = rng.int(below: text.count)
                switch rng.int(below: 3) {
                case 0: text[i] = alphabet[rng.int(below: alphabet.count)]
                case 1: text.insert(alphabet[rng.int(below: alphabet.count)], at: i)
                default: text.remove(at: i)
                }
            }
            let compressed = round % 2 == 1
            let path = try write(compressed ? try bgzf(text, blockSize: 64 + rng.int(below: 200)).file : text,
                                 dir.file("m\(round)"))
            let records: [SequenceRecord]
            let built: (fai: FastaIndex, gzi: BGZFIndex?)
            do {
                records = try readAll(path)
                built = try FastaIndex.build(scanning: path)
            } catch is MambaKitError {
                continue
            }
            let file = try IndexedSequenceFile(path: path, index: built.fai, bgzfIndex: built.gzi)
            #expect(file.names == records.map(\.name), "round \(round)")
            for r in records where file.names.contains(r.name) {
                #expect(try file.fetch(r.name) == r.sequence, "round \(round) \(r.name)")
                if let q = r.quality { #expect(try file.fetchQuality(r.name) == q, "round \(round) \(r.name)") }
            }
            agreed += 1
        }
        #expect(agreed > 80)
    }
}
