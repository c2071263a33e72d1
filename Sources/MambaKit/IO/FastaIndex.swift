import CZlib
import Foundation

// Random access to FASTA and FASTQ files through samtools' `.fai` index, and to BGZF-compressed ones through the
// `.gzi` block index beside it.
//
// Follows htslib: the `.fai` columns and line rules of faidx(5) and `fai_build_core` in faidx.c (the name is the first
// word after `>`; every line of a record but the last has the same length and terminator; for BGZF every offset is an
// uncompressed offset), and the GZI format of bgzip(1) / `bgzf_index_dump` (a u64 LE count, then u64 LE pairs
// (compressed, uncompressed) of the starts of the non-empty blocks after the first, which sits at 0/0).
// Where we differ: FASTQ must be the four-line form SequenceReader reads; every byte of a sequence line but its
// terminator is a base, as SequenceReader returns it (htslib drops blanks); an empty FASTA record is indexed with length
// 0 (htslib drops it); duplicate names are an error unless `DuplicateNamePolicy.keepFirst` asks for htslib's behaviour.

/// What to do when two records share a name.
public enum DuplicateNamePolicy: String, Sendable {
    /// Refuse the input (pyfaidx's default): a name must identify one record.
    case error
    /// Keep the first record of each name and skip the later ones (htslib; samtools only warns).
    case keepFirst
}

/// One line of a `.fai` index: where a record's bases (and, for FASTQ, its qualities) sit in the file.
public struct FastaIndexEntry: Equatable, Sendable {
    /// NAME: the first word of the header line.
    public var name: String
    /// LENGTH: number of bases.
    public var length: Int
    /// OFFSET: byte offset of the first base (an uncompressed offset for BGZF files).
    public var offset: Int
    /// LINEBASES: bases on each line but the last.
    public var lineBases: Int
    /// LINEWIDTH: bytes on each line but the last, line terminator included.
    public var lineWidth: Int
    /// QUALOFFSET (FASTQ only): byte offset of the first quality character.
    public var qualityOffset: Int?

    public init(name: String, length: Int, offset: Int, lineBases: Int, lineWidth: Int, qualityOffset: Int? = nil) {
        self.name = name
        self.length = length
        self.offset = offset
        self.lineBases = lineBases
        self.lineWidth = lineWidth
        self.qualityOffset = qualityOffset
    }

    /// Byte offset of character `i` (0 ≤ i < length) of the record laid out from `start` (`offset` or
    /// `qualityOffset`): full lines of `lineBases` characters take `lineWidth` bytes each.
    func position(of i: Int, from start: Int) -> Int {
        start + (i / lineBases) * lineWidth + i % lineBases
    }
}

// MARK: - The .fai index

/// A samtools-compatible `.fai` index: one entry per record, in file order, looked up by name.
public struct FastaIndex: Equatable, Sendable {
    /// FASTA (five columns) or FASTQ (six, with QUALOFFSET).
    public let format: SequenceReader.Format
    /// The entries in file order (later duplicates dropped under `.keepFirst`).
    public let entries: [FastaIndexEntry]
    private let byName: [String: Int]

    private init(validated format: SequenceReader.Format, entries: [FastaIndexEntry], byName: [String: Int]) {
        self.format = format
        self.entries = entries
        self.byName = byName
    }

    /// An index from entries; each is checked (non-negative numbers, `lineBases`/`lineWidth` that can describe the
    /// record, QUALOFFSET present exactly for FASTQ) and duplicate names follow `duplicates`.
    public init(format: SequenceReader.Format, entries: [FastaIndexEntry],
                duplicates: DuplicateNamePolicy = .error) throws {
        var kept: [FastaIndexEntry] = []
        var byName: [String: Int] = [:]
        for (i, entry) in entries.enumerated() {
            if let problem = FastaIndex.problem(with: entry, format: format) {
                throw MambaKitError(.format, problem, at: "index entry \(i + 1)")
            }
            if let first = byName[entry.name] {
                if duplicates == .keepFirst { continue }
                throw MambaKitError(.format, "duplicate sequence name '\(entry.name)' (first at entry \(first + 1))",
                                    at: "index entry \(i + 1)")
            }
            byName[entry.name] = kept.count
            kept.append(entry)
        }
        self.init(validated: format, entries: kept, byName: byName)
    }

    /// The names in file order.
    public var names: [String] { entries.map(\.name) }

    /// The entry of the record called `name`, if any.
    public func entry(named name: String) -> FastaIndexEntry? {
        byName[name].map { entries[$0] }
    }

    // MARK: Text form

    /// The `.fai` text: one tab-separated line per entry, as samtools writes it.
    public var faiText: String {
        var text = ""
        for e in entries {
            text += "\(e.name)\t\(e.length)\t\(e.offset)\t\(e.lineBases)\t\(e.lineWidth)"
            if let q = e.qualityOffset { text += "\t\(q)" }
            text += "\n"
        }
        return text
    }

    /// Writes the `.fai` text to `faiPath` atomically.
    public func write(to faiPath: String) throws {
        try AtomicFile.writeText(faiText, to: faiPath)
    }

