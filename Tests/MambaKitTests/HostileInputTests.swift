import Foundation
import MambaKit
import Testing

/// The built binary on inputs a careless or hostile user gives it. Each bad case must end with a non-zero exit (not
/// a signal), an `error:` line naming the flag or file, nothing on stdout, no output files left as if whole, within
/// the time limit and under a 3 GB address-space limit. The good cases (CRLF, a byte-order mark, …) must keep working.
@Suite(.serialized) struct HostileInputTests {
    /// Address-space limit for every run (`ulimit -v`, KiB): far below this machine's memory, far above what the
    /// tiny runs here need.
    static let memoryLimitKB = 3_000_000

    struct Outcome {
        let status: Int32
        let signalled: Bool
        let stdout: Data
        let stderr: String
        let seconds: Double
    }

    /// Runs the binary with `args` (or, `viaShell`, `/bin/sh` with `args` as its arguments: `-c SCRIPT …`).
    static func run(_ args: [String], seconds: Double = 60, stdin: String? = nil, viaShell: Bool = false) throws -> Outcome {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        // `exec` so that the signal, if any, is the binary's own.
        p.arguments = viaShell ? ["-c", "ulimit -v \(memoryLimitKB); exec /bin/sh \"$@\"", "sh"] + args
            : ["-c", "ulimit -v \(memoryLimitKB); exec \"$0\" \"$@\"", CLI.binary] + args
        p.currentDirectoryURL = URL(fileURLWithPath: CLI.root)
        p.environment = testProcessEnvironment
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = stdin == nil ? FileHandle.nullDevice : Pipe()
        let t0 = Date()
        try p.run()
        killAfter(p, seconds: seconds)
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, signalled: p.terminationReason == .uncaughtSignal, stdout: outData,
                       stderr: String(decoding: errBox.data, as: UTF8.self), seconds: Date().timeIntervalSince(t0))
    }

    /// Runs a case that must fail cleanly, with an error naming `names` (each must appear in the error line).
    static func expectRefused(_ args: [String], naming names: [String], sourceLocation: SourceLocation = #_sourceLocation)
        throws {
        let r = try run(args)
        let line = r.stderr.split(separator: "\n").last(where: { $0.hasPrefix("error: ") }).map(String.init) ?? ""
        #expect(!r.signalled, "\(args): killed by a signal (status \(r.status)); stderr: \(r.stderr.suffix(600))",
                sourceLocation: sourceLocation)
        #expect(r.status != 0, "\(args): exit 0", sourceLocation: sourceLocation)
        #expect(!line.isEmpty, "\(args): no 'error:' line; stderr: \(r.stderr.suffix(600))", sourceLocation: sourceLocation)
        for n in names { #expect(line.contains(n), "\(args): error does not name \(n): \(line)", sourceLocation: sourceLocation) }
        #expect(r.stdout.isEmpty, "\(args): wrote to stdout", sourceLocation: sourceLocation)
        #expect(r.seconds < 60, "\(args): took \(r.seconds) s", sourceLocation: sourceLocation)
    }

    static let data = ["--data", "samples/text/ruth.txt"]

    // MARK: Flags and pipeline values

    @Test func flagsOutOfRange() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let cases: [([String], String)] = [
            (["--log-every", "0"], "--log-every"),
            (["--steps", "0"], "--steps"),
            (["--seq-len", "100000000000"], "--seq-len"),
            (["--batch-size", "0"], "--batch-size"),
            (["--threads", "0"], "--threads"),
            (["--weight-decay", "inf"], "--weight-decay"),
            (["--lr", "nan"], "--lr"),
            (["--lr", "0"], "--lr"),
            (["--grad-clip=-1"], "--grad-clip"),
            (["--val-fraction", "1"], "--val-fraction"),
            (["--val-fraction", "nan"], "--val-fraction"),
            (["--eval-every=-1"], "--eval-every"),
            (["--checkpoint-every", "2000000000"], "--checkpoint-every"),
            (["--seed=-3"], "--seed"),
            (["--expand", "1e300"], "intermediate_size"),
            (["--d-model", "0"], "--d-model"),
        ]
        for (flags, name) in cases {
            try Self.expectRefused(["train"] + Self.data + ["--out", out] + flags, naming: [name])
            #expect(!FileManager.default.fileExists(atPath: out + "/model.safetensors"), "\(flags): wrote a model")
        }
        for (flags, name) in [(["--top-p", "0"], "--top-p"), (["--temperature=-1"], "--temperature"),
                              (["--max-new-tokens", "99999999999"], "--max-new-tokens"), (["--seconds", "inf"], "--seconds")] {
            try Self.expectRefused(["generate", "--model", out] + flags, naming: [name])
        }
        try Self.expectRefused(["eval", "--model", out, "--data", "samples/text/ruth.txt", "--chunk", "0"], naming: ["--chunk"])
    }

    @Test func memoryThatCannotFitIsRefusedBeforeAllocating() throws {
        let tmp = TempDir()
        try Self.expectRefused(["train"] + Self.data + ["--out", tmp.file("a"), "--seq-len", "16000000", "--batch-size", "60000"],
                               naming: ["--batch-size", "memory"])
        try Self.expectRefused(["train"] + Self.data + ["--out", tmp.file("b"), "--d-model", "8192", "--layers", "64"],
                               naming: ["--d-model", "memory"])
    }

    @Test func pipelineValuesOutOfRange() throws {
        let tmp = TempDir()
        let cases: [(String, String)] = [
            ("train: { log_every: 0 }", "train.log_every"),
            ("train: { lr: .nan }", "train.lr"),
            ("train: { seed: -1 }", "train.seed"),
            ("train: { batch_size: 100000000 }", "train.batch_size"),
            ("generate: { top_p: 2 }", "generate.top_p"),
            ("generate: { seconds: -1 }", "generate.seconds"),
            ("threads: 0", "threads"),
            ("data: { train: samples/text/ruth.txt, val_fraction: 1.5 }", "data.val_fraction"),
            ("train: { epochs: 2 }", "train.epochs applies to classification"),
        ]
        for (i, (body, name)) in cases.enumerated() {
            let path = tmp.file("p\(i).yaml")
            try "name: p\(i)\ntask: lm\n\(body)\n".write(toFile: path, atomically: false, encoding: .utf8)
            // Every key sits on line 3: the error names it.
            try Self.expectRefused(["run", path, "--runs-dir", tmp.file("runs")], naming: [name, path + ", line 3"])
            try Self.expectRefused(["train"] + Self.data + ["--out", tmp.file("o\(i)"), "--config", path],
                                   naming: [name, path + ", line 3"])
        }
        // Block style: a value of the wrong type, and an unknown key, each on its own line.
        let block = tmp.file("block.yaml")
        try "name: b\ntask: lm\ntrain:\n  steps: 2\n  seq_len: long\n".write(toFile: block, atomically: false, encoding: .utf8)
        try Self.expectRefused(["run", block, "--runs-dir", tmp.file("runs")], naming: ["'seq_len' must be an integer", block + ", line 5"])
        try "name: b\ntask: lm\ntrain:\n  steps: 2\n  lgo_every: 3\n".write(toFile: block, atomically: false, encoding: .utf8)
        try Self.expectRefused(["run", block, "--runs-dir", tmp.file("runs")], naming: ["unknown key 'lgo_every' in train", block + ", line 5"])
    }

    @Test func corruptTrainerStateIsRefusedOnResume() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let tiny = ["--d-model", "16", "--layers", "1", "--d-state", "4", "--batch-size", "1", "--seq-len", "32",
                    "--steps", "2", "--threads", "1"]
        let ok = try CLI.run(["train"] + Self.data + ["--out", out] + tiny)
        try #require(ok.status == 0, "training failed: \(ok.stderr)")
        let state = out + "/checkpoints/step-00000002/trainer_state.json"
        let original = try String(contentsOfFile: state, encoding: .utf8)
        let edits: [(String, String, String)] = [
            ("\"step\" : 2", "\"step\" : -5", "step"),
            ("\"step\" : 2", "\"step\" : 1e300", "step"),
            ("\"log_every\" : 10", "\"log_every\" : 0", "options.log_every"),
            ("\"lr\" : 0.002", "\"lr\" : \"fast\"", "lr"),
        ]
        for (from, to, name) in edits {
            try #require(original.contains(from), "trainer_state.json has no \(from)")
            try original.replacingOccurrences(of: from, with: to).write(toFile: state, atomically: false, encoding: .utf8)
            try Self.expectRefused(["train"] + Self.data + ["--out", out, "--resume", "--steps", "4"],
                                   naming: [name, "trainer_state.json"])
        }
        try "{ not json".write(toFile: state, atomically: false, encoding: .utf8)
        try Self.expectRefused(["train"] + Self.data + ["--out", out, "--resume", "--steps", "4"], naming: ["trainer_state.json"])
    }

    // MARK: Files that are not regular files, directory cycles

    @Test func nonRegularFilesAndCycles() throws {
        let tmp = TempDir()
        let fifo = tmp.file("fifo")
        try #require(mkfifo(fifo, 0o600) == 0)
        try FileManager.default.createDirectory(atPath: tmp.file("loop/a"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: tmp.file("loop/a/up"), withDestinationPath: "..")
        try FileManager.default.createSymbolicLink(atPath: tmp.file("zero.txt"), withDestinationPath: "/dev/zero")
        let out = tmp.file("run")
        for data in ["/dev/zero", fifo, tmp.file("zero.txt")] {
            try Self.expectRefused(["train", "--data", data, "--out", out, "--steps", "2"], naming: [data, "regular file"])
            try Self.expectRefused(["train", "--format", "fasta", "--data", data, "--out", out, "--steps", "2"], naming: [data])
        }
        try Self.expectRefused(["train", "--format", "audio", "--data", tmp.file("loop"), "--out", out, "--steps", "2",
                                "--batch-size", "1", "--seq-len", "64"], naming: ["cycle"])
        // A model directory whose files are a FIFO and a device.
        let model = tmp.file("model")
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: model + "/config.json", withDestinationPath: fifo)
        try FileManager.default.createSymbolicLink(atPath: model + "/model.safetensors", withDestinationPath: "/dev/zero")
        try Self.expectRefused(["eval", "--model", model, "--data", "samples/text/ruth.txt"], naming: ["config.json"])
        try Self.expectRefused(["generate", "--model", try Self.tinyModel(tmp), "--prompt-file", fifo], naming: [fifo])
    }

    // MARK: Models

    /// A trained tiny byte model, for the cases that damage one.
    static func tinyModel(_ tmp: TempDir) throws -> String {
        let out = tmp.file("model")
        let r = try CLI.run(["train"] + data + ["--out", out, "--d-model", "16", "--layers", "1", "--d-state", "4",
                                                "--batch-size", "1", "--seq-len", "32", "--steps", "1", "--threads", "1"])
        try #require(r.status == 0, "training failed: \(r.stderr)")
        return out
    }

    @Test func damagedModelsAreRefused() throws {
        let tmp = TempDir()
        let dir = try Self.tinyModel(tmp)
        let weights = dir + "/model.safetensors", config = dir + "/config.json"
        let good = try MambaModel.load(directory: dir)
        let original = try Data(contentsOf: URL(fileURLWithPath: weights))
        let originalConfig = try String(contentsOfFile: config, encoding: .utf8)
        func restore() throws {
            try original.write(to: URL(fileURLWithPath: weights))
            try originalConfig.write(toFile: config, atomically: false, encoding: .utf8)
        }
        // A NaN in one tensor: refused at load, naming it.
        var tensors = good.weightTensors()
        let victim = tensors.firstIndex { $0.name.hasSuffix("in_proj.weight") }!
        var values = good.params.values(tensors[victim].name)
        values[3] = .nan
        tensors[victim] = SafeTensorOut(name: tensors[victim].name, shape: tensors[victim].shape, floats: values)
        try SafeTensorsFile.write(tensors, to: weights)
        try Self.expectRefused(["eval", "--model", dir, "--data", "samples/text/ruth.txt"], naming: ["in_proj.weight", "nan"])
        try Self.expectRefused(["generate", "--model", dir, "--max-new-tokens", "4"], naming: ["in_proj.weight"])
        try restore()
        // A config whose sizes disagree with the tensors, or are absurd: refused before the weights are read.
        for (from, to, name) in [("\"hidden_size\": 16", "\"hidden_size\": 32", "shape"),
                                 ("\"hidden_size\": 16", "\"hidden_size\": 16000000", "config needs"),
                                 ("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 100000000", "num_hidden_layers")] {
            try #require(originalConfig.contains(from), "config.json has no \(from)")
            try originalConfig.replacingOccurrences(of: from, with: to).write(toFile: config, atomically: false, encoding: .utf8)
            try Self.expectRefused(["eval", "--model", dir, "--data", "samples/text/ruth.txt"], naming: [name])
            try Self.expectRefused(["inspect", "--model", dir], naming: [name])
        }
        try restore()
        // A truncated weights file.
        try original.prefix(original.count / 2).write(to: URL(fileURLWithPath: weights))
        try Self.expectRefused(["eval", "--model", dir, "--data", "samples/text/ruth.txt"], naming: ["model.safetensors"])
        try restore()
        let ok = try Self.run(["eval", "--model", dir, "--data", "samples/text/ruth.txt", "--json"])
        #expect(ok.status == 0, "the restored model does not evaluate: \(ok.stderr)")
    }

    // MARK: Careless use

    /// `classify train` on folders of WAV files without `--format audio` trains an audio classifier (it answered
    /// with a FASTA parse error); the kind comes from the files' first bytes.
    @Test func dataKindIsRecognisedFromTheFiles() throws {
        #expect(try DataKind.recognise("samples/audio/digits").kind == .audio)
        #expect(try DataKind.recognise("samples/dna/promoters").kind == .sequences)
        #expect(try DataKind.recognise("samples/text/ruth.txt").kind == nil)
        #expect(DataKind.kind(ofHead: Array("fLaC".utf8)) == .audio)
        #expect(DataKind.kind(ofHead: Array("RIFF\0\0\0\0WAVEfmt ".utf8)) == .audio)
        #expect(DataKind.kind(ofHead: Array("RIFF\0\0\0\0AVI LIST".utf8)) == nil)
        #expect(DataKind.kind(ofHead: Array("\r\n@read1".utf8)) == .sequences)
        let tmp = TempDir()
        let r = try CLI.run(["classify", "train", "--train", "samples/audio/digits", "--out", tmp.file("m"), "--steps", "2",
                             "--d-model", "16", "--layers", "1", "--batch-size", "2", "--seq-len", "256", "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("data: audio"))
        #expect(try MambaModel.load(directory: tmp.file("m")).config.mambakit["format"] as? String == "audio")
        // Text files are neither: the error says so and how to choose.
        try FileManager.default.createDirectory(atPath: tmp.file("text/a"), withIntermediateDirectories: true)
        try "hello".write(toFile: tmp.file("text/a/x.txt"), atomically: false, encoding: .utf8)
        try Self.expectRefused(["classify", "train", "--train", tmp.file("text"), "--out", tmp.file("t")], naming: ["--format"])
    }

    /// An empty folder named after a class the model does not know, in the data given to `classify eval`, trapped
    /// (a force unwrap of the folder's first file while naming it in the error).
    @Test func unknownEmptyClassFolderIsAnError() throws {
        let tmp = TempDir()
        let train = tmp.file("train")
        try FileManager.default.createDirectory(atPath: train, withIntermediateDirectories: true)
        try ">a1\nACGTACGTACGTAAAC\n>a2\nACGTTCGTACGTAAAC\n".write(toFile: train + "/a.fa", atomically: false, encoding: .utf8)
        try ">b1\nGGGCCCGGGCCCTTTA\n>b2\nGGGCCCGGGACCTTTA\n".write(toFile: train + "/b.fa", atomically: false, encoding: .utf8)
        let model = tmp.file("m")
        let r = try CLI.run(["classify", "train", "--train", train, "--out", model, "--steps", "2"] + Self.tinyRun)
        try #require(r.status == 0, "\(r.stderr)")
        let eval = tmp.file("eval")
        try FileManager.default.createDirectory(atPath: eval + "/zzz", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: train + "/a.fa", toPath: eval + "/a.fa")
        try Self.expectRefused(["classify", "eval", "--model", model, "--data", eval], naming: ["zzz"])
    }

    // MARK: Memory that must not grow with the input

    /// A 3 MB prompt (its logits alone were 3 GB) and an evaluation chunk of 16 M tokens run under a 1.5 GB
    /// address-space limit: prefill and evaluation work in chunks that fit, carrying the state.
    @Test func longPromptsAndHugeChunksStayBounded() throws {
        let tmp = TempDir()
        let model = try Self.tinyModel(tmp)
        var rng = RNG(seed: 5)
        let prompt = tmp.file("prompt.bin")
        try Data((0..<3_000_000).map { _ in UInt8(rng.int(below: 256)) }).write(to: URL(fileURLWithPath: prompt))
        func bounded(_ args: [String]) throws -> Outcome {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "ulimit -v 1500000; exec \"$0\" \"$@\"", CLI.binary] + args
            p.currentDirectoryURL = URL(fileURLWithPath: CLI.root)
            p.environment = testProcessEnvironment
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            killAfter(p, seconds: 120)
            let o = out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return Outcome(status: p.terminationStatus, signalled: p.terminationReason == .uncaughtSignal, stdout: o,
                           stderr: String(decoding: e, as: UTF8.self), seconds: 0)
        }
        let gen = try bounded(["generate", "--model", model, "--prompt-file", prompt, "--max-new-tokens", "3"])
        #expect(gen.status == 0 && !gen.signalled, "generate: \(gen.stderr.suffix(400))")
        #expect(gen.stdout.count == 3)
        let whole = try bounded(["eval", "--model", model, "--data", prompt, "--chunk", "16000000", "--json"])
        let small = try bounded(["eval", "--model", model, "--data", prompt, "--chunk", "4096", "--json"])
        #expect(whole.status == 0 && small.status == 0, "eval: \(whole.stderr.suffix(300)) \(small.stderr.suffix(300))")
        let a = try JSONSerialization.jsonObject(with: whole.stdout) as? [String: Any]
        let b = try JSONSerialization.jsonObject(with: small.stdout) as? [String: Any]
        let (la, lb) = ((a?["loss"] as? Double) ?? .nan, (b?["loss"] as? Double) ?? .nan)
        #expect(abs(la - lb) <= 1e-5 * abs(lb), "chunked evaluations disagree: \(la) vs \(lb)")
        #expect((a?["tokens"] as? Int) == 2_999_999)
    }

    /// A record over the reader's limit — many lines, one endless line, or a small gzip "bomb" that inflates to a
    /// long record — stops with an error naming the record or line once the limit is reached.
    @Test func sequenceRecordsAndLinesAreBounded() throws {
        let tmp = TempDir()
        let limit = 1 << 20
        func read(_ path: String) throws { let r = try SequenceReader(path: path, maxRecordLength: limit); while try r.next() != nil {} }
        func expectError(_ path: String, _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
            do { try read(path); Issue.record("\(path): no error", sourceLocation: sourceLocation) } catch let e as MambaKitError {
                for w in words { #expect(e.description.contains(w), "\(e)", sourceLocation: sourceLocation) }
            } catch { Issue.record("\(error)", sourceLocation: sourceLocation) }
        }
        let lines = String(repeating: String(repeating: "ACGT", count: 15) + "\n", count: 20_000)  // 1.2 Mbases
        try (">long\n" + lines + ">next\nACGT\n").write(toFile: tmp.file("many.fa"), atomically: false, encoding: .utf8)
        expectError(tmp.file("many.fa"), ["record 'long'", "longer than \(limit)"])
        try (">one\n" + String(repeating: "A", count: 3 << 20)).write(toFile: tmp.file("one.fa"), atomically: false, encoding: .utf8)
        expectError(tmp.file("one.fa"), ["line"])
        // 8 MB of one base compress to a few kB.
        try (">bomb\n" + String(repeating: String(repeating: "A", count: 60) + "\n", count: 140_000))
            .write(toFile: tmp.file("bomb.fa"), atomically: false, encoding: .utf8)
        let gz = Process()
        gz.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gz.arguments = ["-9", tmp.file("bomb.fa")]
        try gz.run()
        gz.waitUntilExit()
        try #require(gz.terminationStatus == 0)
        #expect(try FileInput.checkFile(tmp.file("bomb.fa.gz")) < 100_000)
        expectError(tmp.file("bomb.fa.gz"), ["record 'bomb'"])
        // Under the limit, the same reader reads them.
        try (">ok\n" + String(repeating: "ACGT\n", count: 1000)).write(toFile: tmp.file("ok.fa"), atomically: false, encoding: .utf8)
        try read(tmp.file("ok.fa"))
    }

    // MARK: Runs: locks, signals, killed writers, --overwrite, --resume

    static let tinyRun = ["--d-model", "16", "--layers", "1", "--d-state", "4", "--batch-size", "1", "--seq-len", "32",
                          "--threads", "1"]

    /// Starts a long training run in the background and waits until it has written a checkpoint.
    static func startLongRun(out: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["train"] + data + ["--out", out, "--steps", "100000", "--checkpoint-every", "5", "--log-every", "1000"]
            + tinyRun
        p.currentDirectoryURL = URL(fileURLWithPath: CLI.root)
        p.environment = testProcessEnvironment
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        killAfter(p, seconds: 120)
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: out + "/checkpoints/latest") && Date() < deadline && p.isRunning {
            usleep(50_000)
        }
        try #require(FileManager.default.fileExists(atPath: out + "/checkpoints/latest"), "the run wrote no checkpoint")
        return p
    }

    @Test func secondWriterIsRefusedAndSIGTERMCheckpoints() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let p = try Self.startLongRun(out: out)
        // A second run into the same directory is refused while the first holds it.
        try Self.expectRefused(["train"] + Self.data + ["--out", out, "--steps", "3", "--resume"] + Self.tinyRun,
                               naming: ["another mambakit process", "pid \(p.processIdentifier)"])
        // SIGTERM (timeout, Docker, Slurm) checkpoints and exits like Ctrl-C.
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        #expect(p.terminationReason == .exit && p.terminationStatus == 130, "SIGTERM: status \(p.terminationStatus)")
        let latest = try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let step = Int(latest.dropFirst("step-".count)) ?? 0
        #expect(step > 0)
        let again = try CLI.run(["train"] + Self.data + ["--out", out, "--resume", "--steps", "\(step + 2)"] + Self.tinyRun)
        #expect(again.status == 0, "resume after SIGTERM failed: \(again.stderr)")
    }

    @Test func sigkillLeavesAResumableRunAndItsTemporariesAreCleaned() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let p = try Self.startLongRun(out: out)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        // What a writer killed mid-save leaves behind.
        let staleDir = out + "/checkpoints/.step-99999999.tmp-4242"
        try FileManager.default.createDirectory(atPath: staleDir, withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: out + "/.model.safetensors.tmp-4242-x"))
        let latest = try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let step = Int(latest.dropFirst("step-".count)) ?? 0
        let r = try CLI.run(["train"] + Self.data + ["--out", out, "--resume", "--steps", "\(step + 3)"] + Self.tinyRun)
        #expect(r.status == 0, "resume after SIGKILL failed: \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: staleDir), "stale checkpoint temporary left")
        #expect(!FileManager.default.fileExists(atPath: out + "/.model.safetensors.tmp-4242-x"), "stale temporary left")
        #expect(try MambaModel.load(directory: out).config.hiddenSize == 16)
    }

    @Test func resumeWithAnotherFormatIsRefused() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let ok = try CLI.run(["train"] + Self.data + ["--out", out, "--steps", "2"] + Self.tinyRun)
        try #require(ok.status == 0, "\(ok.stderr)")
        try Self.expectRefused(["train", "--format", "fasta", "--data", "samples/dna/promoters", "--out", out, "--resume",
                                "--steps", "4"] + Self.tinyRun, naming: ["--format bytes"])
    }

    @Test func overwriteKeepsTheOldRunUntilTheNewOneStarts() throws {
        let tmp = TempDir()
        let pipeline = tmp.file("p.yaml")
        let body = """
            name: tinyrun
            data: { format: bytes, train: [DATA], val_fraction: 0.05 }
            model: { d_model: 16, layers: 1, d_state: 4 }
            train: { steps: 2, batch_size: 1, seq_len: 32 }
            generate: { max_new_tokens: 4 }
            """
        try body.replacingOccurrences(of: "DATA", with: "samples/text/ruth.txt").write(toFile: pipeline, atomically: false, encoding: .utf8)
        let runs = tmp.file("runs")
        let first = try CLI.run(["run", pipeline, "--runs-dir", runs, "--threads", "1"])
        try #require(first.status == 0, "\(first.stderr)")
        let summary = try Data(contentsOf: URL(fileURLWithPath: runs + "/tinyrun/summary.json"))
        // A new run whose data is missing fails before training: the old run is put back whole.
        try body.replacingOccurrences(of: "DATA", with: "samples/text/missing.txt").write(toFile: pipeline, atomically: false, encoding: .utf8)
        try Self.expectRefused(["run", pipeline, "--runs-dir", runs, "--overwrite"], naming: ["missing.txt"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: runs + "/tinyrun/summary.json")) == summary)
        #expect(try FileManager.default.contentsOfDirectory(atPath: runs) == ["tinyrun"])
        // One that starts replaces it.
        try body.replacingOccurrences(of: "DATA", with: "samples/text/genesis.txt").write(toFile: pipeline, atomically: false, encoding: .utf8)
        let second = try CLI.run(["run", pipeline, "--runs-dir", runs, "--overwrite", "--threads", "1"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: runs) == ["tinyrun"])
    }
}

