import Foundation

/// An exclusive lock on a run directory (`DIR/.lock`, `flock`), held while a process writes into it: two runs into
/// one `--out` would interleave checkpoints and metrics. The second one is refused with the first one's pid.
///
/// The kernel drops the lock when the process dies, however it dies, so a killed run never leaves a stale lock.
/// Within one process, locking a directory it already holds (a pipeline, then its trainer) shares the lock.
/// In a run over several processes (`ProcessGroup.world`), rank 0 alone writes the run directory and takes its
/// lock; on the other ranks a RunLock does nothing.
public final class RunLock {
    public let directory: String
    private let key: String

    nonisolated(unsafe) private static var held: [String: (fd: Int32, count: Int, created: Bool)] = [:]
    private static let mutex = NSLock()

    /// Creates `directory` if needed and takes its lock, or throws naming the process that holds it. A directory
    /// created here that holds nothing but the lock when the last holder lets go (a run that failed on its inputs)
    /// is removed again.
    public init(directory: String) throws {
        self.directory = directory
        guard ProcessGroup.world.isRoot else {
            key = ""
            return
        }
        var st = stat()
        let existed = lstat(directory, &st) == 0
        try ensureDirectory(directory)
        key = (directory as NSString).resolvingSymlinksInPath
        Self.mutex.lock()
        defer { Self.mutex.unlock() }
        if let h = Self.held[key] {
            Self.held[key] = (h.fd, h.count + 1, h.created)
            return
        }
        let path = directory + "/.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw AtomicFile.systemError(errno, "cannot create the run lock", path: path) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = read(fd, &buffer, buffer.count)
            close(fd)
            let pid = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            if code == EWOULDBLOCK {
                throw MambaKitError(.usage, "another mambakit process (pid \(pid)) is writing into this directory; wait for it or choose another output directory", at: directory)
            }
            throw AtomicFile.systemError(code, "cannot lock the run directory", path: path)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
        Self.held[key] = (fd, 1, !existed)
    }

    deinit {
        Self.mutex.lock()
        defer { Self.mutex.unlock() }
        guard let h = Self.held[key] else { return }
        if h.count > 1 {
            Self.held[key] = (h.fd, h.count - 1, h.created)
        } else {
            Self.held[key] = nil
            if h.created, (try? FileManager.default.contentsOfDirectory(atPath: directory)) == [".lock"] {
                unlink(directory + "/.lock")
                rmdir(directory)
            }
            flock(h.fd, LOCK_UN)
            close(h.fd)
        }
    }

    /// Removes what killed writers left in `dir` (not recursively): AtomicFile's `.NAME.tmp-PID-…` files and the
    /// trainer's `.step-N.tmp-PID` checkpoint directories. Call while holding the directory's lock (then no live
    /// writer can own them). Returns the names removed.
    @discardableResult
    public static func removeStaleTemporaries(in dir: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        var removed: [String] = []
        for n in names where n.hasPrefix(".") && n.contains(".tmp-") {
            if (try? FileManager.default.removeItem(atPath: dir + "/" + n)) != nil { removed.append(n) }
        }
        return removed.sorted()
    }
}
