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

    /// The whole file as bytes; an empty file is an error unless `allowEmpty`, one over `maxBytes` always is.
    public static func readBytes(_ path: String, allowEmpty: Bool = false, maxBytes: Int = maxWholeFile) throws -> [UInt8] {
        let size = try checkFile(path)
        guard size <= maxBytes else {
            throw MambaKitError(.io, "file is \(size) bytes, more than the \(maxBytes) this input may hold", at: path)
        }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path) }
        defer { close(fd) }
        // One read of the stat size plus a byte (to see growth) for small files; 1 MiB blocks beyond that.
        var out: [UInt8] = []
        out.reserveCapacity(min(size, 1 << 20))
        var chunk = [UInt8](repeating: 0, count: min(size + 1, 1 << 20))
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "read failed at byte \(out.count): \(String(cString: strerror(errno)))", at: path)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            if out.count > maxBytes {
                throw MambaKitError(.io, "file grew past \(maxBytes) bytes while being read", at: path)
            }
        }
        if out.isEmpty && !allowEmpty { throw MambaKitError(.io, "file is empty", at: path) }
        return out
    }
}