/// `Workspace.estimatedBytes`, which decides whether a run may start, against what a workspace really holds after a
/// training step (and at inference), for each block kind and lengths that are and are not chunk multiples.
@Suite struct WorkspaceEstimateTests {
    @Test(arguments: ["m", "M", "M*-", "*"])
    func estimateCoversTheWorkspace(pattern: String) throws {
        var spec = ModelSpec()
        spec.dModel = 32; spec.pattern = pattern; spec.dState = 8; spec.headDim = 16; spec.chunkSize = 16
        spec.attnHeadDim = 16; spec.mlpWidth = 64
        let config = try spec.config(vocabSize: 256)
        let model = try MambaModel(config: config, seed: 1)
        for (B, L) in [(1, 40), (3, 64), (2, 333)] {
            for training in [true, false] {
                let ws = Workspace(config: config, B: B, L: L, training: training)
                let ids = (0..<(B * L)).map { Int32($0 % 256) }
                ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws) }
                if training {
                    ids.withUnsafeBufferPointer { i in _ = model.backward(ids: i.baseAddress!, targets: i.baseAddress!, ws: ws) }
                }
                let est = Workspace.estimatedBytes(config: config, B: B, L: L, training: training)
                let actual = ws.bytes
                #expect(est >= actual, "\(pattern) B\(B) L\(L) training \(training): estimate \(est) < actual \(actual)")
                #expect(Double(est) <= 1.6 * Double(actual), "\(pattern) B\(B) L\(L) training \(training): estimate \(est) vs actual \(actual)")
            }
        }
        // Absurd sizes saturate instead of trapping.
        #expect(Workspace.estimatedBytes(config: config, B: Int.max / 2, L: 1 << 40, training: true) == Int.max)
    }
}

