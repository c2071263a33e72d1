import CZlib
import Foundation

/// One FASTA or FASTQ record.
public struct SequenceRecord: Equatable, Sendable {
    /// The first word of the header line (after `>` or `@`, leading blanks skipped).
    public let name: String
    /// The rest of the header line after the name and the whitespace that follows it; may be empty.
    public let description: String
    /// The bases exactly as written (case kept), line terminators removed, lines of a record joined.
    public let sequence: [UInt8]
    /// FASTQ quality bytes (same length as `sequence`); `nil` for FASTA.
    public let quality: [UInt8]?

    public init(name: String, description: String, sequence: [UInt8], quality: [UInt8]?) {
        self.name = name
        self.description = description
        self.sequence = sequence
        self.quality = quality
    }
}

/// Streaming reader of FASTA and FASTQ files, plain or gzip-compressed (multi-member gzip and BGZF included).
///
/// The file is read in fixed-size chunks, so memory stays bounded by the chunk size plus the longest record.
/// Compression is detected from the first two bytes (`1f 8b`), the format from the first non-empty line
/// (`>` FASTA, `@` FASTQ). FASTQ is the four-line form. Malformed input throws a `MambaKitError` naming the
/// file and the 1-based line number.
public final class SequenceReader {
    public enum Format: String, Sendable {
        case fasta
        case fastq
    }

    public let path: String
    public let format: Format
    /// Whether the file was gzip-compressed.
    public let isCompressed: Bool

    private let lines: LineBuffer
    /// Longest record (bases, and quality for FASTQ) and so longest line accepted.
    public let maxRecordLength: Int

    /// The default `maxRecordLength`: 4 Gbases (above any chromosome, unwrapped or not), or a quarter of the memory
    /// budget when that is less. A gzip "bomb" or a binary file without line feeds stops there with an error naming
    /// the record or line, instead of taking all memory.
    public static var defaultMaxRecordLength: Int { min(1 << 32, max(1 << 20, MemoryBudget.available / 4)) }

    /// Reads `path`, or standard input for `-` (plain or gzip, streamed).
    public init(path: String, maxRecordLength: Int = SequenceReader.defaultMaxRecordLength) throws {
        let input = path
        let path = FileInput.label(path)
        self.path = path
        self.maxRecordLength = max(1, maxRecordLength)
        let source = try ByteSource(path: input)
        self.isCompressed = source.isGzip
        let lines = LineBuffer(source: source, path: path, maxLine: self.maxRecordLength)
        self.lines = lines
        // The format comes from the first non-empty line; an empty file reads as zero FASTA records.
        var detected = Format.fasta
        while try lines.nextLine() {
            if lines.lineIsEmpty { continue }
            switch lines.firstByte {
            case UInt8(ascii: ">"): detected = .fasta
            case UInt8(ascii: "@"): detected = .fastq
            default:
                throw MambaKitError(.format, "expected '>' or '@' at the start of a record",
                                    at: "\(path), line \(lines.lineNumber)")
            }
            lines.unread()
            break
        }
        self.format = detected
    }

    /// The next record, or `nil` at the end of the file.
    public func next() throws -> SequenceRecord? {
        switch format {
        case .fasta: return try nextFasta()
        case .fastq: return try nextFastq()
        }
    }

    /// Reads all remaining records (convenience for small files).
    public func readAll() throws -> [SequenceRecord] {
        var out: [SequenceRecord] = []
        while let r = try next() { out.append(r) }
        return out
    }

    /// The next header line (blank lines skipped), which must start with `marker`; nil at the end of the file.
    private func nextHeader(marker: Unicode.Scalar, kind: String) throws -> (String, String)? {
        repeat {
            guard try lines.nextLine() else { return nil }
        } while lines.lineIsEmpty
        guard lines.firstByte == UInt8(ascii: marker) else {
            throw formatError("expected '\(marker)' at the start of a \(kind) record")
        }
        return try parseHeader()
    }