    /// Reads a `.fai` file; errors name the file and line.
    public init(contentsOf faiPath: String, duplicates: DuplicateNamePolicy = .error) throws {
        let bytes = try FileInput.readBytes(faiPath, allowEmpty: true)
        try self.init(faiText: bytes, source: faiPath, duplicates: duplicates)
    }

    /// Parses `.fai` text (LF or CRLF lines of 5 tab-separated columns, or 6 for FASTQ); `source` names it in errors.
    public init(faiText bytes: [UInt8], source: String, duplicates: DuplicateNamePolicy = .error) throws {
        let columns = ["NAME", "LENGTH", "OFFSET", "LINEBASES", "LINEWIDTH", "QUALOFFSET"]
        var format: SequenceReader.Format? = nil
        var entries: [FastaIndexEntry] = []
        var byName: [String: Int] = [:]
        var lineOf: [String: Int] = [:]
        var lineNumber = 0
        var start = 0
        while start < bytes.count {
            lineNumber += 1
            let location = "\(source), line \(lineNumber)"
            let newline = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
            var end = newline
            if end > start && bytes[end - 1] == 0x0D { end -= 1 }
            let fields = bytes[start..<end].split(separator: 0x09, omittingEmptySubsequences: false)
            start = newline + 1
            guard fields.count == 5 || fields.count == 6 else {
                throw MambaKitError(.format, "expected 5 tab-separated columns (NAME LENGTH OFFSET LINEBASES "
                    + "LINEWIDTH), or 6 with QUALOFFSET for FASTQ; found \(fields.count)", at: location)
            }
            let lineFormat: SequenceReader.Format = fields.count == 6 ? .fastq : .fasta
            if let format, format != lineFormat {
                throw MambaKitError(.format, "this line has \(fields.count) columns but line 1 has "
                    + "\(format == .fasta ? 5 : 6); an index is all FASTA (5 columns) or all FASTQ (6)", at: location)
            }
            format = lineFormat
            var numbers: [Int] = []
            for column in 1..<fields.count {
                let field = fields[column]
                guard !field.isEmpty, field.count <= 18, field.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      let value = Int(String(decoding: field, as: UTF8.self)) else {
                    let shown = String(decoding: field.prefix(40), as: UTF8.self)
                    throw MambaKitError(.format, "column \(columns[column]) is not a non-negative integer: "
                        + "'\(shown)'", at: location)
                }
                numbers.append(value)
            }
            let entry = FastaIndexEntry(name: String(decoding: fields[0], as: UTF8.self), length: numbers[0],
                                        offset: numbers[1], lineBases: numbers[2], lineWidth: numbers[3],
                                        qualityOffset: numbers.count == 5 ? numbers[4] : nil)
            if let problem = FastaIndex.problem(with: entry, format: lineFormat) {
                throw MambaKitError(.format, problem, at: location)
            }
            if let first = lineOf[entry.name] {
                if duplicates == .keepFirst { continue }
                throw MambaKitError(.format, "duplicate sequence name '\(entry.name)' (first on line \(first))",
                                    at: location)
            }
            lineOf[entry.name] = lineNumber
            byName[entry.name] = entries.count
            entries.append(entry)
        }
        self.init(validated: format ?? .fasta, entries: entries, byName: byName)
    }

