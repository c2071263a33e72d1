#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Crash-safe file replacement: readers see either the old file or the complete new one, never a partial write.
///
/// The bytes go to a temporary file in the target's directory (a rename is only atomic within one file system), the
/// file is fsynced, renamed over the target, and the directory is fsynced so the rename itself survives a power loss.
/// On any failure the temporary file is removed and a `MambaKitError(.io)` names the target and the OS reason.
public enum AtomicFile {
    /// The open temporary file handed to `write(to:_:)`'s closure; each `write` appends to it.
    public struct Handle {
        fileprivate let fd: Int32
        fileprivate let path: String

        /// Appends `bytes`, looping on short writes.
        public func write(_ bytes: UnsafeRawBufferPointer) throws {
            try writeAll(fd, bytes, path: path)
        }

        /// Appends `bytes`, looping on short writes.
        public func write(_ bytes: [UInt8]) throws {
            try bytes.withUnsafeBytes { try writeAll(fd, $0, path: path) }
        }
    }

    /// Atomically replaces `path` with whatever `body` writes through the handle, so large payloads can be streamed
    /// in chunks instead of being assembled in one buffer. An error thrown by `body` leaves `path` untouched.
    public static func write(to path: String, _ body: (Handle) throws -> Void) throws {
        let (directory, name) = try split(path)
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let tempPath = directory + "/." + name + ".tmp-\(getpid())-" + suffix
        // O_EXCL: never reuse (or follow a symlink planted at) an existing name.
        let fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw systemError(errno, "cannot create a temporary file in \(directory)", path: path) }
        var isOpen = true
        do {
            try body(Handle(fd: fd, path: path))
            guard retryingEINTR({ fsync(fd) }) == 0 else {
                throw systemError(errno, "cannot fsync the temporary file", path: path)
            }
            isOpen = false
            // close can report deferred write errors (e.g. on network file systems), so its result matters.
            guard close(fd) == 0 else { throw systemError(errno, "cannot close the temporary file", path: path) }
            guard rename(tempPath, path) == 0 else {
                throw systemError(errno, "cannot rename the temporary file into place", path: path)
            }
        } catch {
            if isOpen { close(fd) }
            unlink(tempPath)
            throw error
        }
        try syncDirectory(directory, path: path)
    }

    /// Atomically replaces `path` with `bytes`.
    public static func write(_ bytes: UnsafeRawBufferPointer, to path: String) throws {
        try write(to: path) { try $0.write(bytes) }
    }

    /// Atomically replaces `path` with `bytes`.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path) { try $0.write(bytes) }
    }

    /// Atomically replaces `path` with `data`.
    public static func write(_ data: Data, to path: String) throws {
        try write(to: path) { handle in try data.withUnsafeBytes { try handle.write($0) } }
    }

    /// Atomically replaces `path` with the UTF-8 encoding of `text`.
    public static func writeText(_ text: String, to path: String) throws {
        try write(Array(text.utf8), to: path)
    }

    /// Splits a file path into its directory ("." when there is none) and its last component.
    private static func split(_ path: String) throws -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else {
            guard !path.isEmpty else { throw MambaKitError(.io, "empty file path", at: nil) }
            return (".", path)
        }
        let name = String(path[path.index(after: slash)...])
        guard !name.isEmpty else { throw MambaKitError(.io, "path names a directory, not a file", at: path) }
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        return (directory, name)
    }

    /// Makes the rename durable by syncing the directory entry.
    private static func syncDirectory(_ directory: String, path: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw systemError(errno, "cannot open directory \(directory) to fsync it", path: path) }
        defer { close(fd) }
        // Some file systems cannot sync directories and say so with EINVAL; the rename has still happened.
        guard retryingEINTR({ fsync(fd) }) == 0 || errno == EINVAL else {
            throw systemError(errno, "cannot fsync directory \(directory)", path: path)
        }
    }
}

/// Writes all of `bytes` to `fd`, resuming after short writes and EINTR.
private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
    guard var next = bytes.baseAddress else { return }
    var remaining = bytes.count
    while remaining > 0 {
        // Linux transfers at most ~2 GiB per call; asking for less keeps the count well inside ssize_t everywhere.
        let n = write(fd, next, min(remaining, 1 << 30))
        if n < 0 {
            if errno == EINTR { continue }
            throw AtomicFile.systemError(errno, "cannot write the temporary file", path: path)
        }
        guard n > 0 else { throw MambaKitError(.io, "cannot write the temporary file: no progress", at: path) }
        next += n
        remaining -= n
    }
}

/// Repeats a system call while it fails with EINTR.
private func retryingEINTR(_ call: () -> Int32) -> Int32 {
    while true {
        let result = call()
        if result != -1 || errno != EINTR { return result }
    }
}

extension AtomicFile {
    /// An I/O error naming `what` failed and the OS's reason (`code` is the `errno` of the failed call; pass it
    /// first so it is read before anything else can overwrite it).
    static func systemError(_ code: Int32, _ what: String, path: String) -> MambaKitError {
        MambaKitError(.io, "\(what): \(String(cString: strerror(code)))", at: path)
    }
}
