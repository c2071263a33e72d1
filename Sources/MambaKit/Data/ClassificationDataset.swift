import Foundation

/// Labelled sequences for classification, read from FASTA/FASTQ (plain, gzip or BGZF) in one of two layouts
/// (DESIGN.md §5):
///
/// - a directory with one file per class, the class being the file name without `.gz`/`.bgz` and the sequence
///   extension (`.fa .fasta .fna .ffn .fas .fq .fastq`), or one subdirectory per class whose files all belong to it;
///   classes sorted by name;
/// - one sequence file plus a TSV of `id<TAB>label` lines (an optional `id<TAB>label` header), every record named
///   in it exactly once.
///
/// Every record is one example; its tokens come from the `DNATokenizer`, whose errors name the file and record.
public struct ClassificationDataset: Sendable {
    public let classes: [String]
    public var examples: [LabeledSequence]
    /// Files and sizes, to recognise the same data on resume.
    public var fingerprint: [String]

    public init(classes: [String], examples: [LabeledSequence], fingerprint: [String] = []) {
        self.classes = classes
        self.examples = examples
        self.fingerprint = fingerprint
    }

    static let sequenceExtensions = ["fa", "fasta", "fna", "ffn", "fas", "fq", "fastq"]

    /// The class name of a file: its name without a compression and a sequence extension.
    public static func className(ofFile name: String) -> String {
        var n = name
        for ext in [".gz", ".bgz", ".bgzf"] where n.lowercased().hasSuffix(ext) { n.removeLast(ext.count); break }
        for ext in sequenceExtensions where n.lowercased().hasSuffix("." + ext) { n.removeLast(ext.count + 1); break }
        return n
    }

    /// Reads every record of `path` through `body(record, index)`.
    static func forEachRecord(_ path: String, _ body: (SequenceRecord, Int) throws -> Void) throws {
        let reader = try SequenceReader(path: path)
        var i = 0
        while let r = try reader.next() {
            i += 1
            try body(r, i)
        }
    }

    static func tokens(_ r: SequenceRecord, index: Int, path: String, tokenizer: DNATokenizer) throws -> [Int32] {
        guard !r.sequence.isEmpty else {
            throw MambaKitError(.format, "record '\(r.name)' has no sequence", at: "\(path), record \(index)")
        }
        return try tokenizer.encode(r.sequence, location: "\(path), record \(index) '\(r.name)'")
    }