extension HostileInputTests {
    /// A run that fails on its inputs leaves no output directory it created (nothing but a lock file would be in
    /// it); a directory that was there before stays.
    @Test func failedRunLeavesNoEmptyOutputDirectory() throws {
        let tmp = TempDir()
        try FileManager.default.createDirectory(atPath: tmp.file("d"), withIntermediateDirectories: true)
        try ">a\nACGT\n".write(toFile: tmp.file("d/x.fa"), atomically: false, encoding: .utf8)
        try "not fasta\n".write(toFile: tmp.file("d/y.fa"), atomically: false, encoding: .utf8)
        for args in [["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("new")],
                     ["train", "--data", tmp.file("d/y.fa"), "--format", "fasta", "--out", tmp.file("new")]] {
            try Self.expectRefused(args + Self.tinyRun, naming: ["y.fa"])
            #expect(!FileManager.default.fileExists(atPath: tmp.file("new")), "\(args)")
        }
        try FileManager.default.createDirectory(atPath: tmp.file("old"), withIntermediateDirectories: true)
        try Self.expectRefused(["classify", "train", "--train", tmp.file("d"), "--out", tmp.file("old")] + Self.tinyRun,
                               naming: ["y.fa"])
        #expect(FileManager.default.fileExists(atPath: tmp.file("old")))
    }
}

extension HostileInputTests {
    @Test func resumeWithOtherTokenizerFlagsIsRefused() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let dna = ["train", "--format", "fasta", "--data", "samples/dna/origin/lambda_phage.fa.gz", "--out", out]
        let ok = try CLI.run(dna + ["--steps", "2", "--vocabulary", "nucleotide", "--case", "upper"] + Self.tinyRun)
        try #require(ok.status == 0, "\(ok.stderr)")
        try Self.expectRefused(dna + ["--resume", "--steps", "4", "--vocabulary", "bytes"] + Self.tinyRun,
                               naming: ["--vocabulary nucleotide", "keeps its tokenizer", out])
        try Self.expectRefused(dna + ["--resume", "--steps", "4", "--case", "keep"] + Self.tinyRun, naming: ["--case upper"])
        // The same values, or none, resume.
        let same = try CLI.run(dna + ["--resume", "--steps", "3", "--case", "upper"] + Self.tinyRun)
        #expect(same.status == 0, "\(same.stderr)")
        let none = try CLI.run(dna + ["--resume", "--steps", "4"] + Self.tinyRun)
        #expect(none.status == 0, "\(none.stderr)")
    }

