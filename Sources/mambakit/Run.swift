import ArgumentParser
import Foundation
import MambaKit

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a pipeline file: data → model → train → eval → generate, outputs under runs/<name>/.")

    @Argument(help: "The pipeline file (YAML), e.g. pipelines/bytes-lm.yaml.") var pipeline: String
    @Option(name: .customLong("runs-dir"), help: "Where run directories go.") var runsDir: String = "runs"
    @Flag(help: "Continue an interrupted run from its latest checkpoint.") var resume = false
    @Flag(help: "Delete an existing run directory of the same name first.") var overwrite = false
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            let spec = try PipelineSpec.load(path: pipeline)
            try common.apply(distributed: true)
            if common.threads == nil, let t = spec.threads { Parallel.setThreads(t) }
            let out = runsDir + "/" + spec.name
            // --overwrite moves the old run aside, under the lock of its directory, and deletes it only once the new
            // run has started training (its inputs and settings passed every check); a run that fails before that
            // puts the old one back.
            var aside: String? = nil
            // Under mpirun rank 0 alone moves the old run aside (the others write nothing into the run directory).
            if FileManager.default.fileExists(atPath: out) && !resume && ProcessGroup.world.isRoot {
                guard overwrite else {
                    throw MambaKitError(.usage, "the run directory exists; pass --resume to continue it or --overwrite to start again", at: out)
                }
                let lock = try RunLock(directory: out)
                let dest = out + ".old-\(getpid())"
                try? FileManager.default.removeItem(atPath: dest)
                guard rename(out, dest) == 0 else {
                    throw MambaKitError(.io, "cannot move the old run aside: \(String(cString: strerror(errno)))", at: out)
                }
                withExtendedLifetime(lock) {}
                aside = dest
            }
            // The other ranks look at the run directory only once it has been moved aside.
            try ProcessGroup.world.barrier()
            let lock = try RunLock(directory: out)
            defer { withExtendedLifetime(lock) {} }
            let progress = ProgressRenderer()
            installInterruptHandler()
            var started = false
            let events: (PipelineEvent) -> Void = { e in
                switch e {
                case let .stage(s): progress.line(s)
                case let .training(t):
                    if case .started = t, !started, let old = aside {
                        started = true
                        try? FileManager.default.removeItem(atPath: old)
                    }
                    progress.handle(t)
                }
            }
            let summary: [String: Any]
            do {
                summary = spec.task == "classify"
                    ? try ClassificationPipeline.run(spec, pipelinePath: pipeline, out: out, resume: resume, events: events,
                                                     shouldStop: { interruptRequested != 0 })
                    : try LanguageModelPipeline.run(spec, pipelinePath: pipeline, out: out, resume: resume, events: events,
                                                    shouldStop: { interruptRequested != 0 })
            } catch {
                if let old = aside, !started {
                    try? FileManager.default.removeItem(atPath: out)
                    if rename(old, out) == 0 { printErr("the previous run is back in place at \(out)") }
                }
                throw error
            }
            if let old = aside { try? FileManager.default.removeItem(atPath: old) }
            progress.finish()
            if let table = summary["table"] as? [String] { printErr(table.joined(separator: "\n")) }
            try printJSON(summary)
        }
    }
}