    // MARK: - FASTA

    private func nextFasta() throws -> SequenceRecord? {
        guard let (name, description) = try nextHeader(marker: ">", kind: "FASTA") else { return nil }
        var sequence: [UInt8] = []
        while try lines.nextLine() {
            if lines.lineIsEmpty { continue }
            if lines.firstByte == UInt8(ascii: ">") {
                lines.unread()
                break
            }
            try checkText("sequence")
            guard sequence.count + lines.currentLine.count <= maxRecordLength else { throw tooLong(name) }
            lines.appendLine(to: &sequence)
        }
        return SequenceRecord(name: name, description: description, sequence: sequence, quality: nil)
    }

    // MARK: - FASTQ

    private func nextFastq() throws -> SequenceRecord? {
        guard let (name, description) = try nextHeader(marker: "@", kind: "FASTQ") else { return nil }

        guard try lines.nextLine() else { throw endInsideRecord("sequence") }
        try checkText("sequence")
        var sequence: [UInt8] = []
        lines.appendLine(to: &sequence)

        guard try lines.nextLine() else { throw endInsideRecord("'+'") }
        guard lines.firstByte == UInt8(ascii: "+") else {
            throw formatError("expected a '+' line after the sequence of FASTQ record '\(name)'")
        }

        guard try lines.nextLine() else { throw endInsideRecord("quality") }
        try checkText("quality")
        var quality: [UInt8] = []
        lines.appendLine(to: &quality)
        guard quality.count == sequence.count else {
            throw formatError("quality length \(quality.count) differs from sequence length \(sequence.count) "
                + "in FASTQ record '\(name)'")
        }
        return SequenceRecord(name: name, description: description, sequence: sequence, quality: quality)
    }

    // MARK: - Helpers

    private func tooLong(_ name: String) -> MambaKitError {
        MambaKitError(.format, "record '\(name)' is longer than \(maxRecordLength) bases, the most this reader holds",
                      at: "\(path), line \(lines.lineNumber)")
    }

    /// Splits the current header line (first byte is `>` or `@`) into name and description.
    private func parseHeader() throws -> (String, String) {
        let bytes = lines.currentLine
        var i = 1
        while i < bytes.count && isBlank(bytes[i]) { i += 1 }
        let nameStart = i
        while i < bytes.count && !isBlank(bytes[i]) { i += 1 }
        let nameEnd = i
        while i < bytes.count && isBlank(bytes[i]) { i += 1 }
        guard nameEnd > nameStart else { throw formatError("record header without a name") }
        if let b = lines.firstControlByte() {
            throw formatError("binary data (byte 0x\(String(b, radix: 16))) in a header line")
        }
        let name = String(decoding: bytes[nameStart..<nameEnd], as: UTF8.self)
        let description = String(decoding: bytes[i..<bytes.count], as: UTF8.self)
        return (name, description)
    }

    private func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }

    /// Rejects control bytes (other than tab) in the current line.
    private func checkText(_ what: String) throws {
        if let bad = lines.firstControlByte() {
            throw formatError("binary data (byte 0x\(String(bad, radix: 16))) in a \(what) line")
        }
    }

    private func formatError(_ message: String) -> MambaKitError {
        MambaKitError(.format, message, at: "\(path), line \(lines.lineNumber)")
    }

    private func endInsideRecord(_ expected: String) -> MambaKitError {
        MambaKitError(.format, "file ends inside a FASTQ record (expected the \(expected) line)",
                      at: "\(path), line \(lines.lineNumber + 1)")
    }
}

// MARK: - Line splitting