    /// `-` reads standard input where a command takes a stream: FASTA for classify predict (plain or gzip), a prompt
    /// for generate. Nothing else reads a pipe.
    @Test func dashReadsStandardInput() throws {
        let tmp = TempDir()
        let d = tmp.file("d")
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try ">a1\nAAAATTTTAAAA\n>a2\nATATATATAT\n".write(toFile: d + "/at.fa", atomically: false, encoding: .utf8)
        try ">g1\nGGGGCCCCGGGG\n>g2\nGCGCGCGCGC\n".write(toFile: d + "/gc.fa", atomically: false, encoding: .utf8)
        let model = tmp.file("clf")
        let t = try CLI.run(["classify", "train", "--train", d, "--val", d, "--out", model, "--steps", "2"] + Self.tinyRun)
        try #require(t.status == 0, "\(t.stderr)")
        func piped(_ file: String, _ args: [String]) throws -> HostileInputTests.Outcome {
            try Self.run(["-c", "exec \"$0\" \"$@\" < '\(file)'", CLI.binary] + args, viaShell: true)
        }
        let direct = try CLI.run(["classify", "predict", "--model", model, "--input", d + "/at.fa"])
        try #require(direct.status == 0, "\(direct.stderr)")
        let p = try piped(d + "/at.fa", ["classify", "predict", "--model", model, "--input", "-"])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(p.stdout == direct.stdout)
        let gz = try piped("samples/dna/bgzf/genes.fasta.gz", ["classify", "predict", "--model", model, "--input", "-"])
        #expect(gz.status == 0, "\(gz.stderr)")
        #expect(String(decoding: gz.stdout, as: UTF8.self).split(separator: "\n").count == 21, "header and 20 records")
        // Bad FASTA on standard input is named as such.
        try "hello\n".write(toFile: tmp.file("bad"), atomically: false, encoding: .utf8)
        let bad = try piped(tmp.file("bad"), ["classify", "predict", "--model", model, "--input", "-"])
        #expect(bad.status != 0 && bad.stderr.contains("standard input, line 1"), "\(bad.stderr)")
        #expect(bad.stdout.isEmpty)
        // A prompt from standard input.
        let lm = tmp.file("lm")
        let l = try CLI.run(["train"] + Self.data + ["--out", lm, "--steps", "1"] + Self.tinyRun)
        try #require(l.status == 0, "\(l.stderr)")
        try "In the beginning".write(toFile: tmp.file("prompt"), atomically: false, encoding: .utf8)
        let args = ["generate", "--model", lm, "--max-new-tokens", "8", "--temperature", "0"]
        let a = try CLI.run(args + ["--prompt-file", tmp.file("prompt")])
        let b = try piped(tmp.file("prompt"), args + ["--prompt-file", "-"])
        #expect(a.status == 0 && b.status == 0, "\(a.stderr) \(b.stderr)")
        #expect(b.stdout == a.stdout && !a.stdout.isEmpty)
    }
}
