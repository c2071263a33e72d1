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
            if spec.task == "classify" {
                let progress = ProgressRenderer()
                installInterruptHandler()
                let summary = try ClassificationPipeline.run(
                    spec, pipelinePath: pipeline, out: out, resume: resume,
                    events: { e in
                        switch e {
                        case let .stage(s): progress.line(s)
                        case let .training(t): progress.handle(t)
                        }
                    }, shouldStop: { interruptRequested != 0 })
                progress.finish()
                try printJSON(summary)
                return
            }
            guard !spec.trainData.isEmpty else { throw MambaKitError(.config, "data.train is empty", at: pipeline) }
            printErr("pipeline \(spec.name): training on \(spec.trainData.joined(separator: ", "))")
            let progress = ProgressRenderer()
            installInterruptHandler()
            let trainer = try LanguageModelTask.train(
                format: spec.format, data: spec.trainData, out: out, model: spec.model, train: spec.train,
                valFraction: spec.valFraction, resume: resume && FileManager.default.fileExists(atPath: out + "/checkpoints/latest"),
                audio: spec.audio,
                events: progress.handle, shouldStop: { interruptRequested != 0 })
            progress.finish()
            var summary: [String: Any] = ["name": spec.name, "pipeline": pipeline, "steps": trainer.step,
                                          "parameters": trainer.model.config.parameterCount]
            if let evalPath = spec.evalData {
                printErr("evaluating \(evalPath)")
                let report = try LanguageModelTask.evaluate(model: trainer.model, path: evalPath, format: spec.format,
                                                            chunk: trainer.options.seqLen)
                var j = report.json
                j["data"] = evalPath
                try AtomicFile.write(try JSONSerialization.data(withJSONObject: j, options: [.prettyPrinted, .sortedKeys]),
                                     to: out + "/eval.json")
                summary["eval"] = j
                printErr(String(format: "eval: %.4f bits/token over %d tokens", report.result.bitsPerToken, report.result.count))
            }
            if let g = spec.generate, spec.format == .audio {
                let t = spec.audio
                let sampler = try Sampler(temperature: g.temperature, topK: g.topK, topP: g.topP)
                var prompt: [Int32] = [t.silenceToken]
                if let p = g.promptAudio { prompt += t.encode(try AudioFile.readMono(p, sampleRate: t.sampleRate)) }
                let count = Int((g.seconds * Double(t.sampleRate)).rounded())
                var rng = RNG(seed: UInt64(max(0, g.seed)))
                var tokens: [Int32] = []
                let clock = ContinuousClock()
                let t0 = clock.now
                try Generator(model: trainer.model).generate(prompt: prompt, count: count, sampler: sampler, rng: &rng) {
                    tokens.append($0); return true
                }
                let elapsed = secs(clock.now - t0)
                try AudioFile.writeWAV(t.decode(tokens), sampleRate: t.sampleRate, to: out + "/generated.wav")
                if g.promptAudio != nil {
                    try AudioFile.writeWAV(t.decode(Array(prompt.dropFirst())) + t.decode(tokens), sampleRate: t.sampleRate,
                                           to: out + "/continuation.wav")
                    summary["continuation"] = out + "/continuation.wav"
                }
                summary["generated"] = out + "/generated.wav"
                summary["generation_real_time_factor"] = elapsed / g.seconds
                printErr(String(format: "generated %.2f s of audio in %.2f s (real-time factor %.2f) → %@/generated.wav",
                                g.seconds, elapsed, elapsed / g.seconds, out))
            } else if let g = spec.generate {
                let sampler = try Sampler(temperature: g.temperature, topK: g.topK, topP: g.topP)
                var rng = RNG(seed: UInt64(max(0, g.seed)))
                var bytes: [UInt8] = []
                try Generator(model: trainer.model).generate(
                    prompt: ByteTokenizer.encode(Array(g.prompt.utf8)), count: g.maxNewTokens, sampler: sampler, rng: &rng
                ) { bytes.append(UInt8(truncatingIfNeeded: $0)); return true }
                try AtomicFile.write(Array(g.prompt.utf8) + bytes, to: out + "/generated.txt")
                summary["generated"] = out + "/generated.txt"
                printErr("generated \(bytes.count) bytes → \(out)/generated.txt")
            }
            try AtomicFile.write(try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys]),
                                 to: out + "/summary.json")
            try printJSON(summary)
        }
    }
}
