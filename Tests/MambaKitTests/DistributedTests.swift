import Foundation
import MambaKit
import Testing

/// `mpirun` on this host, as a user launches a data-parallel run: the built binary under Open MPI, several ranks on
/// localhost (root is allowed through Open MPI's two variables; ranks may outnumber cores and are not bound, since
/// other suites run beside these).
enum MPIRun {
    static let mpirun: String? = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    static var available: Bool { mpirun != nil }
    static let skipReason: Comment = "mpirun not found: install Open MPI (openmpi-bin; scripts/install-deps.sh does) to run the data-parallel tests"

    static var environment: [String: String] {
        testProcessEnvironment.merging(["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                        "OMPI_MCA_rmaps_base_oversubscribe": "1"]) { $1 }
    }

    static func arguments(np: Int, _ args: [String]) -> [String] {
        ["-np", String(np), "--bind-to", "none", CLI.binary] + args
    }

    static func run(np: Int, _ args: [String]) throws -> CLI.Result {
        try CLI.run(arguments(np: np, args), environment: environment, executable: mpirun!)
    }

    /// A long `train` of `np` ranks into `out`, started in the background, once it has written a checkpoint;
    /// stderr goes to the returned pipe.
    static func startLongRun(np: Int, out: String) throws -> (process: Process, stderr: Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mpirun!)
        p.arguments = arguments(np: np, ["train", "--data", "samples/text/ruth.txt", "--steps", "100000", "--batch-size", "4",
                                         "--seq-len", "64", "--d-model", "32", "--layers", "2", "--checkpoint-every", "20",
                                         "--out", out, "--threads", "1"])
        p.currentDirectoryURL = URL(fileURLWithPath: CLI.root)
        p.environment = environment
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        killAfter(p, seconds: 120)
        var waited = 0.0
        while !FileManager.default.fileExists(atPath: out + "/checkpoints/latest") && waited < 60 {
            Thread.sleep(forTimeInterval: 0.2); waited += 0.2
        }
        return (p, err)
    }

    /// The processes `parent` started (mpirun's ranks), found through /proc.
    static func children(of parent: Int32) throws -> [Int32] {
        var pids: [Int32] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: "/proc") {
            guard let pid = Int32(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, Int32(fields[1]) == parent { pids.append(pid) }
        }
        return pids.sorted()
    }
}

/// Every tensor of a safetensors file, by name.
func tensors(_ path: String) throws -> [String: [Float]] {
    let f = try SafeTensorsFile(path: path)
    var out: [String: [Float]] = [:]
    for name in f.names { out[name] = try f.floats(name) }
    return out
}

/// The largest |a − b| over all tensors of two files with the same names.
func maxDifference(_ a: String, _ b: String) throws -> Float {
    let x = try tensors(a), y = try tensors(b)
    #expect(Set(x.keys) == Set(y.keys), "\(a) and \(b) hold different tensors")
    var worst: Float = 0
    for (k, v) in x { if let w = y[k] { worst = max(worst, maxAbsDiff(v, w)) } }
    return worst
}

/// Copies run directory `from` to `to` and points it at its checkpoint of `step`, dropping later ones: the state a
/// run interrupted after that checkpoint leaves.
func rewind(_ from: String, to: String, step: Int) throws {
    try FileManager.default.copyItem(atPath: from, toPath: to)
    let dir = to + "/checkpoints"
    for n in try FileManager.default.contentsOfDirectory(atPath: dir) where n.hasPrefix("step-") && n > Trainer.checkpointDirectoryName(step) {
        try FileManager.default.removeItem(atPath: dir + "/" + n)
    }
    try (Trainer.checkpointDirectoryName(step) + "\n").write(toFile: dir + "/latest", atomically: false, encoding: .utf8)
}

/// Data-parallel training over MPI: N processes equal one at the same global batch (within float32 summation
/// order), two runs of N are bit-identical, `mpirun -np 1` is the plain run, any N resumes any checkpoint, only
/// rank 0 writes, and a failing rank stops them all with a usable checkpoint.
@Suite(.serialized, .enabled(if: MPIRun.available, MPIRun.skipReason)) struct DistributedTests {
    static let lm = ["train", "--data", "samples/text/ruth.txt", "--steps", "20", "--batch-size", "4", "--seq-len", "64",
                     "--d-model", "32", "--layers", "2", "--d-state", "8", "--seed", "3", "--eval-every", "10",
                     "--checkpoint-every", "10", "--log-every", "5", "--threads", "1"]

    /// Summation order is all that differs between N processes and one: the per-rank weight gradients are formed
    /// over fewer rows and added after. Measured: 2.4e-7 on these runs after 20 AdamW steps (lr 2e-3); a wrong
    /// scaling or a missed rank moves weights by ~1e-3.
    static let orderTolerance: Float = 1e-5

    @Test func twoProcessesEqualOneAndRepeatBitForBit() throws {
        let tmp = TempDir()
        let one = try CLI.run(Self.lm + ["--out", tmp.file("one")])
        #expect(one.status == 0, "\(one.stderr)")
        let two = try MPIRun.run(np: 2, Self.lm + ["--out", tmp.file("two")])
        #expect(two.status == 0, "\(two.stderr)")
        #expect(two.stderr.contains("data-parallel over 2 processes"), "\(two.stderr)")
        let again = try MPIRun.run(np: 2, Self.lm + ["--out", tmp.file("again")])
        #expect(again.status == 0, "\(again.stderr)")
        let single = try MPIRun.run(np: 1, Self.lm + ["--out", tmp.file("single")])
        #expect(single.status == 0, "\(single.stderr)")

        let model = "/model.safetensors", state = "/checkpoints/step-00000020/training_state.safetensors"
        let d = try maxDifference(tmp.file("one") + model, tmp.file("two") + model)
        #expect(d > 0 && d < Self.orderTolerance, "N = 2 vs one process: max |Δw| = \(d)")
        #expect(try maxDifference(tmp.file("one") + state, tmp.file("two") + state) < Self.orderTolerance)
        // Deterministic for a given N; N = 1 under mpirun is the plain run.
        for (a, b) in [("two", "again"), ("one", "single")] {
            for f in [model, state] {
                let x = try Data(contentsOf: URL(fileURLWithPath: tmp.file(a) + f))
                let y = try Data(contentsOf: URL(fileURLWithPath: tmp.file(b) + f))
                #expect(x == y, "\(a) and \(b) differ in \(f)")
            }
        }
        // Rank 0 alone wrote: the same files as one process, one metrics line per event, one progress report.
        func listing(_ dir: String) throws -> [String] {
            try FileManager.default.subpathsOfDirectory(atPath: dir).filter { !$0.hasSuffix(".lock") }.sorted()
        }
        #expect(try listing(tmp.file("one")) == listing(tmp.file("two")))
        let lines = { (run: String) in try String(contentsOfFile: tmp.file(run) + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count }
        #expect(try lines("one") == lines("two"))
        #expect(two.stdout.isEmpty)
        #expect(two.stderr.components(separatedBy: "model saved to").count == 2, "\(two.stderr)")
        // The loss each step reports is the mean over the whole batch, as one process reports it.
        let losses = { (run: String) -> [Double] in
            try String(contentsOfFile: tmp.file(run) + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
                (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double
            }
        }
        let (l1, l2) = (try losses("one"), try losses("two"))
        #expect(l1.count == l2.count && !l1.isEmpty)
        for (a, b) in zip(l1, l2) { #expect(abs(a - b) < 1e-4, "loss \(a) vs \(b)") }
    }

    @Test func anyNumberOfProcessesResumesAnyCheckpoint() throws {
        let tmp = TempDir()
        #expect(try MPIRun.run(np: 2, Self.lm + ["--out", tmp.file("two")]).status == 0)
        #expect(try CLI.run(Self.lm + ["--out", tmp.file("one")]).status == 0)
        let model = "/model.safetensors"
        // The same N resumes bit for bit.
        try rewind(tmp.file("two"), to: tmp.file("two-two"), step: 10)
        let r = try MPIRun.run(np: 2, ["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("two-two"), "--resume", "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        let a = try Data(contentsOf: URL(fileURLWithPath: tmp.file("two") + model))
        let b = try Data(contentsOf: URL(fileURLWithPath: tmp.file("two-two") + model))
        #expect(a == b, "resumed with the same N: not bit-identical")
        // Another N re-shards the optimizer state: one process from N = 2's checkpoint, three from one's.
        try rewind(tmp.file("two"), to: tmp.file("two-one"), step: 10)
        let s = try CLI.run(["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("two-one"), "--resume", "--threads", "1"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(try maxDifference(tmp.file("two") + model, tmp.file("two-one") + model) < Self.orderTolerance)
        try rewind(tmp.file("one"), to: tmp.file("one-three"), step: 10)
        let t = try MPIRun.run(np: 3, ["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("one-three"), "--resume", "--threads", "1"])
        #expect(t.status == 0, "\(t.stderr)")
        #expect(try maxDifference(tmp.file("one") + model, tmp.file("one-three") + model) < Self.orderTolerance)
    }

    @Test func carriedStateAndClassifierTrainAcrossProcesses() throws {
        let tmp = TempDir()
        // Stateful training: each rank carries its lanes' states; the checkpoint gathers the whole batch's.
        let carry = Self.lm + ["--carry-state", "--carry-reset", "4"]
        #expect(try CLI.run(carry + ["--out", tmp.file("c1")]).status == 0)
        let c2 = try MPIRun.run(np: 2, carry + ["--out", tmp.file("c2")])
        #expect(c2.status == 0, "\(c2.stderr)")
        let model = "/model.safetensors", state = "/checkpoints/step-00000020/training_state.safetensors"
        #expect(try maxDifference(tmp.file("c1") + model, tmp.file("c2") + model) < Self.orderTolerance)
        #expect(try maxDifference(tmp.file("c1") + state, tmp.file("c2") + state) < Self.orderTolerance)
        try rewind(tmp.file("c2"), to: tmp.file("c2r"), step: 10)
        let r = try MPIRun.run(np: 2, ["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("c2r"), "--resume", "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try maxDifference(tmp.file("c2") + model, tmp.file("c2r") + model) == 0)

        // A classifier: three rows per rank of a batch of 6, class-weighted, validation split over the ranks.
        let clf = ["classify", "train", "--train", "samples/audio/digits", "--out", "", "--steps", "6", "--batch-size", "6",
                   "--seq-len", "512", "--d-model", "16", "--layers", "1", "--d-state", "4", "--eval-every", "3",
                   "--class-weights", "balanced", "--seed", "5", "--threads", "1"]
        func at(_ out: String) -> [String] { clf.map { $0 == "" ? tmp.file(out) : $0 } }
        let k1 = try CLI.run(at("k1"))
        #expect(k1.status == 0, "\(k1.stderr)")
        let k2 = try MPIRun.run(np: 2, at("k2"))
        #expect(k2.status == 0, "\(k2.stderr)")
        #expect(try maxDifference(tmp.file("k1") + model, tmp.file("k2") + model) < Self.orderTolerance)
        let val = { (run: String) -> [Double] in
            try String(contentsOfFile: tmp.file(run) + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
                (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["val_accuracy"] as? Double
            }
        }
        #expect(try val("k1") == val("k2") && !val("k1").isEmpty)
    }

    /// `run` under mpirun: each variant is trained by every rank together; rank 0 alone evaluates, generates and
    /// writes the summary, which matches one process's.
    @Test func pipelinesTrainTheirVariantsAcrossProcesses() throws {
        let tmp = TempDir()
        let yaml = """
            name: dp
            data:
              format: bytes
              train: [samples/text/ruth.txt]
              eval: samples/text/ruth.txt
            model: {d_model: 32, layers: 2, d_state: 8}
            train: {steps: 12, batch_size: 4, seq_len: 64, seed: 2, eval_every: 6, checkpoint_every: 6, log_every: 3}
            generate: {prompt: "And ", max_new_tokens: 16, temperature: 0}
            variants:
              - name: m1
              - name: m2
                mixer: mamba2
                head_dim: 16
            """
        try yaml.write(toFile: tmp.file("dp.yaml"), atomically: false, encoding: .utf8)
        let one = try CLI.run(["run", tmp.file("dp.yaml"), "--runs-dir", tmp.file("one"), "--threads", "1"])
        #expect(one.status == 0, "\(one.stderr)")
        let two = try MPIRun.run(np: 2, ["run", tmp.file("dp.yaml"), "--runs-dir", tmp.file("two"), "--threads", "1"])
        #expect(two.status == 0, "\(two.stderr)")
        let s1 = try JSONSerialization.jsonObject(with: one.stdout) as? [String: Any]
        let s2 = try JSONSerialization.jsonObject(with: two.stdout) as? [String: Any]
        let r1 = s1?["results"] as? [[String: Any]] ?? [], r2 = s2?["results"] as? [[String: Any]] ?? []
        #expect(r1.count == 2 && r2.count == 2, "\(two.out)")
        for (a, b) in zip(r1, r2) {
            let e1 = (a["eval"] as? [String: Any])?["bits_per_byte"] as? Double ?? .nan
            let e2 = (b["eval"] as? [String: Any])?["bits_per_byte"] as? Double ?? .nan
            #expect(abs(e1 - e2) < 1e-4, "\(a["variant"] ?? "?"): \(e1) vs \(e2) bits/byte")
            let d = try maxDifference(tmp.file("one/dp/\(a["variant"]!)/model.safetensors"),
                                      tmp.file("two/dp/\(b["variant"]!)/model.safetensors"))
            #expect(d < Self.orderTolerance)
        }
        #expect(FileManager.default.fileExists(atPath: tmp.file("two/dp/m2/generated.txt")))
    }

    @Test func failingRankStopsEveryRankAndLeavesACheckpoint() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        // Once a checkpoint is written, kill one rank (a crash: no message, no checkpoint of its own).
        let (p, err) = try MPIRun.startLongRun(np: 2, out: out)
        DispatchQueue.global().async { _ = err.fileHandleForReading.readDataToEndOfFile() }
        let ranks = try MPIRun.children(of: p.processIdentifier)
        #expect(ranks.count == 2, "rank processes: \(ranks)")
        if let victim = ranks.last { kill(victim, SIGKILL) }
        p.waitUntilExit()
        #expect(p.terminationStatus != 0)
        // Gone, or a zombie waiting to be reaped: no rank goes on running.
        func running(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
        }
        // mpirun signals the other ranks as it exits: give them a few seconds to go.
        var left = 10.0
        while ranks.contains(where: running) && left > 0 { Thread.sleep(forTimeInterval: 0.1); left -= 0.1 }
        for r in ranks { #expect(!running(r), "rank process \(r) outlived the failure by 10 s") }
        // The last checkpoint is whole: one process resumes from it.
        let latest = try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let step = Int(latest.dropFirst("step-".count))!
        let r = try CLI.run(["train", "--data", "samples/text/ruth.txt", "--out", out, "--resume", "--steps", String(step + 2), "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("model saved to \(out) (step \(step + 2))"), "\(r.stderr)")
    }

    /// Ctrl-C reaches every rank; they agree at the end of a step, write one checkpoint and stop.
    @Test func interruptCheckpointsEveryRankTogether() throws {
        let tmp = TempDir()
        let out = tmp.file("run")
        let (p, err) = try MPIRun.startLongRun(np: 2, out: out)
        // Ctrl-C at a terminal signals the whole foreground group: mpirun and every rank. (Sent to mpirun alone
        // from a shell, it is forwarded to the ranks too; mpirun started by the test runner ignored it.)
        for r in try MPIRun.children(of: p.processIdentifier) { kill(r, SIGINT) }
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus != 0)
        #expect(text.contains("error: interrupted at step"), "\(text.suffix(2000))")
        let latest = try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let step = Int(latest.dropFirst("step-".count))!
        // The checkpoint written on the interrupt is the latest.
        #expect(text.contains("interrupted at step \(step) of 100000"), "\(text.suffix(2000))")
        let r = try MPIRun.run(np: 2, ["train", "--data", "samples/text/ruth.txt", "--out", out, "--resume", "--steps", String(step + 3), "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func refusalsNameTheReason() throws {
        let tmp = TempDir()
        let small = try MPIRun.run(np: 2, Self.lm.map { $0 == "4" ? "1" : $0 } + ["--out", tmp.file("a")])
        #expect(small.status != 0)
        #expect(small.stderr.contains("error: --batch-size 1 is smaller than the 2 processes"), "\(small.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("a") + "/checkpoints"))
        let eval = try MPIRun.run(np: 2, ["eval", "--model", tmp.file("none"), "--data", "samples/text/ruth.txt"])
        #expect(eval.status != 0)
        #expect(eval.stderr.contains("error: this command runs in one process; start it without mpirun"), "\(eval.stderr)")
    }
}

/// The parts of data-parallel training that need no MPI: partitions, the optimizer over slices.
@Suite struct ShardingTests {
    @Test func sharesPartitionEveryCount() {
        for n in 1...7 {
            for count in [0, 1, 5, 64, 1000, 1 << 40] {
                let parts = (0..<n).map { ProcessGroup.share(of: count, rank: $0, size: n) }
                #expect(parts.first?.lowerBound == 0 && parts.last?.upperBound == count)
                for i in 1..<n { #expect(parts[i - 1].upperBound == parts[i].lowerBound) }
                #expect(parts.allSatisfy { $0.count == count / n || $0.count == count / n + 1 })
            }
        }
    }

    /// AdamW over slices of the arena (ZeRO-1, each rank its own) updates exactly as one AdamW over all of it.
    @Test func adamWOverSlicesEqualsWhole() throws {
        let config = MambaConfig(vocabSize: 256, dModel: 16, layers: 2, dState: 4, dConv: 3, expand: 2)
        let model = try MambaModel(config: config, seed: 1)
        let layout = model.params.layout
        let grads = Arena(layout: layout)
        let g = randomFloats(layout.total, seed: 9, scale: 0.1)
        for i in 0..<layout.total { grads.base[i] = g[i] }
        let whole = Arena(layout: layout), sliced = Arena(layout: layout)
        whole.base.update(from: model.params.base, count: layout.total)
        sliced.base.update(from: model.params.base, count: layout.total)
        let full = AdamW(layout: layout, hyper: .init())
        let cut = [0, layout.total / 3 + 5, layout.total]
        let parts = (0..<2).map { AdamW(layout: layout, hyper: .init(), range: cut[$0]..<cut[$0 + 1]) }
        for _ in 0..<3 {
            full.update(params: whole, grads: grads, lr: 1e-2)
            for p in parts { p.update(params: sliced, grads: grads, lr: 1e-2) }
        }
        #expect(Array(UnsafeBufferPointer(start: whole.base, count: layout.total))
                == Array(UnsafeBufferPointer(start: sliced.base, count: layout.total)))
        let squares = AdamW.squaredNorm(grads, range: 0..<cut[1]) + AdamW.squaredNorm(grads, range: cut[1]..<cut[2])
        #expect(abs(squares.squareRoot() - AdamW.gradientNorm(grads)) <= 1e-12 * AdamW.gradientNorm(grads))
    }

    /// A process told it was launched by MPI whose library cannot be loaded says so, and starts nothing.
    @Test func missingMPILibraryIsNamed() throws {
        let tmp = TempDir()
        let env = testProcessEnvironment.merging(["MAMBAKIT_MPI": "1", "MAMBAKIT_MPI_LIBRARY": "/nonexistent/libmpi.so.40"]) { $1 }
        let r = try CLI.run(["train", "--data", "samples/text/ruth.txt", "--out", tmp.file("o"), "--steps", "1"], environment: env)
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("error: cannot load the MPI library /nonexistent/libmpi.so.40"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("o")))
    }

    @Test func ranksShareTheHostsCores() {
        #expect(ProcessGroup.defaultThreads(online: 16, affinity: 16, localSize: 4) == 4)
        #expect(ProcessGroup.defaultThreads(online: 16, affinity: 2, localSize: 4) == 2)
        #expect(ProcessGroup.defaultThreads(online: 2, affinity: 2, localSize: 3) == 1)
        #expect(ProcessGroup.defaultThreads(online: 8, affinity: nil, localSize: 1) == 8)
        #expect(!ProcessGroup.launchedByMPI([:]))
        #expect(ProcessGroup.launchedByMPI(["OMPI_COMM_WORLD_SIZE": "2"]))
        #expect(!ProcessGroup.launchedByMPI(["OMPI_COMM_WORLD_SIZE": "2", "MAMBAKIT_MPI": "0"]))
    }
}
