import Foundation
import MambaKit
import Testing

/// The inputs with which the fuzzers (fuzz/, scripts/fuzz.sh, RELIABILITY.md) found a crash, a hang, a leak or a
/// runaway allocation, minimised and kept in `Fixtures/fuzz-regressions/<target>/`. Each goes through the API its
/// fuzz target calls and must parse or throw a `MambaKitError` naming the file, never trap or hang. Leaks are not
/// visible here: the fuzz build with LeakSanitizer is what checks those.
@Suite struct FuzzRegressionTests {
    static let root = Fixtures.path("fuzz-regressions")

    /// The FASTA the `labels` inputs label (the fuzz harness's own), and one the `fai` inputs index.
    static let labelsFasta = ">s1 first\nACGTACGTAA\n>s2\nGGGCCCAAAT\n>s3\nacgtnacgtn\n>s4\nTTTTT\n"
    static let indexedFasta = ">chr1 first record\n" + String(repeating: "ACGTACGTAC", count: 6) + "\nACGT\n>chr2\nAC\n"

    /// The API each fuzz target calls on its input file, as in fuzz/Sources/MambaKitFuzz/Targets.swift; `dir` holds
    /// the companion files above.
    static let targets: [String: (_ path: String, _ dir: TempDir) throws -> Void] = [
        "audio": { path, _ in _ = try AudioFile.readMono(path, sampleRate: 16000) },
        "config": { path, _ in _ = try ModelTokenizer(config: try MambaConfig.load(path: path), at: path) },
        "trainer-state": { path, _ in _ = try TrainerState(path: path) },
        "fasta": { path, _ in _ = try SequenceReader(path: path).readAll() },
        "fai": { path, dir in
            let index = try FastaIndex(contentsOf: path)
            let file = try IndexedSequenceFile(path: dir.file("indexed.fa"), index: index)
            for name in file.names { _ = try file.fetch(name) }
        },
        "gzi": { path, _ in _ = try BGZFIndex(contentsOf: path) },
        "pipeline": { path, _ in _ = try PipelineSpec.load(path: path) },
        "labels": { path, dir in
            _ = try ClassificationDataset.load(dir.file("labels.fa"), labels: path, tokenizer: .dna(DNATokenizer()))
        },
        "safetensors": { path, _ in
            let file = try SafeTensorsFile(path: path)
            for info in file.tensors {
                switch info.dtype {
                case .F16, .BF16, .F32, .F64: _ = try file.floats(info.name)
                default: _ = try file.int64s(info.name)
                }
            }
        },
    ]

    static func companionFiles() throws -> TempDir {
        let dir = TempDir()
        try labelsFasta.write(toFile: dir.file("labels.fa"), atomically: false, encoding: .utf8)
        try indexedFasta.write(toFile: dir.file("indexed.fa"), atomically: false, encoding: .utf8)
        return dir
    }

    /// The saved inputs of `target`, sorted.
    static func inputs(_ target: String) -> [String] {
        let dir = root + "/" + target
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { dir + "/" + $0 }
    }

    /// Every folder of saved inputs belongs to a target this suite knows, so no input is silently skipped.
    @Test func everyFolderHasItsAPI() throws {
        let folders = try FileManager.default.contentsOfDirectory(atPath: Self.root).filter { !$0.hasPrefix(".") }
        #expect(!folders.isEmpty)
        for folder in folders {
            #expect(Self.targets[folder] != nil, "no API for Fixtures/fuzz-regressions/\(folder)")
            #expect(!Self.inputs(folder).isEmpty, "Fixtures/fuzz-regressions/\(folder) is empty")
        }
    }