    /// Why `e` cannot describe a record of a `format` file, or nil when it can.
    static func problem(with e: FastaIndexEntry, format: SequenceReader.Format) -> String? {
        if e.name.isEmpty { return "empty sequence name" }
        if e.name.utf8.contains(where: { $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
            return "sequence name '\(e.name)' contains a tab or a line break"
        }
        if e.length < 0 || e.offset < 0 || e.lineBases < 0 || e.lineWidth < 0 || (e.qualityOffset ?? 0) < 0 {
            return "negative number in the entry of '\(e.name)'"
        }
        if (format == .fastq) != (e.qualityOffset != nil) {
            return format == .fastq ? "FASTQ entry '\(e.name)' has no QUALOFFSET"
                : "FASTA entry '\(e.name)' has a QUALOFFSET"
        }
        if e.length > 0 && e.lineBases == 0 { return "LINEBASES is 0 for the non-empty sequence '\(e.name)'" }
        if e.length > e.lineBases && e.lineWidth <= e.lineBases {
            return "LINEWIDTH \(e.lineWidth) of '\(e.name)' is not larger than LINEBASES \(e.lineBases) "
                + "(it counts the line terminator too)"
        }
        if e.length > 0 {
            // The byte after the last character must be representable.
            let lines = (e.length - 1) / e.lineBases
            for start in [e.offset, e.qualityOffset ?? 0] {
                let (span, o1) = lines.multipliedReportingOverflow(by: e.lineWidth)
                let (end, o2) = start.addingReportingOverflow(span)
                if o1 || o2 || end > Int.max - e.lineBases { return "offsets of '\(e.name)' overflow" }
            }
        }
        return nil
    }

    // MARK: Building

    /// Scans a plain or BGZF-compressed FASTA/FASTQ file and indexes it, as `samtools faidx` does; for BGZF it also
    /// returns the `.gzi` block index. Plain (non-BGZF) gzip cannot be indexed and throws. Malformed input (line
    /// lengths that differ inside a record, a blank line inside a record, a duplicate name under `.error`, ...) throws
    /// an error naming the file and the line.
    public static func build(scanning path: String,
                             duplicates: DuplicateNamePolicy = .error) throws -> (fai: FastaIndex, gzi: BGZFIndex?) {
        let file = try ReadOnlyFile(path: path)
        let scanner = FaiScanner(path: path, duplicates: duplicates)
        var gzi: BGZFIndex? = nil
        if try file.startsWithGzipMagic() {
            gzi = try BGZFIndex.scan(file) { try scanner.feed($0) }
        } else {
            let chunk = UnsafeMutablePointer<UInt8>.allocate(capacity: 1 << 20)
            defer { chunk.deallocate() }
            var offset = 0
            while true {
                let n = try file.read(into: chunk, count: 1 << 20, at: offset)
                if n == 0 { break }
                try scanner.feed(UnsafeBufferPointer(start: chunk, count: n))
                offset += n
            }
        }
        try scanner.finish()
        let fai = FastaIndex(validated: scanner.format ?? .fasta, entries: scanner.entries,
                             byName: scanner.positions)
        return (fai, gzi)
    }

    /// Like `samtools faidx FILE`: indexes `path` and writes `path.fai` (and `path.gzi` for BGZF) atomically.
    @discardableResult
    public static func buildFiles(for path: String, duplicates: DuplicateNamePolicy = .error) throws -> FastaIndex {
        let (fai, gzi) = try build(scanning: path, duplicates: duplicates)
        if let gzi { try gzi.write(to: path + ".gzi") }
        try fai.write(to: path + ".fai")
        return fai
    }
}

// MARK: - The .gzi index

/// The BGZF block index samtools keeps in `.gzi`: where each block starts, in the file and in the uncompressed data.
public struct BGZFIndex: Equatable, Sendable {
    public struct Block: Equatable, Sendable {
        /// Byte offset of the block in the compressed file.
        public var compressedOffset: Int
        /// Offset of the block's first byte in the uncompressed data.
        public var uncompressedOffset: Int

        public init(compressedOffset: Int, uncompressedOffset: Int) {
            self.compressedOffset = compressedOffset
            self.uncompressedOffset = uncompressedOffset
        }
    }

    /// The starts of the blocks after the first, exactly the pairs a `.gzi` file stores; the first block, at 0/0,
    /// is implied.
    public let blocks: [Block]

    init(validated blocks: [Block]) { self.blocks = blocks }

    /// An index from block starts, which must increase (compressed strictly, both past 0/0).
    public init(blocks: [Block]) throws {
        if let (i, problem) = BGZFIndex.problem(with: blocks) {
            throw MambaKitError(.format, problem, at: "gzi entry \(i + 1)")
        }
        self.init(validated: blocks)
    }

    /// Reads a `.gzi` file.
    public init(contentsOf gziPath: String) throws {
        try self.init(gziBytes: try FileInput.readBytes(gziPath, allowEmpty: true), source: gziPath)
    }

    /// Parses `.gzi` bytes: a u64 LE count, then `count` pairs of u64 LE (compressed, uncompressed) offsets.
    public init(gziBytes bytes: [UInt8], source: String) throws {
        func u64(_ at: Int) -> UInt64 {
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
        }
        guard bytes.count >= 8 else {
            throw MambaKitError(.format, "a .gzi index starts with an 8-byte entry count; the file has "
                + "\(bytes.count) bytes", at: source)
        }
        let count = u64(0)
        guard count <= UInt64((bytes.count - 8) / 16), bytes.count == 8 + 16 * Int(count) else {
            throw MambaKitError(.format, "the file has \(bytes.count) bytes but its entry count \(count) needs "
                + "8 + 16 × \(count)", at: source)
        }
        var blocks: [Block] = []
        blocks.reserveCapacity(Int(count))
        for i in 0..<Int(count) {
            let at = 8 + 16 * i
            let c = u64(at)
            let u = u64(at + 8)
            guard c <= UInt64(Int.max), u <= UInt64(Int.max) else {
                throw MambaKitError(.format, "offset too large", at: "\(source), byte \(at)")
            }
            blocks.append(Block(compressedOffset: Int(c), uncompressedOffset: Int(u)))
        }
        if let (i, problem) = BGZFIndex.problem(with: blocks) {
            throw MambaKitError(.format, problem, at: "\(source), byte \(8 + 16 * i)")
        }
        self.init(validated: blocks)
    }

