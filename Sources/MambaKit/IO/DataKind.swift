import Foundation

/// What a dataset holds, recognised from the first bytes of its first file (DESIGN §5: `classify train` tells DNA
/// from audio by itself; `--format` overrides).
public enum DataKind: String, Sendable {
    /// FASTA or FASTQ, plain or gzipped (BGZF included).
    case sequences = "fasta"
    /// Anything libsndfile reads that we recognise by its magic: WAV (RIFF/RIFX/RF64), FLAC, Ogg, AIFF, AU.
    case audio

    /// The kind of `path` — a file, or a directory of class files or class folders — from its first regular,
    /// non-hidden file in sorted order (at most two levels down), or nil when that file's first bytes match neither.
    public static func recognise(_ path: String) throws -> (kind: DataKind?, file: String) {
        let file = try firstFile(path, depth: 0) ?? {
            throw MambaKitError(.usage, "no data files found", at: path)
        }()
        try FileInput.checkFile(file)
        let fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: file) }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 12)
        let n = max(0, pread(fd, &head, head.count, 0))
        return (kind(ofHead: Array(head[0..<n])), file)
    }

    /// The kind that `head`, a file's first bytes, announces.
    public static func kind(ofHead head: [UInt8]) -> DataKind? {
        func starts(_ s: String, at offset: Int = 0) -> Bool {
            let b = Array(s.utf8)
            return head.count >= offset + b.count && Array(head[offset..<(offset + b.count)]) == b
        }
        if (starts("RIFF") || starts("RIFX") || starts("RF64")) && starts("WAVE", at: 8) { return .audio }
        if starts("fLaC") || starts("OggS") || starts(".snd") || (starts("FORM") && (starts("AIFF", at: 8) || starts("AIFC", at: 8))) {
            return .audio
        }
        if head.count >= 2 && head[0] == 0x1F && head[1] == 0x8B { return .sequences }  // gzip, BGZF
        if let first = head.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }), first == UInt8(ascii: ">") || first == UInt8(ascii: "@") {
            return .sequences
        }
        return nil
    }

    private static func firstFile(_ path: String, depth: Int) throws -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw MambaKitError(.io, "cannot open: \(String(cString: strerror(errno)))", at: path)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return path }
        guard depth < 2 else { return nil }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        for n in names { if let f = try firstFile(path + "/" + n, depth: depth + 1) { return f } }
        return nil
    }
}
