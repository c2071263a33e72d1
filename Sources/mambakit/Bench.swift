import ArgumentParser
import Foundation
import MambaKit

/// `mambakit bench`: the measurements of BENCHMARKS.md. Training throughput (forward + backward + AdamW) of the
/// reference config, recurrent generation throughput at batch 1 and 16 for the reference config and the mamba-130m
/// shape, this machine's memory bandwidth (the bound for batch-1 generation), and peak memory per measurement.
/// With `--torch PYTHON`, scripts/bench_torch.py runs the PyTorch CPU reference in the same invocation.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure training and generation speed on this machine.")

    @Flag(help: "Small sizes, for a smoke test.") var quick = false
    @Option(name: .customLong("train-steps"), help: "Timed training steps.") var trainSteps: Int = 3
    @Option(name: .customLong("gen-tokens"), help: "Generated tokens per measurement.") var genTokens: Int = 256
    @Option(help: "Python interpreter with torch, transformers and mambapy: also run scripts/bench_torch.py.") var torch: String?
    @Option(name: .customLong("torch-args"), help: "Extra arguments for scripts/bench_torch.py (one string, split on spaces).") var torchArgs: String?
    @Option(help: "Write the JSON results here as well.") var output: String?
    @Option(help: "Run only these measurements: train, generate, classify, parse (comma-separated; default train,generate).") var only: String?
    @Option(name: .customLong("classify-lengths"), help: "Classification: sequence lengths, paired with --classify-batches.") var classifyLengths: String = "1024,16384"
    @Option(name: .customLong("classify-batches"), help: "Classification: sequences per call, one per length.") var classifyBatches: String = "16,1"
    @Option(name: .customLong("train-config"), help: "Training configs: reference (default), audio, mamba2, hybrid (comma-separated).") var trainConfig: String = "reference"
    @Option(name: .customLong("train-seq-len"), help: "Training sequence length (default 2048).") var trainSeqLen: Int?
    @Option(name: .customLong("train-batch"), help: "Training batch (default 4).") var trainBatch: Int = 4
    @Option(name: .customLong("gen-configs"), help: "Generation configs: reference, mamba130m, audio, mamba2, hybrid (comma-separated).") var genConfigs: String = "reference,mamba130m"
    @Option(name: .customLong("gen-batches"), help: "Generation batch sizes (comma-separated).") var genBatches: String = "1,16"
    @Option(name: .customLong("gen-weights"), help: "Generation: step weights f32, bf16 (comma-separated; PyTorch runs float32 and, for bf16, bfloat16).")
    var genWeights: String = "f32"
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            var results: [[String: Any]] = []
            let threads = Parallel.threads
            let bw = measureBandwidth(megabytes: quick ? 256 : 1024)
            printErr(String(format: "memory bandwidth (read): %.2f GB/s", bw / 1e9))

            let named = try Self.configs()
            let reference = named["reference"]!
            func pick(_ list: String, _ option: String) throws -> [(MambaConfig, String)] {
                try list.split(separator: ",").map { n in
                    guard let c = named[String(n)] else {
                        throw MambaKitError(.usage, "\(option): '\(n)' is not one of \(named.keys.sorted().joined(separator: ", "))")
                    }
                    return (c, String(n))
                }
            }
            let L = quick ? 256 : 2048
            let parts = Set((only ?? "train,generate").split(separator: ",").map(String.init))
            if parts.contains("train") {
                for (cfg, name) in try pick(trainConfig, "--train-config") {
                    results.append(try benchTrain(config: cfg, name: name, B: trainBatch, L: quick ? L : (trainSeqLen ?? L),
                                                  steps: quick ? 1 : trainSteps))
                }
            }
            let n = quick ? 32 : genTokens
            let configs = try pick(genConfigs, "--gen-configs")
            let batches = genBatches.split(separator: ",").compactMap { Int($0) }
            let weightSets = try genWeights.split(separator: ",").map { w in
                guard let s = StepWeights(rawValue: String(w)) else {
                    throw MambaKitError(.usage, "--gen-weights: '\(w)' is not one of f32, bf16")
                }
                return s
            }
            for (cfg, name) in parts.contains("generate") ? configs : [] {
                for weights in weightSets {
                    for b in batches {
                        var r = try benchGenerate(config: cfg, name: name, batch: b, tokens: n, weights: weights)
                        if b == 1 {
                            // Every parameter is read once per token; the projections in the chosen precision.
                            let bytesPerToken = Double(r["weight_bytes_per_token"] as! Int)
                            r["bandwidth_bound_tokens_per_s"] = bw / bytesPerToken
                            r["fraction_of_bandwidth_bound"] = (r["tokens_per_s"] as! Double) / (bw / bytesPerToken)
                        }
                        results.append(r)
                    }
                }
            }
            if parts.contains("classify") {
                let lengths = quick ? [128, 512] : classifyLengths.split(separator: ",").compactMap { Int($0) }
                let batches = quick ? [4, 1] : classifyBatches.split(separator: ",").compactMap { Int($0) }
                guard lengths.count == batches.count, !lengths.isEmpty else {
                    throw MambaKitError(.usage, "--classify-lengths and --classify-batches need one value each, paired")
                }
                for (len, b) in zip(lengths, batches) {
                    results.append(try benchClassify(config: reference, name: "reference", length: len, batch: b))
                }
            }
            if parts.contains("parse") { results += try benchParse(quick: quick) }
            var doc: [String: Any] = ["mambakit": results, "threads": threads, "memory_bandwidth_gb_s": bw / 1e9,
                                      "cpu": cpuName()]
            if let py = torch {
                printErr("running the PyTorch reference: \(py) scripts/bench_torch.py")
                doc["torch"] = runTorch(python: py, threads: threads, tasks: parts.sorted())
            }
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            if let output { try AtomicFile.write(data + Data([10]), to: output) }
            FileHandle.standardOutput.write(data + Data([10]))
        }
    }

    /// The benchmark shapes (BENCHMARKS.md): the Mamba-1 reference config (vocab 256, D 256, 4 layers, N 16), the
    /// default audio model, the mamba-130m shape, the Mamba-2 reference config (D 256, 4 layers, head dim 64,
    /// N 64, 1 group, chunk 64) and the hybrid M-M*-M- (the same Mamba-2 blocks, attention with 4 heads over 2 KV
    /// heads of dim 64, MLP width 1024).
    static func configs() throws -> [String: MambaConfig] {
        var m2 = ModelSpec()
        (m2.dModel, m2.mixer, m2.layers, m2.headDim, m2.dState, m2.groups, m2.chunkSize) = (256, .mamba2, 4, 64, 64, 1, 64)
        var hy = ModelSpec()
        (hy.dModel, hy.pattern, hy.headDim, hy.dState, hy.groups, hy.chunkSize) = (256, "M-M*-M-", 64, 64, 1, 64)
        (hy.heads, hy.kvHeads, hy.attnHeadDim, hy.mlpWidth) = (4, 2, 64, 1024)
        return [
            "reference": MambaConfig(vocabSize: 256, dModel: 256, layers: 4, dState: 16, dConv: 4, expand: 2),
            "audio": LanguageModelTask.defaultAudioModel,
            "mamba130m": MambaConfig(vocabSize: 256, dModel: 768, layers: 24, dState: 16, dConv: 4, expand: 2),
            "mamba2": try m2.config(vocabSize: 256),
            "hybrid": try hy.config(vocabSize: 256),
        ]
    }

    /// Floating-point operations of one training step (forward + backward) at `(B, L)`: every projection 6·BL·I·O
    /// (forward 2, backward 4); Mamba-2's SSD products per chunk of Q (C·Bᵀ Q²N/2 per group, the masked product
    /// Q²P/2, state and output products 2·Q·P·N per head, causal halves counted once) × 2 for the multiply-adds ×
    /// 3 for forward and backward; attention's causal QKᵀ and PV (2·B·H·L²·Dh forward) × 3.5 with the backward;
    /// the Mamba-1 scan's elementwise work is not counted.
    static func trainingFLOPs(_ c: MambaConfig, B: Int, L: Int) -> Double {
        let BL = Double(B * L), D = Double(c.hiddenSize)
        var macs = Double(c.vocabSize) * D  // the LM head (the embedding is a gather)
        var other = 0.0
        for k in c.layerKinds {
            switch k {
            case .mamba1:
                let (ed, n, r) = (Double(c.intermediateSize), Double(c.stateSize), Double(c.timeStepRank))
                macs += 2 * ed * D + (r + 2 * n) * ed + ed * r + D * ed
            case .mamba2:
                let (ed, gn, h) = (Double(c.ssmInner), Double(c.nGroups * c.stateSize), Double(c.ssmHeads))
                macs += (2 * ed + 2 * gn + h) * D + D * ed
                let q = Double(c.chunkSize), p = Double(c.ssmHeadDim), n = Double(c.stateSize)
                let perChunk = Double(c.nGroups) * q * q * n / 2 + h * (q * q * p / 2 + 2 * q * p * n)
                other += 2 * 3 * perChunk * Double(B) * (Double(L) / q).rounded(.up)
            case .attention:
                let (qd, kv) = (Double(c.attentionHeads * c.attentionHeadDim), Double(c.kvHeads * c.attentionHeadDim))
                macs += (qd + 2 * kv) * D + D * qd
                other += 3.5 * 2 * Double(B) * Double(c.attentionHeads) * Double(L) * Double(L) * Double(c.attentionHeadDim)
            case .mlp:
                macs += 2 * D * Double(c.mlpWidth)
            }
        }
        return 6 * BL * macs + other
    }

    /// OpenBLAS's sgemm rate on this machine for the step's largest projection shape, `(BL × D) · (D × O)ᵀ`.
    static func sgemmRate(M: Int, K: Int, N: Int) -> Double {
        let a = FloatBuffer(randomish: M * K), b = FloatBuffer(randomish: N * K), c = FloatBuffer(count: M * N)
        func run() { Linear.forward(out: c.ptr, ldo: N, inp: a.ptr, ldi: K, weight: b.ptr, bias: nil, M: M, I: K, O: N) }
        run()
        let clock = ContinuousClock()
        var best = Double.infinity
        for _ in 0..<5 {
            let t0 = clock.now
            run()
            best = min(best, secs(clock.now - t0))
        }
        return 2 * Double(M) * Double(K) * Double(N) / best
    }

    func benchTrain(config: MambaConfig, name: String, B: Int, L: Int, steps: Int) throws -> [String: Any] {
        resetPeakRSS()
        let base = currentRSS()
        let model = try MambaModel(config: config, seed: 0)
        let opt = AdamW(layout: model.params.layout, hyper: .init())
        let ws = Workspace(config: config, B: B, L: L, training: true)
        var rng = RNG(seed: 1)
        let ids = (0..<(B * L)).map { _ in Int32(rng.int(below: 256)) }
        let targets = (0..<(B * L)).map { _ in Int32(rng.int(below: 256)) }
        func step() {
            model.zeroGradients()
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws) }
            ids.withUnsafeBufferPointer { i in targets.withUnsafeBufferPointer { t in
                _ = model.backward(ids: i.baseAddress!, targets: t.baseAddress!, ws: ws) } }
            AdamW.clipGradients(model.grads, maxNorm: 1)
            opt.update(params: model.params, grads: model.grads, lr: 1e-3)
        }
        step()  // warm-up
        let clock = ContinuousClock()
        let t0 = clock.now
        for _ in 0..<steps { step() }
        let s = secs(clock.now - t0) / Double(steps)
        let peak = peakRSS()
        let flops = Self.trainingFLOPs(config, B: B, L: L)
        // The sgemm reference: the widest projection of the stack over B·L rows.
        let widest = config.layerKinds.contains(.mamba2)
            ? 2 * config.ssmInner + 2 * config.nGroups * config.stateSize + config.ssmHeads
            : (config.layerKinds.contains(.mamba1) ? 2 * config.intermediateSize : config.mlpWidth)
        let sgemm = Self.sgemmRate(M: B * L, K: config.hiddenSize, N: widest)
        let r: [String: Any] = ["impl": "mambakit", "task": "train", "config": name, "batch": B, "seq_len": L,
                                "threads": Parallel.threads, "tokens_per_s": Double(B * L) / s, "seconds_per_step": s,
                                "peak_rss_mb": Double(peak) / 1e6, "rss_increase_mb": Double(peak - base) / 1e6,
                                "parameters": config.parameterCount, "pattern": config.pattern,
                                "flops_per_step": flops, "gflop_per_s": flops / s / 1e9,
                                "sgemm_gflop_per_s": sgemm / 1e9, "sgemm_shape": [B * L, config.hiddenSize, widest]]
        printErr(String(format: "train %@ B=%d L=%d: %.0f tokens/s, %.3f s/step, peak RSS %.0f MB, %.1f GFLOP/s (sgemm %d×%d×%d: %.1f GFLOP/s)",
                        name, B, L, Double(B * L) / s, s, Double(peak) / 1e6, flops / s / 1e9, B * L, config.hiddenSize,
                        widest, sgemm / 1e9))
        return r
    }

    func benchGenerate(config: MambaConfig, name: String, batch: Int, tokens: Int, weights: StepWeights) throws -> [String: Any] {
        resetPeakRSS()
        let model = try MambaModel(config: config, seed: 0)
        let gen = Generator(model: model, batch: batch, weights: weights)
        let f32Projections = RecurrentStepper.projectionParameters(config) * 4
        let weightBytes = config.parameterCount * 4 - f32Projections + gen.stepper.projectionWeightBytes
        var rng = RNG(seed: 2)
        let prompts = (0..<batch).map { _ in (0..<16).map { _ in Int32(rng.int(below: 256)) } }
        let sampler = try Sampler(temperature: 0)
        var logits = try gen.prefill(prompts)
        let V = config.vocabSize
        var next = [Int32](repeating: 0, count: batch)
        func pick(_ p: UnsafePointer<Float>) { for b in 0..<batch { next[b] = sampler.sample(p + b * V, V: V, rng: &rng) } }
        logits.withUnsafeBufferPointer { pick($0.baseAddress!) }
        // Warm-up steps, then timed steps; memory is checked to be constant in the generated length.
        for _ in 0..<4 { pick(gen.step(next).baseAddress!) }
        let rssBefore = currentRSS()
        // Each step is timed too: on a shared virtual machine a few steps lose the core, and the median step
        // shows the code's own speed beside the mean that the comparison with PyTorch uses.
        var stepSeconds = [Double](repeating: 0, count: tokens)
        let clock = ContinuousClock()
        let t0 = clock.now
        var last = t0
        for i in 0..<tokens {
            pick(gen.step(next).baseAddress!)
            let now = clock.now
            stepSeconds[i] = secs(now - last)
            last = now
        }
        let s = secs(last - t0)
        let rssAfter = currentRSS()
        logits = []
        let tps = Double(tokens * batch) / s
        let median = stepSeconds.sorted()[tokens / 2]
        printErr(String(format: "generate %@ %@ batch %d: %.1f tokens/s (%.3f ms/step; median step %.3f ms = %.1f tokens/s), peak RSS %.0f MB",
                        name, weights.rawValue, batch, tps, s / Double(tokens) * 1e3, median * 1e3, Double(batch) / median,
                        Double(peakRSS()) / 1e6))
        return ["impl": "mambakit", "task": "generate", "config": name, "batch": batch, "threads": Parallel.threads,
                "tokens": tokens, "tokens_per_s": tps, "ms_per_step": s / Double(tokens) * 1e3,
                "tokens_per_s_median_step": Double(batch) / median, "weights": weights.rawValue,
                "weight_bytes_per_token": weightBytes,
                "peak_rss_mb": Double(peakRSS()) / 1e6, "rss_growth_during_generation_mb": Double(rssAfter - rssBefore) / 1e6,
                "parameters": config.parameterCount]
    }

    func runTorch(python: String, threads: Int, tasks: [String]) -> Any {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        var args = ["scripts/bench_torch.py", "--threads", String(threads)]
        if quick { args.append("--quick") } else {
            args += ["--train-steps", String(trainSteps), "--gen-tokens", String(genTokens), "--configs", genConfigs,
                     "--gen-batches", genBatches, "--train-configs", trainConfig, "--train-batch", String(trainBatch),
                     "--classify-lengths", classifyLengths, "--classify-batches", classifyBatches,
                     "--gen-dtypes", genWeights.split(separator: ",").contains("bf16") ? "float32,bfloat16" : "float32"]
        }
        if let trainSeqLen, !quick { args += ["--train-seq-len", String(trainSeqLen)] }
        let torchTasks = tasks.filter { ["train", "generate", "classify"].contains($0) }
        if !torchTasks.isEmpty { args += ["--tasks", torchTasks.joined(separator: ",")] }
        args += (torchArgs ?? "").split(separator: " ").map(String.init)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { return ["error": "cannot run \(python): \(error)"] }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let o = try? JSONSerialization.jsonObject(with: data) else {
            return ["error": "bench_torch.py exited with status \(p.terminationStatus)"]
        }
        return o
    }
}