    /// The `.gzi` bytes.
    public var gziBytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(8 + 16 * blocks.count)
        func put(_ v: UInt64) { for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(k)))) } }
        put(UInt64(blocks.count))
        for b in blocks {
            put(UInt64(b.compressedOffset))
            put(UInt64(b.uncompressedOffset))
        }
        return out
    }

    /// Writes the `.gzi` bytes to `gziPath` atomically.
    public func write(to gziPath: String) throws {
        try AtomicFile.write(gziBytes, to: gziPath)
    }

    /// Indexes the blocks of a BGZF file (reading and checking every block); plain gzip throws.
    public static func build(scanning path: String) throws -> BGZFIndex {
        try scan(try ReadOnlyFile(path: path)) { _ in }
    }

    /// Reads every block of `file` in order, handing the uncompressed data to `body`, and indexes the blocks.
    static func scan(_ file: ReadOnlyFile, _ body: (UnsafeBufferPointer<UInt8>) throws -> Void) throws -> BGZFIndex {
        let reader = try BGZFBlockReader(file: file)
        var blocks: [Block] = []
        var compressed = 0
        var uncompressed = 0
        var data: [UInt8] = []
        while let size = try reader.readBlock(at: compressed, into: &data) {
            if !data.isEmpty {  // empty blocks (the EOF marker) are not indexed, as in htslib
                blocks.append(Block(compressedOffset: compressed, uncompressedOffset: uncompressed))
                try data.withUnsafeBufferPointer { try body($0) }
                uncompressed += data.count
            }
            compressed += size
        }
        // The first data block (normally at 0/0) is implied, not stored.
        return BGZFIndex(validated: Array(blocks.dropFirst()))
    }

    /// The block to start inflating at to reach `uncompressedOffset`: the last one starting at or before it.
    public func start(for uncompressedOffset: Int) -> Block {
        var lo = 0
        var hi = blocks.count  // answer: the number of blocks starting at or before the offset
        while lo < hi {
            let mid = (lo + hi) / 2
            if blocks[mid].uncompressedOffset <= uncompressedOffset { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? Block(compressedOffset: 0, uncompressedOffset: 0) : blocks[lo - 1]
    }

    /// The first entry whose offsets do not increase, and why.
    private static func problem(with blocks: [Block]) -> (Int, String)? {
        var previous = Block(compressedOffset: 0, uncompressedOffset: 0)
        for (i, b) in blocks.enumerated() {
            if b.compressedOffset <= previous.compressedOffset || b.uncompressedOffset < previous.uncompressedOffset {
                return (i, "block offsets must increase: (\(b.compressedOffset), \(b.uncompressedOffset)) follows "
                    + "(\(previous.compressedOffset), \(previous.uncompressedOffset))")
            }
            previous = b
        }
        return nil
    }
}

// MARK: - Random access

/// Fetches bases (and FASTQ qualities) by name and range from a plain or BGZF file, reading only the bytes needed:
/// for BGZF the blocks that hold the range, found through the `.gzi` index. Not for concurrent use: open one per
/// thread.
public final class IndexedSequenceFile {
    public let path: String
    public let index: FastaIndex
    /// The block index; present exactly when the file is BGZF.
    public let bgzfIndex: BGZFIndex?
    private let file: ReadOnlyFile
    private let blockReader: BGZFBlockReader?
    /// The last block inflated, kept because neighbouring fetches usually need it again.
    private var blockData: [UInt8] = []
    private var blockOffset = -1
    private var blockSize = 0

    /// Opens `path` with the given indexes. A BGZF file needs `bgzfIndex`; a plain file must not have one.
    public init(path: String, index: FastaIndex, bgzfIndex: BGZFIndex? = nil) throws {
        self.path = path
        self.index = index
        self.bgzfIndex = bgzfIndex
        file = try ReadOnlyFile(path: path)
        if try file.startsWithGzipMagic() {
            guard bgzfIndex != nil else {
                throw MambaKitError(.usage, "random access to a BGZF file needs its .gzi block index "
                    + "(FastaIndex.build returns it)", at: path)
            }
            let reader = try BGZFBlockReader(file: file)
            blockSize = try reader.readBlock(at: 0, into: &blockData) ?? 0  // throws for plain gzip
            blockOffset = 0
            blockReader = reader
        } else {
            guard bgzfIndex == nil else {
                throw MambaKitError(.usage, "a .gzi block index was given but the file is not compressed", at: path)
            }
            blockReader = nil
        }
    }

    /// Opens `path` with `path.fai` and, for BGZF, `path.gzi`, as samtools finds them; an index file that does not
    /// exist is built in memory by scanning the file (nothing is written: `FastaIndex.buildFiles` does that).
    public convenience init(path: String, duplicates: DuplicateNamePolicy = .error) throws {
        let faiPath = path + ".fai"
        let gziPath = path + ".gzi"
        var fai = FileManager.default.fileExists(atPath: faiPath)
            ? try FastaIndex(contentsOf: faiPath, duplicates: duplicates) : nil
        var gzi: BGZFIndex? = nil
        if try ReadOnlyFile(path: path).startsWithGzipMagic() {
            if FileManager.default.fileExists(atPath: gziPath) {
                gzi = try BGZFIndex(contentsOf: gziPath)
            } else if fai != nil {
                gzi = try BGZFIndex.build(scanning: path)
            }
        }
        if fai == nil {
            let built = try FastaIndex.build(scanning: path, duplicates: duplicates)
            fai = built.fai
            gzi = gzi ?? built.gzi
        }
        try self.init(path: path, index: fai!, bgzfIndex: gzi)
    }

    /// The record names in file order.
    public var names: [String] { index.names }

    /// The number of bases of record `name`.
    public func length(of name: String) throws -> Int { try entry(name).length }

    /// The bases of record `name` in `range` (0-based, half-open; nil for all), exactly as written (case kept).
    public func fetch(_ name: String, _ range: Range<Int>? = nil) throws -> [UInt8] {
        let e = try entry(name)
        let r = try checked(range, e)
        return try extract(e, r, from: e.offset)
    }

    /// The FASTQ quality characters of record `name` in `range` (0-based, half-open; nil for all).
    public func fetchQuality(_ name: String, _ range: Range<Int>? = nil) throws -> [UInt8] {
        let e = try entry(name)
        guard let q = e.qualityOffset else {
            throw MambaKitError(.usage, "'\(name)' has no qualities: the index is of a FASTA file", at: path)
        }
        let r = try checked(range, e)
        return try extract(e, r, from: q)
    }

    private func entry(_ name: String) throws -> FastaIndexEntry {
        guard let e = index.entry(named: name) else {
            let hint = name.contains(where: { $0 == " " || $0 == "\t" })
                ? " (a name is the first word of the header line)" : ""
            throw MambaKitError(.usage, "no sequence named '\(name)' in the index of \(index.entries.count) "
                + "sequences\(hint)", at: path)
        }
        return e
    }

    private func checked(_ range: Range<Int>?, _ e: FastaIndexEntry) throws -> Range<Int> {
        guard let range else { return 0..<e.length }
        guard range.lowerBound >= 0, range.upperBound <= e.length else {
            throw MambaKitError(.usage, "range \(range.lowerBound)..<\(range.upperBound) is outside '\(e.name)' "
                + "(length \(e.length); ranges are 0-based and half-open)", at: path)
        }
        return range
    }

    /// Characters `range` of `e` laid out from byte `start`: reads the bytes from the first to the last wanted
    /// character and drops the line terminators, checking that they sit where the index says.
    private func extract(_ e: FastaIndexEntry, _ range: Range<Int>, from start: Int) throws -> [UInt8] {
        if range.isEmpty { return [] }
        let first = e.position(of: range.lowerBound, from: start)
        let end = e.position(of: range.upperBound - 1, from: start) + 1
        var out: [UInt8] = []
        // At most 1 MiB up front: a .fai entry can claim any LENGTH, and readSpan refuses one the file cannot hold
        // only when it gets there ("the file has N bytes but the index refers to byte M").
        out.reserveCapacity(min(range.count, 1 << 20))
        var column = range.lowerBound % e.lineBases  // position inside the current line, terminator included
        var offset = first
        try readSpan(from: first, to: end) { chunk in
            var i = 0
            while i < chunk.count {
                if column < e.lineBases {
                    let n = min(e.lineBases - column, chunk.count - i)
                    let bases = UnsafeBufferPointer(rebasing: chunk[i..<(i + n)])
                    if let bad = bases.firstIndex(where: { $0 == 0x0A || $0 == 0x0D }) {
                        throw mismatch(e, at: offset + bad, "a line break where the index places a base")
                    }
                    out.append(contentsOf: bases)
                    i += n
                    offset += n
                    column += n
                } else {
                    let b = chunk[i]
                    guard b == 0x0A || b == 0x0D else {
                        throw mismatch(e, at: offset, "byte 0x\(String(b, radix: 16)) where the index places a "
                            + "line terminator")
                    }
                    i += 1
                    offset += 1
                    column += 1
                }
                if column == e.lineWidth { column = 0 }
            }
        }
        return out
    }

    private func mismatch(_ e: FastaIndexEntry, at offset: Int, _ what: String) -> MambaKitError {
        let coordinate = blockReader == nil ? "byte \(offset)" : "uncompressed byte \(offset)"
        return MambaKitError(.format, "\(what) (record '\(e.name)'); the index does not match the file "
            + "(was the file changed after indexing?)", at: "\(path), \(coordinate)")
    }

    /// Hands the (uncompressed) bytes `[start, end)` to `sink` in chunks.
    private func readSpan(from start: Int, to end: Int,
                          _ sink: (UnsafeBufferPointer<UInt8>) throws -> Void) throws {
        guard let blockReader, let bgzfIndex else {
            guard end <= file.size else {
                throw MambaKitError(.format, "the file has \(file.size) bytes but the index refers to byte "
                    + "\(end - 1); the index does not match the file", at: path)
            }
            let chunkSize = min(end - start, 1 << 20)
            let chunk = UnsafeMutablePointer<UInt8>.allocate(capacity: chunkSize)
            defer { chunk.deallocate() }
            var offset = start
            while offset < end {
                let n = try file.read(into: chunk, count: min(chunkSize, end - offset), at: offset)
                guard n > 0 else {
                    throw MambaKitError(.io, "the file ended at byte \(offset) while reading it", at: path)
                }
                try sink(UnsafeBufferPointer(start: chunk, count: n))
                offset += n
            }
            return
        }
        let block = bgzfIndex.start(for: start)
        var compressed = block.compressedOffset
        var uncompressed = block.uncompressedOffset
        while uncompressed < end {
            if compressed != blockOffset {
                blockOffset = -1
                guard let size = try blockReader.readBlock(at: compressed, into: &blockData) else {
                    throw MambaKitError(.format, "the BGZF data ends at uncompressed byte \(uncompressed) but the "
                        + "index refers to byte \(end - 1); the index does not match the file", at: path)
                }
                blockOffset = compressed
                blockSize = size
            }
            let size = blockSize
            let blockEnd = uncompressed + blockData.count
            if blockEnd > start {
                let lo = max(start - uncompressed, 0)
                let hi = min(end - uncompressed, blockData.count)
                try blockData.withUnsafeBufferPointer { try sink(UnsafeBufferPointer(rebasing: $0[lo..<hi])) }
            }
            uncompressed = blockEnd
            compressed += size
        }
    }
}

// MARK: - Building the .fai: a line scanner

/// Splits the (uncompressed) bytes of a FASTA/FASTQ file into lines without keeping sequence lines, and turns them
/// into `.fai` entries, enforcing htslib's layout rules. Bytes arrive in chunks of any size.
private final class FaiScanner {
    let path: String
    let duplicates: DuplicateNamePolicy
    private(set) var format: SequenceReader.Format? = nil
    private(set) var entries: [FastaIndexEntry] = []
    /// Entry position by name.
    private(set) var positions: [String: Int] = [:]
    /// Header line number of each kept record, for duplicate errors.
    private var headerLines: [String: Int] = [:]

    // The current line.
    private var consumed = 0          // bytes fed before the current chunk
    private var lineNumber = 1
    private var lineStart = 0
    private var lineLength = 0        // bytes so far, terminator excluded
    private var pendingCR = false
    private var firstByte: UInt8 = 0
    private var keepsText = false     // header candidates ('>' or '@') are kept to read the name
    private var text: [UInt8] = []

    private struct Line {
        let number: Int
        let start: Int
        let length: Int
        /// 0 at the end of the file, 1 for LF, 2 for CRLF.
        let terminator: Int
        let first: UInt8?
        /// Bytes the line takes as a full line: htslib counts a missing final terminator as one byte.
        var width: Int { length + max(terminator, 1) }
    }

    // The current record.
    private enum Phase { case between, fastaSequence, fastqSequence, fastqPlus, fastqQuality }
    private var phase = Phase.between
    private struct Record {
        var name = ""
        var headerLine = 0
        var isDuplicate = false
        var offset = 0
        var length = 0
        var lineBases = 0
        var lineWidth = 0
        var lines = 0
        var qualityOffset: Int? = nil
        /// A blank line after the header: only further blank lines may follow.
        var blankLine: Int? = nil
        /// A sequence line that can only be the last one (shorter, or ending differently), and why.
        var lastLine: (number: Int, why: String)? = nil
    }
    private var record = Record()

    init(path: String, duplicates: DuplicateNamePolicy) {
        self.path = path
        self.duplicates = duplicates
    }

    func feed(_ chunk: UnsafeBufferPointer<UInt8>) throws {
        guard let base = chunk.baseAddress else { return }
        for i in 0..<chunk.count {
            let b = base[i]
            if b >= 0x20 || b == 0x09 {
                if pendingCR { throw error("carriage return not followed by a line feed") }
                if lineLength == 0 {
                    firstByte = b
                    keepsText = b == UInt8(ascii: ">") || b == UInt8(ascii: "@")
                }
                if keepsText { text.append(b) }
                lineLength += 1
            } else if b == 0x0A {
                try endLine(terminator: pendingCR ? 2 : 1)
                lineStart = consumed + i + 1
            } else if b == 0x0D {
                if pendingCR { throw error("carriage return not followed by a line feed") }
                pendingCR = true
            } else {
                throw error("binary data (byte 0x\(String(b, radix: 16)))")
            }
        }
        consumed += chunk.count
    }

    func finish() throws {
        if pendingCR { throw error("carriage return not followed by a line feed") }
        if lineLength > 0 { try endLine(terminator: 0) }
        switch phase {
        case .between: break
        case .fastaSequence: finishRecord()
        case .fastqSequence: throw endInsideRecord("sequence")
        case .fastqPlus: throw endInsideRecord("'+'")
        case .fastqQuality: throw endInsideRecord("quality")
        }
    }

    private func endLine(terminator: Int) throws {
        let line = Line(number: lineNumber, start: lineStart, length: lineLength, terminator: terminator,
                        first: lineLength > 0 ? firstByte : nil)
        try process(line)
        lineNumber += 1
        lineLength = 0
        pendingCR = false
        keepsText = false
        text.removeAll(keepingCapacity: true)
    }

    private func process(_ line: Line) throws {
        switch phase {
        case .between:
            guard let first = line.first else { return }  // blank lines between records
            if first == UInt8(ascii: ">") && format != .fastq {
                format = .fasta
                try startRecord(line)
                phase = .fastaSequence
            } else if first == UInt8(ascii: "@") && format != .fasta {
                format = .fastq
                try startRecord(line)
                phase = .fastqSequence
            } else {
                throw error(format == .fastq ? "expected '@' at the start of a FASTQ record"
                    : "expected '>' or '@' at the start of a record", line: line.number)
            }
        case .fastaSequence:
            guard let first = line.first else {
                if record.blankLine == nil { record.blankLine = line.number }
                return
            }
            if first == UInt8(ascii: ">") {
                finishRecord()
                try startRecord(line)
            } else {
                try addFastaLine(line)
            }
        case .fastqSequence:
            record.offset = line.start
            record.length = line.length
            record.lineBases = line.length
            record.lineWidth = line.width
            phase = .fastqPlus
        case .fastqPlus:
            guard line.first == UInt8(ascii: "+") else {
                throw error("expected a '+' line after the sequence of FASTQ record '\(record.name)'",
                            line: line.number)
            }
            phase = .fastqQuality
        case .fastqQuality:
            guard line.length == record.length else {
                throw error("quality length \(line.length) differs from sequence length \(record.length) in FASTQ "
                    + "record '\(record.name)'", line: line.number)
            }
            record.qualityOffset = line.start
            finishRecord()
            phase = .between
        }
    }

    /// Reads the name from the header line (the first word after the marker, leading blanks skipped).
    private func startRecord(_ line: Line) throws {
        func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }
        var i = 1
        while i < text.count && isBlank(text[i]) { i += 1 }
        let nameStart = i
        while i < text.count && !isBlank(text[i]) { i += 1 }
        guard i > nameStart else { throw error("record header without a name", line: line.number) }
        let name = String(decoding: text[nameStart..<i], as: UTF8.self)
        record = Record(name: name, headerLine: line.number, offset: line.start + line.length + line.terminator)
        if let first = headerLines[name] {
            guard duplicates == .keepFirst else {
                throw error("duplicate sequence name '\(name)' (first on line \(first)); names must be unique, or "
                    + "choose DuplicateNamePolicy.keepFirst to keep the first record as samtools does",
                    line: line.number)
            }
            record.isDuplicate = true
        }
    }

    private func addFastaLine(_ line: Line) throws {
        if let blank = record.blankLine {
            throw error("blank line inside record '\(record.name)' (its sequence goes on at line \(line.number))",
                        line: blank)
        }
        if let last = record.lastLine { throw error(last.why, line: last.number) }
        let rule = "all lines of a record but the last must have the same length and terminator"
        if record.lines == 0 {
            record.lineBases = line.length
            record.lineWidth = line.width
        } else if line.length > record.lineBases {
            throw error("line of \(line.length) bases is longer than the first line of record '\(record.name)' "
                + "(\(record.lineBases) bases); \(rule)", line: line.number)
        } else if line.length < record.lineBases {
            record.lastLine = (line.number, "line of \(line.length) bases is shorter than the first line of record "
                + "'\(record.name)' (\(record.lineBases) bases) but is not its last line; \(rule)")
        } else if line.width != record.lineWidth {
            let ends = { (width: Int) in width == 1 ? "LF" : "CRLF" }
            record.lastLine = (line.number, "line ends with \(ends(line.width - line.length)) but the first line of "
                + "record '\(record.name)' ends with \(ends(record.lineWidth - record.lineBases)); \(rule)")
        }
        record.length += line.length
        record.lines += 1
    }

    private func finishRecord() {
        guard !record.isDuplicate else { return }
        headerLines[record.name] = record.headerLine
        positions[record.name] = entries.count
        entries.append(FastaIndexEntry(name: record.name, length: record.length, offset: record.offset,
                                       lineBases: record.lineBases, lineWidth: record.lineWidth,
                                       qualityOffset: record.qualityOffset))
    }

    private func error(_ message: String, line: Int? = nil) -> MambaKitError {
        MambaKitError(.format, message, at: "\(path), line \(line ?? lineNumber)")
    }

    private func endInsideRecord(_ expected: String) -> MambaKitError {
        error("file ends inside a FASTQ record (expected the \(expected) line)")
    }
}

