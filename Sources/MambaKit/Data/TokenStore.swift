#if canImport(Glibc)
import Glibc
#endif
import CZlib
import Foundation

/// A tokenized corpus on disk: every token of every stream, 1, 2 or 4 bytes each (one byte for bytes, DNA and 8-bit
/// audio), read window by window with `pread`, so training memory does not grow with the corpus.
///
/// One file per corpus, `<cache>/<key>.tokens`, written through `AtomicFile` (a half-written store is never seen):
///
///     tokens      tokenCount × width bytes, little-endian, all streams back to back
///     offsets     (streamCount + 1) × Int64 LE: stream i is tokens [offsets[i], offsets[i+1])
///     identity    UTF-8 JSON: the format, the tokenizer settings, and each source's path, size, mtime and inode
///     trailer     64 bytes: "MKTOKEN1", tokenCount, streamCount, identity length (UInt64 LE), width (UInt32 LE),
///                 CRC-32 of the tokens, CRC-32 of offsets + identity, zero padding
///
/// The key is a 64-bit FNV-1a hash of the identity; the identity itself is compared whole when the store is opened,
/// so a changed source (another size, mtime or inode) or other tokenizer settings make a new store. Opening checks
/// the trailer, every size (overflow-checked) and both CRCs: a truncated or corrupt store is reported and rebuilt.
///
/// Windows are read with `pread` rather than a memory map on purpose: pages of a mapping count toward the process's
/// resident set as training touches them, so a mapped 10 GB corpus would grow RSS to its size; `pread` leaves the
/// caching to the kernel's page cache, which it reclaims under pressure.
public final class TokenStore {
    public let path: String
    /// Bytes per token.
    public let width: Int
    public let tokenCount: Int
    /// Stream i is tokens [offsets[i], offsets[i+1]).
    public let offsets: [Int]
    let fd: Int32

    static let magic = Array("MKTOKEN1".utf8)
    static let trailerSize = 64

    deinit { close(fd) }

    public var streamCount: Int { offsets.count - 1 }

    /// The bytes per token a vocabulary of `vocabSize` needs.
    public static func width(vocabSize: Int) -> Int { vocabSize <= 256 ? 1 : vocabSize <= 65536 ? 2 : 4 }