    /// Loads the directory layout. With `classes`, the files must name classes of that list (a trained model's);
    /// otherwise the classes are the sorted names found.
    public static func load(directory dir: String, tokenizer: DNATokenizer, classes known: [String]? = nil) throws
        -> ClassificationDataset
    {
        try requireDirectory(dir)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { !$0.hasPrefix(".") }.sorted()
        var byClass: [String: [String]] = [:]
        for n in names {
            let full = dir + "/" + n
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: full, isDirectory: &isDir)
            if isDir.boolValue {
                let files = try FileManager.default.contentsOfDirectory(atPath: full).filter { !$0.hasPrefix(".") }
                    .sorted().map { full + "/" + $0 }
                byClass[n, default: []] += files
            } else {
                byClass[className(ofFile: n), default: []].append(full)
            }
        }
        let found = byClass.keys.sorted()
        guard !found.isEmpty else { throw MambaKitError(.usage, "no sequence files (one per class expected)", at: dir) }
        let classes: [String]
        if let known {
            for c in found where !known.contains(c) {
                throw MambaKitError(.usage, "class '\(c)' is not one the model knows (\(known.joined(separator: ", ")))",
                                    at: byClass[c]?.first ?? dir + "/" + c)
            }
            classes = known
        } else {
            guard found.count >= 2 else {
                throw MambaKitError(.usage, "found only the class '\(found[0])': a classifier needs at least two (one file or folder per class)", at: dir)
            }
            classes = found
        }
        var examples: [LabeledSequence] = []
        var fingerprint: [String] = []
        for c in found {
            let label = classes.firstIndex(of: c)!
            for path in byClass[c]! {
                try forEachRecord(path) { r, i in
                    examples.append(LabeledSequence(id: r.name, tokens: try tokens(r, index: i, path: path, tokenizer: tokenizer),
                                                    label: label))
                }
                fingerprint.append("\(path):\(fileSize(path))")
            }
        }
        return ClassificationDataset(classes: classes, examples: examples, fingerprint: fingerprint)
    }

    /// Loads one sequence file labelled by a TSV (`id<TAB>label`).
    public static func load(sequences path: String, labels tsv: String, tokenizer: DNATokenizer,
                            classes known: [String]? = nil) throws -> ClassificationDataset {
        let text = try FileInput.readBytes(tsv)
        guard let s = String(bytes: text, encoding: .utf8) else {
            throw MambaKitError(.format, "labels file is not UTF-8 text", at: tsv)
        }
        var labelOf: [String: String] = [:]
        // "\r\n" is one Character, so splitting on "\n" alone would leave a CRLF file as a single line.
        let lines = s.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (n, raw) in lines.enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.isEmpty || line.hasPrefix("#") { continue }
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard cols.count == 2, !cols[0].isEmpty, !cols[1].isEmpty else {
                throw MambaKitError(.format, "expected 'id<TAB>label'", at: "\(tsv), line \(n + 1)")
            }
            if n == 0 && cols[0] == "id" && cols[1] == "label" { continue }
            guard labelOf[cols[0]] == nil else {
                throw MambaKitError(.format, "id '\(cols[0])' is labelled twice", at: "\(tsv), line \(n + 1)")
            }
            labelOf[cols[0]] = cols[1]
        }
        let found = Set(labelOf.values).sorted()
        let classes = known ?? found
        if known == nil && classes.count < 2 {
            throw MambaKitError(.usage, "the labels name \(classes.count) class(es): a classifier needs at least two", at: tsv)
        }
        var examples: [LabeledSequence] = []
        var seen = Set<String>()
        try forEachRecord(path) { r, i in
            let at = "\(path), record \(i)"
            guard let name = labelOf[r.name] else {
                throw MambaKitError(.usage, "record '\(r.name)' has no label in \(tsv)", at: at)
            }
            guard let label = classes.firstIndex(of: name) else {
                throw MambaKitError(.usage, "label '\(name)' is not a class the model knows (\(classes.joined(separator: ", ")))", at: at)
            }
            guard seen.insert(r.name).inserted else {
                throw MambaKitError(.format, "record name '\(r.name)' occurs twice (labels go by name)", at: at)
            }
            examples.append(LabeledSequence(id: r.name, tokens: try tokens(r, index: i, path: path, tokenizer: tokenizer),
                                            label: label))
        }
        if let missing = labelOf.keys.sorted().first(where: { !seen.contains($0) }) {
            throw MambaKitError(.usage, "'\(missing)' is labelled in \(tsv) but is not a record of the sequence file", at: path)
        }
        return ClassificationDataset(classes: classes, examples: examples,
                                     fingerprint: ["\(path):\(fileSize(path))", "\(tsv):\(text.count)"])
    }

    /// Either layout for DNA (a directory, or a sequence file with `labels`); for audio, a directory with one folder
    /// of audio files per class.
    public static func load(_ path: String, labels: String?, tokenizer model: ModelTokenizer, classes: [String]? = nil)
        throws -> ClassificationDataset
    {
        let tokenizer: DNATokenizer
        switch model {
        case let .audio(t):
            if labels != nil { throw MambaKitError(.usage, "--labels is for a sequence file; audio data is one folder per class", at: path) }
            return try loadAudio(directory: path, tokenizer: t, classes: classes)
        case let .dna(t): tokenizer = t
        case .bytes: tokenizer = DNATokenizer()
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MambaKitError(.io, "no such file or directory", at: path)
        }
        if isDir.boolValue {
            if labels != nil { throw MambaKitError(.usage, "--labels goes with a sequence file, not a directory", at: path) }
            return try load(directory: path, tokenizer: tokenizer, classes: classes)
        }
        guard let labels else {
            throw MambaKitError(.usage, "a sequence file needs --labels (a TSV of id and label); or give a directory with one file per class", at: path)
        }
        return try load(sequences: path, labels: labels, tokenizer: tokenizer, classes: classes)
    }

    /// Examples per class.
    public var classCounts: [Int] {
        var n = [Int](repeating: 0, count: classes.count)
        for e in examples { n[e.label] += 1 }
        return n
    }

    /// A seeded stratified split: `fraction` of each class (at least one example of every class that has two or more)
    /// goes to the second part.
    public func stratifiedSplit(fraction: Double, seed: UInt64) -> (train: ClassificationDataset, held: ClassificationDataset) {
        var rng = RNG(seed: seed ^ 0x5EED_5B17)
        var train: [LabeledSequence] = [], held: [LabeledSequence] = []
        for k in 0..<classes.count {
            var idx = examples.indices.filter { examples[$0].label == k }
            for i in stride(from: idx.count - 1, to: 0, by: -1) { idx.swapAt(i, rng.int(below: i + 1)) }
            var h = Int((Double(idx.count) * fraction).rounded())
            if fraction > 0 && idx.count >= 2 { h = min(max(h, 1), idx.count - 1) }
            held += idx.prefix(h).map { examples[$0] }
            train += idx.dropFirst(h).map { examples[$0] }
        }
        return (ClassificationDataset(classes: classes, examples: train, fingerprint: fingerprint),
                ClassificationDataset(classes: classes, examples: held, fingerprint: fingerprint))
    }
}

