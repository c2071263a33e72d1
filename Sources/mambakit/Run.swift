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
            if common.threads == nil, let t = spec.threads { Parallel.setThreads(t) } else { try common.apply() }
            let out = runsDir + "/" + spec.name
            if FileManager.default.fileExists(atPath: out) && !resume {
                guard overwrite else {
                    throw MambaKitError(.usage, "the run directory exists; pass --resume to continue it or --overwrite to start again", at: out)
                }
                try FileManager.default.removeItem(atPath: out)
            }
            let progress = ProgressRenderer()
            installInterruptHandler()
            let events: (PipelineEvent) -> Void = { e in
                switch e {
                case let .stage(s): progress.line(s)
                case let .training(t): progress.handle(t)
                }
            }
            let summary = spec.task == "classify"
                ? try ClassificationPipeline.run(spec, pipelinePath: pipeline, out: out, resume: resume, events: events,
                                                 shouldStop: { interruptRequested != 0 })
                : try LanguageModelPipeline.run(spec, pipelinePath: pipeline, out: out, resume: resume, events: events,
                                                shouldStop: { interruptRequested != 0 })
            progress.finish()
            if let table = summary["table"] as? [String] { printErr(table.joined(separator: "\n")) }
            try printJSON(summary)
        }
    }
}