    /// Copies tokens [start, start + count) of the store into `out`, widened to Int32.
    public func read(from start: Int, count: Int, into out: UnsafeMutablePointer<Int32>) throws {
        guard count > 0 else { return }
        precondition(start >= 0 && count <= tokenCount - start, "token range outside the store")
        var buffer = [UInt8](repeating: 0, count: count * width)
        try buffer.withUnsafeMutableBytes { raw in
            try TokenStore.preadAll(fd, raw, at: start * width, path: path)
        }
        buffer.withUnsafeBytes { raw in
            switch width {
            case 1:
                let p = raw.bindMemory(to: UInt8.self)
                for i in 0..<count { out[i] = Int32(p[i]) }
            case 2:
                for i in 0..<count { out[i] = Int32(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
            default:
                for i in 0..<count { out[i] = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
            }
        }
    }

    // MARK: Opening

    /// Why `open` did not return a store.
    public enum Miss: Error, Equatable, Sendable {
        /// No file: a new corpus.
        case absent
        /// A file for other sources or settings under the same key (a hash collision): rebuilt.
        case otherIdentity
        /// Truncated or damaged: rebuilt, and the reason is reported.
        case damaged(String)
    }

    /// Opens the store at `path` if it is whole and was built from `identity`.
    /// `verifyTokens: false` skips the CRC pass over the tokens (for a store this process has just written and
    /// checksummed); the trailer, sizes, table CRC and identity are always checked.
    public static func open(path: String, identity: String, verifyTokens: Bool = true) throws -> Result<TokenStore, Miss> {
        var fd: Int32
        // O_NONBLOCK: a FIFO planted under the store's name must not block the open; it is refused just below.
        repeat { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) } while fd < 0 && errno == EINTR
        if fd < 0 {
            if errno == ENOENT { return .failure(.absent) }
            throw MambaKitError(.io, "cannot open the token store: \(String(cString: strerror(errno)))", at: path)
        }
        var keep = false
        defer { if !keep { close(fd) } }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw MambaKitError(.io, "cannot stat the token store: \(String(cString: strerror(errno)))", at: path)
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw MambaKitError(.io, "the token store is not a regular file (remove it)", at: path)
        }
        let size = Int(st.st_size)
        guard size >= trailerSize else { return .failure(.damaged("\(size) bytes, shorter than its trailer")) }
        var trailer = [UInt8](repeating: 0, count: trailerSize)
        try trailer.withUnsafeMutableBytes { try preadAll(fd, $0, at: size - trailerSize, path: path) }
        guard Array(trailer[0..<8]) == magic else { return .failure(.damaged("no token-store trailer at its end")) }
        func u64(_ at: Int) -> UInt64 { trailer.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        func u32(_ at: Int) -> UInt32 { trailer.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) } }
        let (tokens64, streams64, idLen64, width32) = (u64(8), u64(16), u64(24), u32(32))
        let (crcTokens, crcTable) = (u32(36), u32(40))
        guard [1, 2, 4].contains(width32) else { return .failure(.damaged("token width \(width32)")) }
        // Every part must fit the file: checked in UInt64 with overflow reported, then compared to the size.
        let width = Int(width32)
        let parts: [(UInt64, UInt64)] = [(tokens64, UInt64(width)), (streams64 &+ 1, 8), (idLen64, 1), (UInt64(trailerSize), 1)]
        var expected: UInt64 = 0
        for (n, w) in parts {
            let (p, o1) = n.multipliedReportingOverflow(by: w)
            let (s, o2) = expected.addingReportingOverflow(p)
            guard !o1, !o2, streams64 < UInt64(Int.max) else { return .failure(.damaged("sizes in its trailer overflow")) }
            expected = s
        }
        guard expected == UInt64(size) else {
            return .failure(.damaged("\(size) bytes where its trailer says \(expected) (truncated or damaged)"))
        }
        let (tokenCount, streamCount, idLen) = (Int(tokens64), Int(streams64), Int(idLen64))
        // Offsets and identity: read together, checked against their CRC.
        let tableBytes = (streamCount + 1) * 8 + idLen
        var table = [UInt8](repeating: 0, count: tableBytes)
        try table.withUnsafeMutableBytes { try preadAll(fd, $0, at: tokenCount * width, path: path) }
        guard crc(table) == crcTable else { return .failure(.damaged("its stream table fails its CRC-32")) }
        let storedIdentity = String(decoding: table[((streamCount + 1) * 8)...], as: UTF8.self)
        guard storedIdentity == identity else { return .failure(.otherIdentity) }
        var offsets = [Int](repeating: 0, count: streamCount + 1)
        table.withUnsafeBytes { raw in
            for i in 0...streamCount { offsets[i] = Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        }
        guard offsets[0] == 0, offsets[streamCount] == tokenCount,
              zip(offsets, offsets.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            return .failure(.damaged("its stream offsets are out of order"))
        }
        // The tokens, against their CRC (streamed: memory stays bounded).
        var c = verifyTokens ? crc32_z(0, nil, 0) : UInt(crcTokens)
        var buffer = [UInt8](repeating: 0, count: 1 << 22)
        var at = 0
        let total = verifyTokens ? tokenCount * width : 0
        while at < total {
            let n = min(buffer.count, total - at)
            try buffer.withUnsafeMutableBytes { try preadAll(fd, UnsafeMutableRawBufferPointer(rebasing: $0[0..<n]), at: at, path: path) }
            c = buffer.withUnsafeBytes { crc32_z(c, $0.baseAddress!.assumingMemoryBound(to: Bytef.self), n) }
            at += n
        }
        guard UInt32(c) == crcTokens else { return .failure(.damaged("its tokens fail their CRC-32")) }
        keep = true
        return .success(TokenStore(path: path, fd: fd, width: width, tokenCount: tokenCount, offsets: offsets))
    }

    private init(path: String, fd: Int32, width: Int, tokenCount: Int, offsets: [Int]) {
        self.path = path; self.fd = fd; self.width = width; self.tokenCount = tokenCount; self.offsets = offsets
    }

    // MARK: Building

    /// Appends tokens to a store being written: buffered, with the running CRC and the stream table.
    public final class Writer {
        let handle: AtomicFile.Handle
        let width: Int
        let vocabSize: Int
        var buffer: [UInt8] = []
        var crc = UInt32(crc32_z(0, nil, 0))
        public private(set) var tokenCount = 0
        var offsets = [0]

        init(handle: AtomicFile.Handle, vocabSize: Int) {
            self.handle = handle
            self.vocabSize = vocabSize
            width = TokenStore.width(vocabSize: vocabSize)
            buffer.reserveCapacity(1 << 20)
        }

        /// Appends raw byte tokens (width 1 only).
        public func append(bytes: UnsafeRawBufferPointer) throws {
            precondition(width == 1)
            try flush()
            crc = UInt32(crc32_z(UInt(crc), bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), bytes.count))
            try handle.write(bytes)
            tokenCount += bytes.count
        }

        /// Appends tokens, each checked against the vocabulary (converted and written in blocks of 1 Mi tokens).
        public func append(_ tokens: [Int32], location: String) throws {
            try flush()
            let vocab = UInt32(vocabSize)
            var block = [UInt8](repeating: 0, count: min(tokens.count, 1 << 20) * width)
            try tokens.withUnsafeBufferPointer { src in
                var i = 0
                while i < src.count {
                    let n = min(src.count - i, 1 << 20)
                    var outside = false
                    block.withUnsafeMutableBytes { raw in
                        switch width {
                        case 1:
                            let o = raw.bindMemory(to: UInt8.self)
                            for k in 0..<n {
                                let t = UInt32(bitPattern: src[i + k])
                                outside = outside || t >= vocab
                                o[k] = UInt8(truncatingIfNeeded: t)
                            }
                        case 2:
                            for k in 0..<n {
                                let t = UInt32(bitPattern: src[i + k])
                                outside = outside || t >= vocab
                                raw.storeBytes(of: UInt16(truncatingIfNeeded: t).littleEndian, toByteOffset: 2 * k, as: UInt16.self)
                            }
                        default:
                            for k in 0..<n {
                                let t = UInt32(bitPattern: src[i + k])
                                outside = outside || t >= vocab
                                raw.storeBytes(of: t.littleEndian, toByteOffset: 4 * k, as: UInt32.self)
                            }
                        }
                    }
                    if outside {
                        let bad = src[i..<(i + n)].first { UInt32(bitPattern: $0) >= vocab } ?? -1
                        throw MambaKitError(.usage, "token \(bad) outside the vocabulary of \(vocabSize)", at: location)
                    }
                    try block.withUnsafeBytes { raw in
                        let part = UnsafeRawBufferPointer(rebasing: raw[0..<(n * width)])
                        crc = UInt32(crc32_z(UInt(crc), part.baseAddress!.assumingMemoryBound(to: Bytef.self), part.count))
                        try handle.write(part)
                    }
                    i += n
                }
            }
            tokenCount += tokens.count
        }

        /// Ends the current stream (an empty one is kept as a stream of no tokens).
        public func endStream() { offsets.append(tokenCount) }

        func flush() throws {
            guard !buffer.isEmpty else { return }
            try buffer.withUnsafeBytes { raw in
                crc = UInt32(crc32_z(UInt(crc), raw.baseAddress!.assumingMemoryBound(to: Bytef.self), raw.count))
                try handle.write(raw)
            }
            buffer.removeAll(keepingCapacity: true)
        }

        func finish(identity: String) throws {
            try flush()
            var table: [UInt8] = []
            table.reserveCapacity(offsets.count * 8 + identity.utf8.count)
            for o in offsets { withUnsafeBytes(of: Int64(o).littleEndian) { table.append(contentsOf: $0) } }
            table.append(contentsOf: identity.utf8)
            try handle.write(table)
            var trailer = TokenStore.magic
            for v in [UInt64(tokenCount), UInt64(offsets.count - 1), UInt64(identity.utf8.count)] {
                withUnsafeBytes(of: v.littleEndian) { trailer.append(contentsOf: $0) }
            }
            for v in [UInt32(width), crc, TokenStore.crc(table)] {
                withUnsafeBytes(of: v.littleEndian) { trailer.append(contentsOf: $0) }
            }
            trailer += [UInt8](repeating: 0, count: TokenStore.trailerSize - trailer.count)
            try handle.write(trailer)
        }
    }