/// Splits a byte stream into lines (LF or CRLF), keeping one line available at a time.
///
/// One pass per line, eight bytes at a time, looks for the first control byte (below 0x20, tab excepted): when that is the LF, the
/// line is known to be clean and the checks for a stray CR and for binary data cost nothing more. Only a line with
/// another control byte (a CRLF line, binary data) goes through `memchr` and the byte-by-byte checks.
private final class LineBuffer {
    private let source: ByteSource
    private let path: String
    private var buf: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private var end = 0          // valid bytes are buf[0..<end]
    private var next = 0         // start of the next unread line
    private var scanned = 0      // bytes in next..<scanned are known to hold no LF
    private var dirty = false    // whether next..<scanned holds a control byte other than tab (else none at all)
    private var eof = false
    private var repeatLine = false
    private(set) var lineStart = 0
    private(set) var lineEnd = 0
    /// The current line holds no control byte other than tab (so no CR and no binary data).
    private(set) var lineIsClean = false
    /// 1-based number of the current line.
    private(set) var lineNumber = 0

    /// Longest line held: a longer one is an error (binary data without line feeds, or a record over the limit).
    private let maxLine: Int

    init(source: ByteSource, path: String, maxLine: Int) {
        self.source = source
        self.path = path
        self.maxLine = maxLine
        self.capacity = ByteSource.chunkSize
        self.buf = .allocate(capacity: capacity)
    }

    deinit { buf.deallocate() }

    var lineIsEmpty: Bool { lineEnd == lineStart }
    var firstByte: UInt8? { lineEnd > lineStart ? buf[lineStart] : nil }
    var currentLine: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: buf + lineStart, count: lineEnd - lineStart)
    }

    func appendLine(to array: inout [UInt8]) {
        array.append(contentsOf: currentLine)
    }

    func firstControlByte() -> UInt8? {
        if lineIsClean { return nil }
        var i = lineStart
        while i < lineEnd {
            let b = buf[i]
            if b < 0x20 && b != 0x09 { return b }
            i += 1
        }
        return nil
    }

    /// Makes the next `nextLine()` serve the current line again.
    func unread() { repeatLine = true }

    /// Advances to the next line; `false` at the end of the input.
    func nextLine() throws -> Bool {
        if repeatLine {
            repeatLine = false
            return true
        }
        while true {
            if scanned < end && !dirty {
                let c = firstControl(from: scanned, to: end)
                if c < end && buf[c] == 0x0A {
                    try setLine(start: next, end: c, terminated: true, clean: true)
                    return true
                }
                if c < end { dirty = true }
                scanned = c
            }
            if scanned < end, let lf = memchr(buf + scanned, 0x0A, end - scanned) {
                let i = buf.distance(to: lf.assumingMemoryBound(to: UInt8.self))
                try setLine(start: next, end: i, terminated: true, clean: false)
                return true
            }
            scanned = end
            if eof {
                if next == end { return false }
                try setLine(start: next, end: end, terminated: false, clean: !dirty)
                return true
            }
            try fill()
        }
    }

    /// The index of the first byte in `from..<to` below 0x20 other than tab (LF and CR included), or `to`.
    /// Eight bytes at a time: `(x - 0x20…20) & ~x & 0x80…80` is non-zero exactly when some byte of `x` is below 0x20
    /// (Swift's SIMD masks lower to per-lane code here, this does not); such a word is then checked byte by byte.
    @inline(__always)
    private func firstControl(from: Int, to: Int) -> Int {
        var i = from
        let raw = UnsafeRawPointer(buf)
        while i + 8 <= to {
            let x = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            if (x &- 0x2020_2020_2020_2020) & ~x & 0x8080_8080_8080_8080 != 0 {
                for j in i..<(i + 8) where buf[j] < 0x20 && buf[j] != 0x09 { return j }
            }
            i += 8
        }
        while i < to {
            let b = buf[i]
            if b < 0x20 && b != 0x09 { return i }
            i += 1
        }
        return to
    }

    /// Makes `start..<lineEndIndex` the current line and moves past it (and its LF, if `terminated`). A `clean` line
    /// is known to hold no control byte, so it needs neither the CRLF trim nor the stray-CR check.
    private func setLine(start: Int, end lineEndIndex: Int, terminated: Bool, clean: Bool) throws {
        lineNumber += 1
        next = terminated ? lineEndIndex + 1 : lineEndIndex
        scanned = next
        dirty = false
        lineIsClean = clean
        if clean {
            lineStart = start
            lineEnd = lineEndIndex
            return
        }
        var e = lineEndIndex
        if terminated && e > start && buf[e - 1] == 0x0D { e -= 1 }
        if e > start && memchr(buf + start, 0x0D, e - start) != nil {
            throw MambaKitError(.format, "carriage return not followed by a line feed",
                                at: "\(path), line \(lineNumber)")
        }
        lineStart = start
        lineEnd = e
    }

    /// Moves the unread tail to the front, grows the buffer if a line fills it, and reads more bytes.
    private func fill() throws {
        if next > 0 {
            let keep = end - next
            if keep > 0 { (buf).update(from: buf + next, count: keep) }
            end = keep
            scanned -= next
            next = 0
        }
        if end == capacity {
            guard end - next < maxLine + 2 else {
                throw MambaKitError(.format, "line longer than \(maxLine) bytes (binary data, or a record over the limit)",
                                    at: "\(path), line \(lineNumber + 1)")
            }
            let newCapacity = capacity * 2
            let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
            grown.update(from: buf, count: end)
            buf.deallocate()
            buf = grown
            capacity = newCapacity
        }
        let n = try source.read(into: buf + end, count: capacity - end)
        if n == 0 { eof = true } else { end += n }
    }
}

