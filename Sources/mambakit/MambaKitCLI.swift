import ArgumentParser
import Foundation
import MambaKit

/// `mambakit`: sequence modelling of bytes, DNA and audio with selective state-space models.
@main
struct MambaKitCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mambakit",
        abstract: "Selective state-space (Mamba) models for byte streams and DNA: train, evaluate, generate, classify.",
        subcommands: [Train.self, Eval.self, Generate.self, Classify.self, Fragments.self, Run.self, Inspect.self, Bench.self, NGramBaseline.self])

    static func main() {
        // A closed stdout is reported as an error (EPIPE) by the writes that find it, not a silent death.
        signal(SIGPIPE, SIG_IGN)
        // Give OpenBLAS its vector kernels where its CPU table is too old, and idle workers that sleep instead of
        // polling (BLASCore); one exec, before any work.
        let env = BLASCore.preferredEnvironment()
        if !env.isEmpty {
            for (key, value) in env { setenv(key, value, 1) }
            var argv: [UnsafeMutablePointer<CChar>?] = CommandLine.arguments.map { strdup($0) } + [nil]
            execv("/proc/self/exe", &argv)
            // exec failed: carry on with the generic kernels.
        }
        Self.main(nil)
    }
}

/// Options every command takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "Threads for MambaKit's loops and OpenBLAS (default: all cores; under mpirun, the cores of each process's binding, or the host's cores shared by its processes).")
    var threads: Int?

    /// Sets the thread count and, in a process started by mpirun, joins the MPI job: `distributed` commands
    /// (train, classify train, run) then train data-parallel; the others refuse to run as several processes. Ranks
    /// other than 0 print nothing on stdout and no progress.
    func apply(distributed: Bool = false) throws {
        let group = try ProcessGroup.joinFromEnvironment()
        if group.size > 1 {
            guard distributed else {
                throw MambaKitError(.usage, "this command runs in one process; start it without mpirun (train, classify train and run train across processes)")
            }
            if !group.isRoot {
                quietRank = true
                let null = open("/dev/null", O_WRONLY)
                if null >= 0 { dup2(null, 1); close(null) }
            }
        }
        if let t = threads {
            Parallel.setThreads(try Settings.check("threads", t, .flags))
        } else {
            Parallel.setThreads(ProcessGroup.defaultThreads(online: Parallel.defaultThreads, affinity: Parallel.affinityCount,
                                                            localSize: group.localSize))
        }
    }
}

/// A rank other than 0 of a run over several processes: no progress lines.
nonisolated(unsafe) var quietRank = false

/// Runs `body`, turning MambaKit errors into `error: <what>, <where>` on stderr and a non-zero exit.
/// Under mpirun with several processes, the error names the rank; an interrupted run (every rank checkpointed
/// together) ends its MPI job normally, and any other error stops every rank (MPI_Abort), since the others would
/// wait for it in their next collective.
func runReportingErrors(_ body: () throws -> Void) throws {
    func report(_ text: String, interrupted: Bool) -> ExitCode {
        let g = ProcessGroup.world
        let rank = g.size > 1 ? " (rank \(g.rank) of \(g.size))" : ""
        if !interrupted || g.isRoot { FileHandle.standardError.write(Data("error: \(text)\(rank)\n".utf8)) }
        let code: Int32 = interrupted ? 130 : 1
        if g.size > 1 && !interrupted { g.abort(code: code) }
        g.finalize()
        return ExitCode(code)
    }
    do {
        try body()
        ProcessGroup.world.finalize()
    } catch let e as MambaKitError {
        throw report(e.description, interrupted: e.kind == .interrupted)
    } catch let e as ExitCode {
        throw e
    } catch let e as ValidationError {
        throw e
    } catch {
        throw report("\(error)", interrupted: false)
    }
}

func printErr(_ s: String) {
    if quietRank { return }
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// Writes all of `bytes` to stdout (fd 1), or throws: a full disk, a closed pipe (SIGPIPE is ignored, so this is
/// EPIPE) or any other failure is an error and a non-zero exit, never output silently lost.
func writeStdout(_ bytes: [UInt8]) throws {
    var done = 0
    try bytes.withUnsafeBytes { raw in
        guard let base = raw.baseAddress else { return }
        while done < raw.count {
            let n = Glibc.write(1, base + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw MambaKitError(.io, "cannot write to stdout: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}

/// One line on stdout, checked (`print` drops write errors).
func say(_ s: String) throws { try writeStdout(Array((s + "\n").utf8)) }

/// Prints a JSON object on stdout (sorted keys, one line or pretty).
func printJSON(_ o: [String: Any], pretty: Bool = true) throws {
    var clean = o
    for (k, v) in o { if let d = v as? Double, !d.isFinite { clean[k] = NSNull() } }
    let data = try JSONSerialization.data(withJSONObject: clean, options: pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys])
    try writeStdout(Array(data) + [10])
}

// MARK: Ctrl-C

nonisolated(unsafe) var interruptRequested: sig_atomic_t = 0

/// The first Ctrl-C or SIGTERM (what `timeout`, Docker and Slurm send) asks the trainer to checkpoint and stop; a
/// second one exits at once. Both are also unblocked: a parent may hand its blocked mask down (some launchers and
/// thread pools do).
func installInterruptHandler() {
    for sig in [SIGINT, SIGTERM] {
        signal(sig) { _ in
            if interruptRequested != 0 { _exit(130) }
            interruptRequested = 1
        }
    }
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