    /// Writes a store at `path` (atomically) from what `body` appends, and opens it.
    public static func build(path: String, identity: String, vocabSize: Int, _ body: (Writer) throws -> Void) throws -> TokenStore {
        try AtomicFile.write(to: path) { handle in
            let w = Writer(handle: handle, vocabSize: vocabSize)
            try body(w)
            try w.finish(identity: identity)
        }
        switch try open(path: path, identity: identity, verifyTokens: false) {
        case .success(let s): return s
        case .failure(let miss):
            throw MambaKitError(.io, "the token store just written does not read back (\(miss))", at: path)
        }
    }

    /// The store for `identity` under `directory`: opened when whole, else (re)built with `body`. `note` hears of a
    /// damaged store before it is rebuilt.
    public static func openOrBuild(directory: String, identity: String, vocabSize: Int, note: (String) -> Void,
                                   _ body: (Writer) throws -> Void) throws -> (store: TokenStore, built: Bool) {
        try ensureDirectory(directory)
        let path = directory + "/" + key(identity) + ".tokens"
        switch try open(path: path, identity: identity) {
        case .success(let s): return (s, false)
        case .failure(.damaged(let why)): note("token store \(path): \(why); rebuilding it")
        case .failure: break
        }
        let store = try build(path: path, identity: identity, vocabSize: vocabSize, body)
        removeStale(directory: directory, keeping: path)
        return (store, true)
    }