func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? -1
}

// MARK: - Audio

extension ClassificationDataset {
    static let audioExtensions: Set<String> = ["wav", "wave", "flac", "ogg", "oga", "opus", "aif", "aiff", "aifc", "au",
                                               "snd", "caf", "w64", "rf64", "mp3"]

    /// `path` itself if it is a file, else the audio files of the folder `path` (sorted, by extension).
    public static func audioFiles(_ path: String) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MambaKitError(.io, "no such file or directory", at: path)
        }
        guard isDir.boolValue else { return [path] }
        let files = try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted()
            .filter { audioExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
        guard !files.isEmpty else { throw MambaKitError(.usage, "no audio files (\(audioExtensions.sorted().joined(separator: ", ")))", at: path) }
        return files.map { path + "/" + $0 }
    }

    /// The tokens of one audio file at the tokenizer's rate (mono, resampled).
    public static func audioTokens(_ path: String, tokenizer: AudioTokenizer) throws -> [Int32] {
        let x = try AudioFile.readMono(path, sampleRate: tokenizer.sampleRate)
        guard !x.isEmpty else { throw MambaKitError(.format, "the file holds no samples", at: path) }
        return tokenizer.encode(x)
    }

    /// One folder of audio files per class (class = folder name, sorted); every file is one example.
    /// The audio files of one-folder-per-class `dir`, each with its class index, without reading them.
    public static func audioFiles(directory dir: String, classes known: [String]? = nil) throws
        -> (classes: [String], files: [(path: String, label: Int)])
    {
        try requireDirectory(dir)
        let folders = try FileManager.default.contentsOfDirectory(atPath: dir).filter { !$0.hasPrefix(".") }.sorted()
            .filter { var d: ObjCBool = false; return FileManager.default.fileExists(atPath: dir + "/" + $0, isDirectory: &d) && d.boolValue }
        guard !folders.isEmpty else { throw MambaKitError(.usage, "no class folders (one folder of audio files per class expected)", at: dir) }
        let classes: [String]
        if let known {
            for c in folders where !known.contains(c) {
                throw MambaKitError(.usage, "class '\(c)' is not one the model knows (\(known.joined(separator: ", ")))", at: dir + "/" + c)
            }
            classes = known
        } else {
            guard folders.count >= 2 else {
                throw MambaKitError(.usage, "found only the class '\(folders[0])': a classifier needs at least two (one folder per class)", at: dir)
            }
            classes = folders
        }
        var files: [(path: String, label: Int)] = []
        for c in folders {
            guard let label = classes.firstIndex(of: c) else { continue }
            for path in try audioFiles(dir + "/" + c) { files.append((path, label)) }
        }
        return (classes, files)
    }

    public static func loadAudio(directory dir: String, tokenizer: AudioTokenizer, classes known: [String]? = nil) throws
        -> ClassificationDataset
    {
        let (classes, files) = try audioFiles(directory: dir, classes: known)
        var examples: [LabeledSequence] = []
        var fingerprint: [String] = []
        for (path, label) in files {
            examples.append(LabeledSequence(id: path, tokens: try audioTokens(path, tokenizer: tokenizer), label: label))
            fingerprint.append("\(path):\(fileSize(path))")
        }
        return ClassificationDataset(classes: classes, examples: examples, fingerprint: fingerprint)
    }
}

extension DNATokenizer {
    /// Token id → id of its reverse-complement partner (ids without a one-letter complement map to themselves).
    public var complementIDs: [Int32] {
        (0..<vocabSize).map { id in
            let b = decode([Int32(id)])
            guard b.count == 1, let back = try? encode(b, location: ""), back == [Int32(id)],
                  let c = try? encode([ReverseComplement.table[Int(b[0])]], location: ""), c.count == 1
            else { return Int32(id) }
            return c[0]
        }
    }
}