    @Test func everySavedInputParsesOrThrowsAMambaKitError() throws {
        let dir = try Self.companionFiles()
        for (target, api) in Self.targets.sorted(by: { $0.key < $1.key }) {
            for path in Self.inputs(target) {
                let name = "fuzz-regressions/\(target)/" + (path as NSString).lastPathComponent
                do {
                    try api(path, dir)
                } catch let error as MambaKitError {
                    #expect(error.location?.contains(path) == true || error.location?.contains(dir.path) == true,
                            "\(name): the error does not name the file: \(error)")
                } catch {
                    Issue.record("\(name): threw \(type(of: error)) (\(error)), not a MambaKitError")
                }
            }
        }
    }

    /// audio/flac-streaminfo-671M-frames.flac: 42 bytes of FLAC whose STREAMINFO announces 671 million frames;
    /// readMono sized its buffer from the header (2.7 GB) before decoding anything.
    @Test func audioFrameCountFromTheHeaderIsNotAllocatedUpFront() throws {
        let path = Self.root + "/audio/flac-streaminfo-671M-frames.flac"
        #expect(try AudioFile.info(path).frames > 600_000_000)
        let error = #expect(throws: MambaKitError.self) { _ = try AudioFile.readMono(path, sampleRate: 16000) }
        #expect(error?.message.contains("audio data ends early") == true, "\(String(describing: error))")
    }

    /// audio/wav-1hz.wav: a valid 1044-byte WAV at 1 Hz. Resampled to 16 kHz it made 16 million samples and took
    /// libsoxr 15 s (a 5 KB one passed the fuzzers' 30 s limit); file rates below `AudioFile.minSampleRate` are refused.
    @Test func audioSampleRateBelowTheMinimumIsRefused() throws {
        let path = Self.root + "/audio/wav-1hz.wav"
        let error = #expect(throws: MambaKitError.self) { _ = try AudioFile.readMono(path, sampleRate: 16000) }
        #expect(error?.kind == .format)
        #expect(error?.message.contains("sample rate of 1 Hz") == true, "\(String(describing: error))")
        #expect(error?.location == path)
    }

    /// fai/length-1e11.fai: an entry claiming 10^11 bases; fetch reserved that much before finding that the file is
    /// shorter.
    @Test func faiLengthBeyondTheFileIsAnErrorNotAnAllocation() throws {
        let dir = try Self.companionFiles()
        let index = try FastaIndex(contentsOf: Self.root + "/fai/length-1e11.fai")
        let file = try IndexedSequenceFile(path: dir.file("indexed.fa"), index: index)
        let error = #expect(throws: MambaKitError.self) { _ = try file.fetch("chr1") }
        #expect(error?.message.contains("the index does not match the file") == true, "\(String(describing: error))")
    }

    /// pipeline/billion-laughs.yaml: 314 bytes whose nested aliases expand to 10^8 nodes; loading never finished.
    @Test func pipelineAliasExpansionIsBounded() throws {
        let error = #expect(throws: MambaKitError.self) {
            _ = try PipelineSpec.load(path: Self.root + "/pipeline/billion-laughs.yaml")
        }
        #expect(error?.message.contains("expands to more than") == true, "\(String(describing: error))")
    }

    /// pipeline/mapping-key.yaml, sequence-key.yaml: a complex mapping key (`? layers: 2`, `? [a, b]`) trapped in Yams'
    /// conversion, which force-unwraps every key as a string; refused before the conversion, naming the line.
    @Test func pipelineComplexKeysAreRefused() throws {
        for name in ["mapping-key.yaml", "sequence-key.yaml"] {
            let path = Self.root + "/pipeline/" + name
            let error = #expect(throws: MambaKitError.self) { _ = try PipelineSpec.load(path: path) }
            #expect(error?.message.contains("a mapping key must be a plain scalar") == true, "\(String(describing: error))")
            #expect(error?.location == path + ", line 2", "\(String(describing: error))")
        }
    }

    /// pipeline/base60-overflow.yaml: the plain scalar `7:7:33:7:…`, a YAML 1.1 base-60 integer that overflows; Yams'
    /// conversion trapped on it (found by the second 10-minute pipeline run). Base-60 numbers and dates are not read
    /// as such (they stay strings, refused by the reader where a number is expected, with the line), and an explicit
    /// `!!int`, `!!float` base-60 or `!!timestamp` tag is refused before the conversion.
    @Test func pipelineBase60NumbersAreNotConverted() throws {
        let overflow = Self.root + "/pipeline/base60-overflow.yaml"
        let e1 = #expect(throws: MambaKitError.self) { _ = try PipelineSpec.load(path: overflow) }
        #expect(e1?.message.contains("expected a mapping at the top level") == true, "\(String(describing: e1))")
        let value = Self.root + "/pipeline/base60-value.yaml"
        let e2 = #expect(throws: MambaKitError.self) { _ = try PipelineSpec.load(path: value) }
        #expect(e2?.message == "'steps' must be an integer (got 1:30)" && e2?.location == value + ", line 4",
                "\(String(describing: e2))")
        let tagged = Self.root + "/pipeline/base60-tagged.yaml"
        let e3 = #expect(throws: MambaKitError.self) { _ = try PipelineSpec.load(path: tagged) }
        #expect(e3?.message.contains("base-60 numbers and dates are not pipeline values") == true && e3?.location == tagged + ", line 4",
                "\(String(describing: e3))")
    }

    /// pipeline/null-fragments.yaml: `data: { fragments: }` (a source key with no value) passed the one-source check,
    /// then a force unwrap of the missing `directories` trapped.
    @Test func pipelineNullDataSourceIsRefused() throws {
        let path = Self.root + "/pipeline/null-fragments.yaml"
        let error = #expect(throws: MambaKitError.self) { _ = try PipelineSpec.load(path: path) }
        #expect(error?.message.contains("exactly one of fragments, shuffled_control, directories") == true,
                "\(String(describing: error))")
    }

    /// labels/crlf.tsv (from the fuzz seeds, not a crash): a label TSV with CRLF lines read as one line, because
    /// "\r\n" is a single Character; it must give the same dataset as its LF twin.
    @Test func crlfLabelsReadLikeLF() throws {
        let dir = try Self.companionFiles()
        let crlf = Self.root + "/labels/crlf.tsv"
        let text = try String(contentsOfFile: crlf, encoding: .utf8)
        #expect(text.utf8.contains(0x0D))
        try text.replacingOccurrences(of: "\r\n", with: "\n").write(toFile: dir.file("lf.tsv"), atomically: false,
                                                                   encoding: .utf8)
        let tokenizer = ModelTokenizer.dna(DNATokenizer())
        let a = try ClassificationDataset.load(dir.file("labels.fa"), labels: crlf, tokenizer: tokenizer)
        let b = try ClassificationDataset.load(dir.file("labels.fa"), labels: dir.file("lf.tsv"), tokenizer: tokenizer)
        #expect(a.classes == ["x", "y"])
        #expect(a.classes == b.classes)
        #expect(a.examples.map(\.id) == b.examples.map(\.id))
        #expect(a.examples.map(\.label) == b.examples.map(\.label))
    }
}
