import Foundation

/// A language-model pipeline (`task: lm`) end to end: train on `data.train`, evaluate exactly on `data.eval`,
/// generate from `generate`; outputs under `out/` (model, checkpoints, metrics.jsonl, eval.json, generated.txt or
/// generated.wav, summary.json). With `variants`, each stack is trained in turn with the same data, schedule and seed
/// into `out/<variant>/`, and the summary holds a table comparing them: parameters, held-out bits per token,
/// training tokens/s and peak memory.
public enum LanguageModelPipeline {
    public typealias Event = PipelineEvent

    /// Runs the pipeline; returns the summary written to `out/summary.json`.
    public static func run(_ spec: PipelineSpec, pipelinePath: String, out: String, resume: Bool,
                           events: (Event) -> Void, shouldStop: () -> Bool) throws -> [String: Any] {
        try spec.refuseEpochsForLanguageModel()
        guard !spec.trainData.isEmpty else { throw MambaKitError(.config, "data.train is empty", at: pipelinePath) }
        // Under mpirun every rank trains each variant together; rank 0 alone evaluates, generates and writes.
        let root = ProcessGroup.world.isRoot
        var summary: [String: Any] = ["name": spec.name, "pipeline": pipelinePath]
        if spec.variants.isEmpty {
            summary.merge(try runOne(spec, model: spec.model, out: out, resume: resume, events: events,
                                     shouldStop: shouldStop)) { $1 }
        } else {
            if root { try ensureDirectory(out) }
            var results: [[String: Any]] = []
            for (name, variant, train) in spec.variants {
                events(.stage("variant \(name)"))
                var s = spec
                s.train = train.merged(over: spec.train)
                var r = try runOne(s, model: variant.merged(over: spec.model), out: out + "/" + name, resume: resume,
                                   events: events, shouldStop: shouldStop)
                r["variant"] = name
                if root {
                    try AtomicFile.write(try JSONSerialization.data(withJSONObject: r, options: [.prettyPrinted, .sortedKeys]),
                                         to: out + "/" + name + "/summary.json")
                }
                results.append(r)
            }
            summary["results"] = results
        }
        guard root else { return summary }
        if !spec.ngramOrders.isEmpty, let evalPath = spec.evalData {
            events(.stage("n-gram baselines (orders \(spec.ngramOrders.map(String.init).joined(separator: ", ")))"))
            summary["ngram"] = try ngramBaselines(spec, eval: evalPath)
        }
        if !spec.variants.isEmpty || summary["ngram"] != nil {
            let rows = (summary["results"] as? [[String: Any]]) ?? [summary.merging(["variant": spec.name]) { $1 }]
            summary["table"] = table(rows, ngram: summary["ngram"] as? [[String: Any]] ?? [],
                                     unit: spec.format == .bytes ? "bits/byte" : spec.format == .audio ? "bits/sample" : "bits/token")
        }
        if !spec.byPosition.isEmpty {
            let rows = (summary["results"] as? [[String: Any]]) ?? [summary.merging(["variant": spec.name]) { $1 }]
            summary["by_position_table"] = positionTable(rows)
            let comparisons = carryComparisons(rows)
            if !comparisons.isEmpty {
                summary["carried_state_lowers_late_loss"] = Dictionary(comparisons.map { ($0.variant, $0.lower) }) { a, _ in a }
                summary["carried_state_comparison"] = comparisons.map(\.text)
                for c in comparisons { events(.stage(c.text)) }
            }
        }
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys]),
                             to: out + "/summary.json")
        return summary
    }

    /// One stack: train (or resume), evaluate, generate.
    static func runOne(_ spec: PipelineSpec, model: ModelSpec, out: String, resume: Bool,
                       events: (Event) -> Void, shouldStop: () -> Bool) throws -> [String: Any] {
        events(.stage("training on \(spec.trainData.joined(separator: ", "))"))
        resetPeakMemory()
        var windows: [Double] = []
        let trainer = try LanguageModelTask.train(
            format: spec.format, data: spec.trainData, out: out, model: model, train: spec.train,
            valFraction: spec.valFraction, resume: resume && FileManager.default.fileExists(atPath: out + "/checkpoints/latest"),
            audio: spec.audio, cacheDirectory: spec.tokenCache,
            events: { e in
                if case let .step(step, _, _, _, _, tps, _) = e, step > 1 { windows.append(tps) }
                events(.training(e))
            }, shouldStop: shouldStop)
        let c = trainer.model.config
        let stack = c.unetPlan.map { "unet \($0.factors.map(String.init).joined(separator: ",")), blocks \($0.layers.map(String.init).joined(separator: "/")), widths \($0.widths.map(String.init).joined(separator: "/"))" } ?? c.pattern
        var summary: [String: Any] = ["steps": trainer.step, "parameters": c.parameterCount, "pattern": stack,
                                      "carry_state": trainer.options.carryState, "seq_len": trainer.options.seqLen,
                                      "layout": c.modelType.rawValue, "peak_rss_mb": Double(peakMemory()) / 1e6]
        // The median logged window (each spans `log_every` steps): steady-state speed, robust to a slow window.
        if !windows.isEmpty { summary["train_tokens_per_s"] = windows.sorted()[windows.count / 2] }
        guard ProcessGroup.world.isRoot else { return summary }
        if let evalPath = spec.evalData {
            events(.stage("evaluating \(evalPath)"))
            let report = try LanguageModelTask.evaluate(model: trainer.model, path: evalPath, format: spec.format,
                                                        chunk: trainer.options.seqLen, buckets: spec.byPosition)
            var j = report.json
            j["data"] = evalPath
            try AtomicFile.write(try JSONSerialization.data(withJSONObject: j, options: [.prettyPrinted, .sortedKeys]),
                                 to: out + "/eval.json")
            summary["eval"] = j
            events(.stage(String(format: "eval: %.4f bits/token over %d tokens", report.result.bitsPerToken, report.result.count)))
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
            let elapsed = seconds(clock.now - t0)
            try AudioFile.writeWAV(t.decode(tokens), sampleRate: t.sampleRate, to: out + "/generated.wav")
            if g.promptAudio != nil {
                try AudioFile.writeWAV(t.decode(Array(prompt.dropFirst())) + t.decode(tokens), sampleRate: t.sampleRate,
                                       to: out + "/continuation.wav")
                summary["continuation"] = out + "/continuation.wav"
            }
            summary["generated"] = out + "/generated.wav"
            summary["generation_real_time_factor"] = elapsed / g.seconds
            events(.stage(String(format: "generated %.2f s of audio in %.2f s (real-time factor %.2f) → %@/generated.wav",
                                 g.seconds, elapsed, elapsed / g.seconds, out)))
        } else if let g = spec.generate {
            let sampler = try Sampler(temperature: g.temperature, topK: g.topK, topP: g.topP)
            var rng = RNG(seed: UInt64(max(0, g.seed)))
            var bytes: [UInt8] = []
            try Generator(model: trainer.model).generate(
                prompt: ByteTokenizer.encode(Array(g.prompt.utf8)), count: g.maxNewTokens, sampler: sampler, rng: &rng
            ) { bytes.append(UInt8(truncatingIfNeeded: $0)); return true }
            try AtomicFile.write(Array(g.prompt.utf8) + bytes, to: out + "/generated.txt")
            summary["generated"] = out + "/generated.txt"
            events(.stage("generated \(bytes.count) bytes → \(out)/generated.txt"))
        }
        return summary
    }

    /// The n-gram baselines of `data.ngram`: counted on the training files, measured on the eval data, streams as
    /// training reads them (an audio clip after the start token, so that every sample is predicted, as `eval` does).
    static func ngramBaselines(_ spec: PipelineSpec, eval: String) throws -> [[String: Any]] {
        func streams(_ paths: [String]) throws -> [[Int32]] {
            let p = spec.format == .audio ? try LanguageModelTask.expandPathsRecursively(paths) : paths
            return try LanguageModelTask.corpus(format: spec.format, paths: p, valFraction: 0, audio: spec.audio).0.allStreams()
        }
        let vocabulary = spec.format == .audio ? spec.audio.vocabSize : spec.format == .fasta ? DNATokenizer().vocabSize : ByteTokenizer.vocabSize
        let (train, held) = (try streams(spec.trainData), try streams([eval]))
        return try spec.ngramOrders.map { order in
            let m = try NGramModel(order: order, vocabulary: vocabulary)
            try m.fit(train)
            let (bits, tokens) = m.bitsPerToken(held)
            return ["order": order, "bits_per_token": bits, "tokens": tokens]
        }
    }

    /// A Markdown table of held-out bits per token by position within each document, a row per variant.
    static func positionTable(_ results: [[String: Any]]) -> [String] {
        let buckets = results.compactMap { ($0["eval"] as? [String: Any])?["by_position"] as? [[String: Any]] }
        guard let first = buckets.first else { return [] }
        func label(_ b: [String: Any]) -> String {
            func k(_ v: Int) -> String { v >= 1024 && v % 1024 == 0 ? "\(v / 1024)k" : "\(v)" }
            let from = b["from"] as? Int ?? 0
            return (b["to"] as? Int).map { "\(k(from))–\(k($0))" } ?? "≥ \(k(from))"
        }
        var rows = ["| variant | carried state | " + first.map(label).joined(separator: " | ") + " |",
                    "| --- | --- |" + String(repeating: " ---: |", count: first.count)]
        for r in results {
            let b = (r["eval"] as? [String: Any])?["by_position"] as? [[String: Any]] ?? []
            let cells = b.map { c in (c["bits_per_token"] as? Double).map { String(format: "%.4f", $0) } ?? "—" }
            rows.append("| \(r["variant"] ?? "") | \((r["carry_state"] as? Bool) == true ? "yes" : "no") | " + cells.joined(separator: " | ") + " |")
        }
        return rows
    }

    /// For each variant trained with a carried state, against the first without: whether the carried state lowered
    /// the held-out loss at the latest positions (the last bucket holding tokens), and a sentence saying so.
    static func carryComparisons(_ results: [[String: Any]]) -> [(variant: String, text: String, lower: Bool)] {
        func late(_ r: [String: Any]) -> (from: Int, bits: Double)? {
            let b = (r["eval"] as? [String: Any])?["by_position"] as? [[String: Any]] ?? []
            guard let last = b.last(where: { ($0["tokens"] as? Int ?? 0) > 0 }), let bits = last["bits_per_token"] as? Double else { return nil }
            return (last["from"] as? Int ?? 0, bits)
        }
        guard let w = results.first(where: { ($0["carry_state"] as? Bool) != true }), let lw = late(w) else { return [] }
        let f = { (v: Double) in String(format: "%.4f", v) }
        return results.filter { ($0["carry_state"] as? Bool) == true }.compactMap { c in
            guard let lc = late(c), lc.from == lw.from else { return nil }
            let lower = lc.bits < lw.bits
            let name = "\(c["variant"] ?? "")"
            let text = "positions from \(lc.from) on: \(name) (carried state) \(f(lc.bits)) against \(w["variant"] ?? "") (independent windows) \(f(lw.bits)) bits/token: the carried state \(lower ? "lowers" : "does not lower") the loss on late positions"
            return (name, text, lower)
        }
    }

    /// A Markdown table of the variants, one row each, and of the n-gram baselines.
    static func table(_ results: [[String: Any]], ngram: [[String: Any]] = [], unit: String) -> [String] {
        var rows = ["| variant | stack | parameters | held-out \(unit) | train tokens/s | peak memory (MB) |",
                    "| --- | --- | ---: | ---: | ---: | ---: |"]
        for n in ngram {
            rows.append("| \(n["order"] ?? "")-gram | interpolated Kneser–Ney | — | "
                        + String(format: "%.4f", n["bits_per_token"] as? Double ?? .nan) + " | — | — |")
        }
        for r in results {
            let bits = ((r["eval"] as? [String: Any])?["bits_per_token"] as? Double).map { String(format: "%.4f", $0) } ?? "—"
            let tps = (r["train_tokens_per_s"] as? Double).map { String(format: "%.0f", $0) } ?? "—"
            rows.append("| \(r["variant"] ?? "") | `\(r["pattern"] ?? "")` | \(r["parameters"] ?? "") | \(bits) | \(tps) | "
                        + String(format: "%.0f", r["peak_rss_mb"] as? Double ?? 0) + " |")
        }
        return rows
    }
}

/// Linux: writing 5 to /proc/self/clear_refs resets the peak resident set (VmHWM), so each stage reports its own.
public func resetPeakMemory() { try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8) }

/// The peak resident set since the last reset, in bytes (0 where /proc is not available).
public func peakMemory() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
    }
    return 0
}