// MARK: - Files and BGZF blocks

/// A file opened for positioned reads.
final class ReadOnlyFile {
    let path: String
    let size: Int
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        try FileInput.checkFile(path)
        var f: Int32
        repeat { f = open(path, O_RDONLY | O_CLOEXEC) } while f < 0 && errno == EINTR
        guard f >= 0 else {
            throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path)
        }
        var st = stat()
        guard fstat(f, &st) == 0 else {
            let code = errno
            close(f)
            throw MambaKitError(.io, "cannot stat: \(String(cString: strerror(code)))", at: path)
        }
        fd = f
        size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Reads up to `count` bytes at `offset`; fewer only at the end of the file.
    func read(into p: UnsafeMutablePointer<UInt8>, count: Int, at offset: Int) throws -> Int {
        var got = 0
        while got < count {
            let n = pread(fd, p + got, count - got, off_t(offset + got))
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "read failed at byte \(offset + got): \(String(cString: strerror(errno)))",
                                    at: path)
            }
            if n == 0 { break }
            got += n
        }
        return got
    }

    /// Whether the file starts with the gzip magic bytes `1f 8b`.
    func startsWithGzipMagic() throws -> Bool {
        var magic: (UInt8, UInt8) = (0, 0)
        let n = try withUnsafeMutableBytes(of: &magic) {
            try read(into: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: 2, at: 0)
        }
        return n == 2 && magic == (0x1F, 0x8B)
    }
}