    /// Removes the stores of `directory` that can never be used again: those whose sources are gone or changed
    /// (another size, mtime or inode) and damaged ones. This keeps the cache to one store per live corpus; it runs
    /// after each build, so rarely. Failures are ignored (another process may be doing the same).
    public static func removeStale(directory: String, keeping: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasSuffix(".tokens") && !name.hasPrefix(".") {
            let path = directory + "/" + name
            guard path != keeping else { continue }
            if let identity = storedIdentity(path: path), sourcesUnchanged(identity) { continue }
            unlink(path)
        }
    }

    /// The identity a store says it was built from, read from its trailer and table without checking them (nil
    /// when there is no trailer).
    public static func storedIdentity(path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) >= trailerSize else { return nil }
        let size = Int(st.st_size)
        var trailer = [UInt8](repeating: 0, count: trailerSize)
        guard (try? trailer.withUnsafeMutableBytes({ try preadAll(fd, $0, at: size - trailerSize, path: path) })) != nil,
              Array(trailer[0..<8]) == magic else { return nil }
        let idLen = trailer.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: UInt64.self)) }
        guard idLen <= UInt64(size - trailerSize) else { return nil }
        var id = [UInt8](repeating: 0, count: Int(idLen))
        guard (try? id.withUnsafeMutableBytes({ try preadAll(fd, $0, at: size - trailerSize - Int(idLen), path: path) })) != nil else {
            return nil
        }
        return String(decoding: id, as: UTF8.self)
    }

    /// Whether every source an identity names still has the same size, mtime and inode.
    static func sourcesUnchanged(_ text: String) -> Bool {
        guard let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let sources = o["sources"] as? [[String: Any]] else { return false }
        for s in sources {
            guard let path = s["path"] as? String, let now = try? identity(ofFile: path) else { return false }
            for k in ["size", "mtime_ns", "inode", "device"] where (s[k] as? Int) != (now[k] as? Int) { return false }
        }
        return true
    }

    /// The 64-bit FNV-1a hash of a text's UTF-8 bytes.
    static func fnv1a(_ text: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// The file name of a store: the 64-bit FNV-1a hash of its identity, in hex.
    public static func key(_ identity: String) -> String {
        let hex = String(fnv1a(identity), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Where stores live unless told: `$MAMBAKIT_CACHE`, else `$XDG_CACHE_HOME/mambakit/tokens`, else
    /// `~/.cache/mambakit/tokens`.
    public static var defaultDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["MAMBAKIT_CACHE"], !d.isEmpty { return d }
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return x + "/mambakit/tokens" }
        if let h = env["HOME"], !h.isEmpty { return h + "/.cache/mambakit/tokens" }
        return NSTemporaryDirectory() + "mambakit-tokens"
    }

    /// A source file's identity: its path as given, size, modification time (ns) and inode.
    public static func identity(ofFile path: String) throws -> [String: Any] {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path)
        }
        return ["path": path, "size": Int(st.st_size),
                "mtime_ns": Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec),
                "inode": Int(st.st_ino), "device": Int(st.st_dev)]
    }

    // MARK: Helpers

    static func crc(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { UInt32(crc32_z(0, $0.baseAddress?.assumingMemoryBound(to: Bytef.self), $0.count)) }
    }

    static func preadAll(_ fd: Int32, _ buf: UnsafeMutableRawBufferPointer, at offset: Int, path: String) throws {
        var done = 0
        while done < buf.count {
            let n = pread(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "read failed at byte \(offset + done): \(String(cString: strerror(errno)))", at: path)
            }
            guard n > 0 else { throw MambaKitError(.io, "the token store ended early at byte \(offset + done)", at: path) }
            done += n
        }
    }
}
