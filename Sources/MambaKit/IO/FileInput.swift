import Foundation

/// Reading whole input files with errors that name the file: missing, a directory, unreadable, empty.
public enum FileInput {
    /// Checks that `path` is a readable regular file and returns its size in bytes.
    @discardableResult
    public static func checkFile(_ path: String) throws -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw MambaKitError(.io, "expected a file, found a directory", at: path) }
        guard access(path, R_OK) == 0 else {
            throw MambaKitError(.io, "cannot read: \(String(cString: strerror(errno)))", at: path)
        }
        return Int(st.st_size)
    }

    /// The whole file as bytes; an empty file is an error unless `allowEmpty`.
    public static func readBytes(_ path: String, allowEmpty: Bool = false) throws -> [UInt8] {
        try checkFile(path)
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "read failed at byte \(out.count): \(String(cString: strerror(errno)))", at: path)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        if out.isEmpty && !allowEmpty { throw MambaKitError(.io, "file is empty", at: path) }
        return out
    }
}