// MARK: - Byte source (plain or gzip)

/// Reads a file in chunks, inflating gzip members (several in a row, as in BGZF) when the file starts with `1f 8b`.
private final class ByteSource {
    static let chunkSize = 1 << 20

    let path: String
    let isGzip: Bool
    private let fd: Int32
    private let raw: UnsafeMutablePointer<UInt8>
    private var rawStart = 0       // plain mode: unread bytes raw[rawStart..<rawEnd]
    private var rawEnd = 0
    private var rawEOF = false
    private var compressedOffset = 0  // bytes of the file handed to zlib so far
    private var stream = z_stream()
    private var streamReady = false
    private var memberEnded = false
    private var members = 0

    init(path: String) throws {
        let f = try FileInput.openForReading(path).fd
        self.path = FileInput.label(path)
        let path = self.path
        fd = f
        let raw = UnsafeMutablePointer<UInt8>.allocate(capacity: ByteSource.chunkSize)
        self.raw = raw
        var rawEOF = false
        // Read at least two bytes (or to the end) to see whether this is gzip.
        var got = 0
        do {
            while got < 2 {
                let n = try ByteSource.readRaw(fd: f, path: path, into: raw + got, count: ByteSource.chunkSize - got)
                if n == 0 { rawEOF = true; break }
                got += n
            }
        } catch {
            close(fd)
            raw.deallocate()
            throw error
        }
        rawEnd = got
        self.rawEOF = rawEOF
        isGzip = got >= 2 && raw[0] == 0x1F && raw[1] == 0x8B
        if isGzip {
            // 15 + 16: gzip members only. Automatic detection (+ 32) would also accept a zlib stream after a member.
            let status = inflateInit2_(&stream, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
            guard status == Z_OK else {
                // Every property is set, so deinit closes the file and frees the buffer.
                throw MambaKitError(.io, "cannot initialise zlib (status \(status))", at: path)
            }
            streamReady = true
            stream.next_in = raw
            stream.avail_in = UInt32(got)
            compressedOffset = got
            members = 1
        }
    }

    deinit {
        if streamReady { inflateEnd(&stream) }
        close(fd)
        raw.deallocate()
    }

    private func readRaw(into p: UnsafeMutablePointer<UInt8>, count: Int) throws -> Int {
        try ByteSource.readRaw(fd: fd, path: path, into: p, count: count)
    }

    private static func readRaw(fd: Int32, path: String, into p: UnsafeMutablePointer<UInt8>, count: Int) throws -> Int {
        while true {
            let n = Foundation.read(fd, p, count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw MambaKitError(.io, "read failed: \(String(cString: strerror(errno)))", at: path)
        }
    }

    /// Fills up to `count` bytes of decoded data; returns 0 only at the end of the data.
    func read(into p: UnsafeMutablePointer<UInt8>, count: Int) throws -> Int {
        precondition(count > 0)
        if !isGzip {
            if rawStart < rawEnd {
                let n = min(count, rawEnd - rawStart)
                p.update(from: raw + rawStart, count: n)
                rawStart += n
                return n
            }
            if rawEOF { return 0 }
            let n = try readRaw(into: p, count: count)
            if n == 0 { rawEOF = true }
            return n
        }
        return try inflateSome(into: p, count: count)
    }

    private func refillCompressed() throws {
        guard stream.avail_in == 0, !rawEOF else { return }
        let n = try readRaw(into: raw, count: ByteSource.chunkSize)
        if n == 0 {
            rawEOF = true
        } else {
            stream.next_in = raw
            stream.avail_in = UInt32(n)
            compressedOffset += n
        }
    }

    private func inflateSome(into p: UnsafeMutablePointer<UInt8>, count: Int) throws -> Int {
        while true {
            try refillCompressed()
            if memberEnded {
                // A member ended: the data ends here, or another member follows.
                if stream.avail_in == 0 {
                    if rawEOF { return 0 }
                    continue
                }
                inflateReset(&stream)
                memberEnded = false
                members += 1
            }
            let avail = UInt32(min(count, Int(UInt32.max)))
            stream.next_out = p
            stream.avail_out = avail
            let status = inflate(&stream, Z_NO_FLUSH)
            let produced = Int(avail - stream.avail_out)
            switch status {
            case Z_STREAM_END:
                memberEnded = true
                if produced > 0 { return produced }
            case Z_OK, Z_BUF_ERROR:
                if produced > 0 { return produced }
                if stream.avail_in == 0 && rawEOF {
                    throw MambaKitError(.format, "truncated gzip data (member \(members) ends before its end marker "
                        + "after \(compressedOffset) compressed bytes)", at: path)
                }
            case Z_DATA_ERROR, Z_NEED_DICT:
                let detail = stream.msg.map { String(cString: $0) } ?? "invalid data"
                let consumed = compressedOffset - Int(stream.avail_in)
                if members > 1 && stream.total_out == 0 {
                    throw MambaKitError(.format, "data after the last gzip member is not gzip (\(detail), "
                        + "compressed byte \(consumed))", at: path)
                }
                throw MambaKitError(.format, "corrupt gzip data in member \(members): \(detail) "
                    + "(near compressed byte \(consumed))", at: path)
            case Z_MEM_ERROR:
                throw MambaKitError(.io, "zlib ran out of memory", at: path)
            default:
                throw MambaKitError(.format, "gzip decoding failed (zlib status \(status))", at: path)
            }
        }
    }
}

// MARK: - gzip compression

/// Small gzip helpers.
public enum Gzip {
    /// Compresses `bytes` into one gzip member.
    public static func compress(_ bytes: [UInt8], level: Int32 = Z_DEFAULT_COMPRESSION) throws -> [UInt8] {
        var stream = z_stream()
        let status = deflateInit2_(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
                                   ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else { throw MambaKitError(.io, "cannot initialise zlib (status \(status))") }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, UInt(bytes.count))) + 64
        var out = [UInt8](repeating: 0, count: bound)
        var input = bytes
        let result: Int32 = input.withUnsafeMutableBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                stream.next_in = inp.baseAddress
                stream.avail_in = UInt32(inp.count)
                stream.next_out = outp.baseAddress
                stream.avail_out = UInt32(outp.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard result == Z_STREAM_END else {
            throw MambaKitError(.io, "gzip compression failed (zlib status \(result))")
        }
        out.removeLast(Int(stream.avail_out))
        return out
    }
}