/// Reads single BGZF blocks: gzip members whose extra field holds a `BC` subfield with the block size minus one
/// (BSIZE), at most 64 KiB each, inflated with raw deflate and checked against their CRC32 and ISIZE.
final class BGZFBlockReader {
    static let maxBlockSize = 1 << 16

    let file: ReadOnlyFile
    private var stream = z_stream()
    private let block: UnsafeMutablePointer<UInt8>

    init(file: ReadOnlyFile) throws {
        self.file = file
        block = .allocate(capacity: BGZFBlockReader.maxBlockSize)
        let status = inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else {
            block.deallocate()
            throw MambaKitError(.io, "cannot initialise zlib (status \(status))", at: file.path)
        }
    }

    deinit {
        inflateEnd(&stream)
        block.deallocate()
    }

    /// Inflates the block starting at byte `offset` into `output` (replacing its contents) and returns the block's
    /// size in the file; nil when `offset` is the end of the file.
    func readBlock(at offset: Int, into output: inout [UInt8]) throws -> Int? {
        if offset >= file.size { return nil }
        let location = "\(file.path), compressed byte \(offset)"
        let truncated = MambaKitError(.format, "truncated BGZF block (the file ends inside it)", at: location)
        let got = try file.read(into: block, count: 12, at: offset)
        guard got >= 2, block[0] == 0x1F, block[1] == 0x8B else {
            throw MambaKitError(.format, offset == 0 ? "not a gzip file"
                : "data after the last BGZF block is not a gzip member", at: location)
        }
        guard got == 12 else { throw truncated }
        // BGZF: deflate (CM 8), only FEXTRA among the flags, and a BC subfield in the extra field.
        let xlen = Int(block[10]) | Int(block[11]) << 8
        var bsize: Int? = nil
        if block[2] == 8 && block[3] == 0x04 && 12 + xlen + 8 <= BGZFBlockReader.maxBlockSize {
            guard try file.read(into: block + 12, count: xlen, at: offset + 12) == xlen else { throw truncated }
            var p = 12
            while p + 4 <= 12 + xlen {
                let slen = Int(block[p + 2]) | Int(block[p + 3]) << 8
                if block[p] == 0x42 && block[p + 1] == 0x43 && slen == 2 && p + 6 <= 12 + xlen {
                    bsize = (Int(block[p + 4]) | Int(block[p + 5]) << 8) + 1
                }
                p += 4 + slen
            }
        }
        guard let size = bsize else {
            throw MambaKitError(.format, offset == 0
                ? "plain gzip (not BGZF) cannot be indexed for random access; recompress the file with bgzip"
                : "gzip member without a BGZF block size: the file is not all BGZF, and plain gzip cannot be "
                    + "indexed; recompress it with bgzip", at: location)
        }
        guard size >= 12 + xlen + 8 else {
            throw MambaKitError(.format, "BGZF block size \(size) is too small for its header", at: location)
        }
        guard offset + size <= file.size else { throw truncated }
        guard try file.read(into: block, count: size, at: offset) == size else { throw truncated }
        func u32(_ at: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 | UInt32(block[at + $1]) << (8 * UInt32($1)) }
        }
        let crc = u32(size - 8)
        let isize = Int(u32(size - 4))
        guard isize <= BGZFBlockReader.maxBlockSize else {
            throw MambaKitError(.format, "BGZF block claims \(isize) uncompressed bytes (at most 65536)",
                                at: location)
        }
        output.removeAll(keepingCapacity: true)
        output.append(contentsOf: repeatElement(0, count: isize + 1))  // one spare byte: zlib needs room to finish
        inflateReset(&stream)
        stream.next_in = block + 12 + xlen
        stream.avail_in = UInt32(size - 12 - xlen - 8)
        let status: Int32 = output.withUnsafeMutableBufferPointer { out in
            stream.next_out = out.baseAddress
            stream.avail_out = UInt32(out.count)
            return inflate(&stream, Z_FINISH)
        }
        let produced = isize + 1 - Int(stream.avail_out)
        guard status == Z_STREAM_END, produced == isize, stream.avail_in == 0 else {
            let detail: String
            if status == Z_DATA_ERROR {
                detail = stream.msg.map { String(cString: $0) } ?? "invalid deflate data"
            } else if status == Z_STREAM_END && produced != isize {
                detail = "it inflates to \(produced) bytes but its ISIZE says \(isize)"
            } else if status == Z_STREAM_END {
                detail = "\(stream.avail_in) stray bytes after its deflate data"
            } else if stream.avail_out == 0 {
                detail = "it inflates to more than its ISIZE of \(isize) bytes"
            } else {
                detail = "its deflate data ends early"
            }
            throw MambaKitError(.format, "corrupt BGZF block: \(detail)", at: location)
        }
        output.removeLast()
        let actual = output.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32(isize))) }
        guard actual == crc else {
            throw MambaKitError(.format, "corrupt BGZF block: CRC32 mismatch", at: location)
        }
        return size
    }
}