extension FloatBuffer {
    /// Values in [−1, 1) from a fixed sequence (benchmark operands).
    convenience init(randomish count: Int) {
        self.init(count: count)
        var rng = RNG(seed: UInt64(count))
        for i in 0..<count { ptr[i] = Float(rng.uniform(-1, 1)) }
    }
}

func secs(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18 }

/// Sustained read bandwidth: sums a buffer much larger than the caches, best of several passes, all threads.
func measureBandwidth(megabytes: Int) -> Double {
    let n = megabytes * (1 << 20) / 4
    let buf = FloatBuffer(count: n)
    for i in stride(from: 0, to: n, by: 1024) { buf.ptr[i] = 1 }
    var best = 0.0
    let clock = ContinuousClock()
    for _ in 0..<5 {
        let t0 = clock.now
        var partial = [Float](repeating: 0, count: Parallel.threads)
        partial.withUnsafeMutableBufferPointer { pp in
            Parallel.forRanges(n / 16) { w, lo, hi in
                var acc = SIMD16<Float>()
                let p = UnsafeRawPointer(buf.ptr)
                for i in lo..<hi { acc += p.load(fromByteOffset: i * 64, as: SIMD16<Float>.self) }
                pp[w] = acc.sum()
            }
        }
        let s = secs(clock.now - t0)
        if partial.reduce(0, +).isNaN { return 0 }
        best = max(best, Double(n * 4) / s)
    }
    return best
}

func procStatus(_ key: String) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        return kb * 1024
    }
    return 0
}

func currentRSS() -> Int { procStatus("VmRSS") }
func peakRSS() -> Int { peakMemory() }
func resetPeakRSS() { resetPeakMemory() }

func cpuName() -> String {
    guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
    for line in s.split(separator: "\n") where line.hasPrefix("model name") {
        return line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
    }
    return "unknown"
}
