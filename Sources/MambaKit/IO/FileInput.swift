import Foundation

/// Reading whole input files with errors that name the file: missing, a directory, unreadable, empty.
public enum FileInput {
    /// Checks that `path` is a readable regular file (following symlinks) and returns its size in bytes. FIFOs,
    /// devices (`/dev/zero`, `/dev/stdin`) and sockets are refused: they can be endless or block forever.
    @discardableResult
    public static func checkFile(_ path: String) throws -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path)
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw MambaKitError(.io, "expected a file, found a directory", at: path)
        case S_IFIFO: throw MambaKitError(.io, "expected a regular file, found a FIFO (pipe)", at: path)
        case S_IFCHR, S_IFBLK: throw MambaKitError(.io, "expected a regular file, found a device", at: path)
        case S_IFSOCK: throw MambaKitError(.io, "expected a regular file, found a socket", at: path)
        default: throw MambaKitError(.io, "expected a regular file", at: path)
        }
        guard access(path, R_OK) == 0 else {
            throw MambaKitError(.io, "cannot read: \(String(cString: strerror(errno)))", at: path)
        }
        return Int(st.st_size)
    }

    /// Largest file `readBytes` reads whole unless told otherwise: settings, label tables and prompts are far
    /// smaller; sequence data and audio stream instead.
    public static let maxWholeFile = 1 << 30

    /// The path that stands for standard input where a command accepts it (`--input -`, `--prompt-file -`).
    public static let standardInput = "-"

    /// How errors name `path`: "standard input" for `-`.
    public static func label(_ path: String) -> String { path == standardInput ? "standard input" : path }

    /// A descriptor to read `path` from: `-` is a duplicate of standard input (read to its end, whatever it is);
    /// anything else must pass `checkFile`. Returns the descriptor and the file's size (0 for standard input).
    static func openForReading(_ path: String) throws -> (fd: Int32, size: Int) {
        if path == standardInput {
            let fd = dup(STDIN_FILENO)
            guard fd >= 0 else { throw MambaKitError(.io, "cannot read: \(String(cString: strerror(errno)))", at: label(path)) }
            return (fd, 0)
        }
        let size = try checkFile(path)
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path) }
        return (fd, size)
    }

    /// The whole file as bytes; an empty file is an error unless `allowEmpty`, one over `maxBytes` always is.
    /// `-` reads standard input to its end, under the same limit.
    public static func readBytes(_ path: String, allowEmpty: Bool = false, maxBytes: Int = maxWholeFile) throws -> [UInt8] {
        let (fd, size) = try openForReading(path)
        defer { close(fd) }
        let path = label(path)
        guard size <= maxBytes else {
            throw MambaKitError(.io, "file is \(size) bytes, more than the \(maxBytes) this input may hold", at: path)
        }
        // One read of the stat size plus a byte (to see growth) for small files; 1 MiB blocks beyond that.
        var out: [UInt8] = []
        out.reserveCapacity(min(size, 1 << 20))
        try readBlocks(fd, path: path, blockSize: size == 0 ? 1 << 16 : min(size + 1, 1 << 20)) { block in
            out.append(contentsOf: block)
            if out.count > maxBytes {
                throw MambaKitError(.io, size == 0 ? "input is longer than the \(maxBytes) bytes it may hold"
                                                   : "file grew past \(maxBytes) bytes while being read", at: path)
            }
        }
        if out.isEmpty && !allowEmpty { throw MambaKitError(.io, "file is empty", at: path) }
        return out
    }

    /// Reads the open descriptor `fd` to its end in blocks of up to `blockSize` bytes, handing each to `body`
    /// (retrying on EINTR; a failed read names `path` and the byte it failed at). Returns the bytes read.
    @discardableResult
    public static func readBlocks(_ fd: Int32, path: String, blockSize: Int,
                                  _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        var block = [UInt8](repeating: 0, count: max(1, blockSize))
        var total = 0
        while true {
            let n = block.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "read failed at byte \(total): \(String(cString: strerror(errno)))", at: path)
            }
            if n == 0 { return total }
            try block.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            total += n
        }
    }
}
