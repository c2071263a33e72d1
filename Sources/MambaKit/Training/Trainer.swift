import CZlib
import Foundation

/// What a `Trainer` optimises. `trainStep` (of the 0-based `step`) draws its batch from `rng` (so resume is exact),
/// runs forward and backward into the model's gradients (zeroed by the trainer) and returns the mean loss and the
/// tokens it processed;
/// `validate` returns metrics including `val_loss`, or nil when there is nothing held out.
///
/// Data-parallel training (`shard(_:)` with a group of N > 1): every rank draws the whole global batch from the
/// same `rng` (the same draws as one process), trains on its share of the rows, and scales its loss by the global
/// batch's weight, so that the sum over ranks is the one-process gradient; `trainStep` then returns this rank's
/// part of the mean loss and its own tokens (the trainer adds them up), and `validate` splits the held-out data
/// over the ranks and returns the same metrics on every rank.
public protocol TrainingObjective: AnyObject {
    func trainStep(model: MambaModel, rng: inout RNG, step: Int) throws -> (loss: Double, tokens: Int)
    func validate(model: MambaModel) throws -> [String: Double]?
    /// Trains on `group.rank`'s share of every batch from now on (called once, before the first step).
    func shard(_ group: ProcessGroup) throws
    /// Sizes reported at the start (tokens or sequences, as `sizeUnit` says).
    var trainSize: Int { get }
    var validationSize: Int { get }
    var sizeUnit: String { get }
    /// Tokens one validation runs forward (for the trainer's time estimate; 0 when unknown).
    var validationTokens: Int { get }
    /// What a checkpoint must hold beyond the RNG for an exact resume (stateful training's lanes and states): JSON
    /// for trainer_state.json's `objective`, tensors for training_state.safetensors. Called on every rank (it may
    /// gather); what rank 0 returns is written.
    func checkpointState() throws -> (json: [String: Any], tensors: [SafeTensorOut])
    /// Restores what `checkpointState` saved (`json` nil: nothing was saved), checking it.
    func restore(json: Any?, tensors: SafeTensorsFile, at location: String) throws
}

extension TrainingObjective {
    /// An objective that does not know how to share its batches trains in one process only.
    public func shard(_ group: ProcessGroup) throws {
        guard group.size == 1 else {
            throw MambaKitError(.usage, "\(type(of: self)) cannot train across \(group.size) processes; start it without mpirun")
        }
    }
    public var validationTokens: Int { 0 }
    public func checkpointState() throws -> (json: [String: Any], tensors: [SafeTensorOut]) { ([:], []) }
    public func restore(json: Any?, tensors: SafeTensorsFile, at location: String) throws {}
}

/// Next-token prediction on random windows of a `TokenCorpus`; validation is the exact NLL of the held-out tails.
/// With a sequence-length warmup the window of step s is `windowLength(s)` tokens; the workspace is made for the
/// current length (one at a time, so memory is that of the full length at most).
public final class LanguageModelObjective: TrainingObjective {
    public let corpus: TokenCorpus
    let B: Int, L: Int, evalTokens: Int
    let config: MambaConfig
    let windowLength: (Int) -> Int
    var ws: Workspace?
    var ids: [Int32], targets: [Int32]
    /// Stateful training: windows a lane reads before it restarts (0: never); nil: independent random windows.
    let carryReset: Int?
    /// Stateful training: each lane's place in its stream, and the recurrent state of every lane.
    public private(set) var lanes: [TokenCorpus.Lane?]
    var state: RecurrentState?
    /// The processes sharing each batch, and this one's rows of it (all of them in one process).
    var group = ProcessGroup.single
    var rows: Range<Int>

    public init(corpus: TokenCorpus, config: MambaConfig, batchSize B: Int, seqLen L: Int, evalTokens: Int,
                windowLength: @escaping (Int) -> Int = { _ in -1 }, carryReset: Int? = nil) {
        self.carryReset = carryReset
        lanes = [TokenCorpus.Lane?](repeating: nil, count: B)
        self.corpus = corpus
        self.config = config
        self.B = B; self.L = L; self.evalTokens = evalTokens
        self.windowLength = { s in let n = windowLength(s); return n > 0 && n <= L ? n : L }
        rows = 0..<B
        ws = Workspace(config: config, B: B, L: self.windowLength(0), training: true)
        ids = [Int32](repeating: 0, count: B * L)
        targets = [Int32](repeating: 0, count: B * L)
    }

    public var trainSize: Int { corpus.trainTokens }
    public var validationSize: Int { corpus.validationTokens }
    public var sizeUnit: String { "tokens" }
    public var validationTokens: Int { min(evalTokens, corpus.validationTokens) }

    public func shard(_ group: ProcessGroup) throws {
        guard B >= group.size else {
            throw MambaKitError(.usage, "--batch-size \(B) is smaller than the \(group.size) processes: each needs at least one row of the batch")
        }
        self.group = group
        rows = group.share(of: B)
        ws = nil
        state = nil
    }

    public func trainStep(model: MambaModel, rng: inout RNG, step: Int) throws -> (loss: Double, tokens: Int) {
        let L = windowLength(step)
        let rowCount = rows.count
        if ws?.L != L || ws?.B != rowCount {
            // Release the old workspace before making the new one, so that peak memory stays that of one.
            ws = nil
            ws = Workspace(config: config, B: rowCount, L: L, training: true)
        }
        let ws = ws!
        // The whole batch is drawn (the same draws on every rank); this process trains on its rows.
        let first = rows.lowerBound * L
        if let reset = carryReset {
            guard model.trainsFromCarriedState else { throw Self.carryRefusal }
            if state == nil { state = RecurrentState(config: config, batch: rowCount) }
            for b in try corpus.nextWindows(lanes: &lanes, L: L, reset: reset, rng: &rng, ids: &ids, targets: &targets)
            where rows.contains(b) {
                state!.reset(sequence: b - rows.lowerBound)
            }
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress! + first, ws: ws, state: state) }
        } else {
            try corpus.sampleBatch(B: B, L: L, rng: &rng, ids: &ids, targets: &targets)
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress! + first, ws: ws) }
        }
        // The gradient of the mean over the whole batch's counted targets.
        var count = 0
        for i in 0..<(B * L) where targets[i] != CrossEntropy.ignoreIndex { count += 1 }
        let scale: Float = count > 0 ? 1 / Float(count) : 0
        let (sum, _) = ids.withUnsafeBufferPointer { i in
            targets.withUnsafeBufferPointer { t in
                model.backward(ids: i.baseAddress! + first, targets: t.baseAddress! + first, ws: ws, lossScale: scale)
            }
        }
        return (sum / Double(max(count, 1)), rowCount * L)
    }

    /// Why a stack cannot train with a carried state.
    public static let carryRefusal = MambaKitError(.usage, "--carry-state needs a flat stack of Mamba-1, Mamba-2 and MLP blocks: attention layers (whose state is the whole past) and the multi-scale backbone (whose pooled stages continue only at multiples of their period) train on independent windows")

    public func checkpointState() throws -> (json: [String: Any], tensors: [SafeTensorOut]) {
        guard carryReset != nil else { return ([:], []) }
        let lanes: [Any] = lanes.map { l in l.map { [$0.stream, $0.position, $0.windows] as Any } ?? NSNull() }
        // Each rank holds its rows' states; the checkpoint holds the whole batch's (gathered onto rank 0).
        var tensors: [SafeTensorOut] = []
        for (i, t) in (state?.tensors ?? []).enumerated() {
            let perRow = t.count / max(rows.count, 1)
            let ranges = (0..<group.size).map { r -> Range<Int> in
                let share = group.share(of: B, rank: r)
                return share.lowerBound * perRow..<share.upperBound * perRow
            }
            var full = [Float](repeating: 0, count: group.isRoot ? B * perRow : 0)
            try full.withUnsafeMutableBufferPointer { f in
                try group.gather(t.ptr, ranges: ranges, into: group.isRoot ? f.baseAddress : nil)
            }
            tensors.append(SafeTensorOut(name: "carry.\(i)", shape: [B * perRow], floats: full))
        }
        return (["lanes": lanes], tensors)
    }

    public func restore(json: Any?, tensors: SafeTensorsFile, at location: String) throws {
        guard carryReset != nil else { return }
        // A checkpoint of a run without a carried state: lanes start afresh.
        guard let json else { return }
        guard let o = json as? [String: Any], let list = o["lanes"] as? [Any], list.count == B else {
            throw MambaKitError(.format, "objective.lanes must list the \(B) lanes of the batch", at: location)
        }
        var restored: [TokenCorpus.Lane?] = []
        for (b, item) in list.enumerated() {
            if item is NSNull { restored.append(nil); continue }
            guard let v = item as? [Any], v.count == 3, v.allSatisfy({ $0 is NSNumber && !jsonIsBool($0) }) else {
                throw MambaKitError(.format, "objective.lanes[\(b)] must be [stream, position, windows] or null", at: location)
            }
            let n = v.map { ($0 as! NSNumber).doubleValue }
            guard n.allSatisfy({ $0 >= 0 && $0 == $0.rounded() && $0 < 9e15 }) else {
                throw MambaKitError(.format, "objective.lanes[\(b)] must hold non-negative integers", at: location)
            }
            let (s, p, w) = (Int(n[0]), Int(n[1]), Int(n[2]))
            guard s < corpus.streamCount, p <= corpus.trainEnds[s] else {
                throw MambaKitError(.format, "objective.lanes[\(b)] points outside the training data (stream \(s), position \(p))", at: location)
            }
            restored.append(TokenCorpus.Lane(stream: s, position: p, windows: w))
        }
        let whole = RecurrentState(config: config, batch: B)
        for (i, t) in whole.tensors.enumerated() {
            try tensors.copyFloats("carry.\(i)", into: t.ptr, count: t.count)
        }
        // This rank's rows of the batch.
        let st = RecurrentState(config: config, batch: rows.count)
        for (t, w) in zip(st.tensors, whole.tensors) {
            let perRow = w.count / B
            t.ptr.update(from: w.ptr + rows.lowerBound * perRow, count: rows.count * perRow)
        }
        lanes = restored
        state = st
    }

    public func validate(model: MambaModel) throws -> [String: Double]? {
        guard corpus.validationTokens > 1 else { return nil }
        let v = try validationLoss(model: model)
        return ["val_loss": v, "val_bits_per_token": v / log(2.0)]
    }

    /// Exact mean NLL over the held-out tails (at most `evalTokens` predicted tokens, spread over the streams; with
    /// more than evalTokens/256 streams, over that many of them, evenly spaced, so that a corpus of many files is
    /// not validated a few tokens at a time).
    public func validationLoss(model: MambaModel) throws -> Double {
        var total = Evaluator.Result(sum: 0, count: 0)
        var streams = (0..<corpus.streamCount).filter { corpus.count(ofStream: $0) - corpus.trainEnds[$0] >= 2 }
        guard !streams.isEmpty else { return .nan }
        let most = max(1, evalTokens / 256)
        if streams.count > most { streams = (0..<most).map { streams[$0 * streams.count / most] } }
        let per = max(2, evalTokens / streams.count + 1)
        // Each rank evaluates its share of the streams; the sums are added in rank order.
        for s in streams[group.share(of: streams.count)] {
            let end = corpus.trainEnds[s]
            let tail = try corpus.tokens(ofStream: s, end..<min(corpus.count(ofStream: s), end + per))
            let r = try Evaluator.nll(model: model, tokens: tail, chunk: L)
            total.sum += r.sum
            total.count += r.count
        }
        let sums = try group.sumInRankOrder([total.sum, Double(total.count)])
        total = Evaluator.Result(sum: sums[0], count: Int(sums[1]))
        return total.meanLoss
    }
}

/// Training of a `MambaModel` on a `TrainingObjective`: AdamW with decoupled weight decay, global gradient
/// clipping, warmup + cosine schedule, periodic validation, optional early stopping that keeps the best model,
/// `metrics.jsonl`, atomic checkpoints, and bit-exact resume (model, both AdamW moments, step counters, the data RNG
/// and the early-stopping record are all saved).
///
/// Run directory:
///
///     OUT/config.json, OUT/model.safetensors      the latest model (with `keepBest`, the best-validated one)
///     OUT/checkpoints/step-NNNNNNNN/              a complete checkpoint: the model files plus
///         training_state.safetensors              AdamW moments `m.<name>`, `v.<name>`
///         trainer_state.json                      step, RNG words, options, data fingerprint
///     OUT/checkpoints/latest                      the name of the newest complete checkpoint
///     OUT/metrics.jsonl                           one JSON object per logged step / validation
///
/// A checkpoint directory is written under a temporary name and renamed into place, and `latest` is replaced
/// atomically after it, so an interrupted save never leaves a checkpoint that looks whole.
public final class Trainer {
    public struct Options: Equatable, Sendable {
        public var steps = 1000
        public var batchSize = 8
        public var seqLen = 512
        public var lr = 2e-3
        public var minLRRatio = 0.1
        public var warmup = 100
        public var weightDecay = 0.1
        public var beta1 = 0.9
        public var beta2 = 0.95
        public var eps = 1e-8
        public var gradClip = 1.0
        public var seed: UInt64 = 0
        public var valFraction = 0.05
        public var evalEvery = 200
        public var evalTokens = 65536
        public var checkpointEvery = 500
        public var logEvery = 10
        public var keepCheckpoints = 2
        /// Keep in OUT the model with the lowest validation loss (not the latest).
        public var keepBest = false
        /// Stop after this many validations without a lower validation loss (0: never).
        public var patience = 0
        /// Language models: over the first `seqLenWarmup` steps the window grows from short to `seqLen`
        /// (`windowLength(at:)`); 0: always `seqLen`.
        public var seqLenWarmup = 0
        /// Language models: stateful training. Each batch lane walks its stream window after window, and the
        /// recurrent state after a window is the next window's initial state (detached: truncated backpropagation
        /// through time); a lane restarts at a random start with a zero state at the end of its stream's training
        /// part, or after `carryReset` windows (0: only at the end of the stream). The default, 16, keeps the batch
        /// mixing the corpus: lanes that restart only at stream ends settle in the longest files (starts are drawn in
        /// proportion to length) and the run sees a handful of them (BENCHMARKS, "Long streams").
        public var carryState = false
        public var carryReset = 16
        public init() {}

        /// Options as saved in trainer_state.json, checked like every other source of settings: a value of the
        /// wrong type or out of its range is an error naming `source`; missing keys keep their defaults (older
        /// checkpoints lack some), unknown keys are ignored.
        init(json o: [String: Any], source: SettingSource) throws {
            func number(_ k: String) throws -> NSNumber? {
                guard let v = o[k], !(v is NSNull) else { return nil }
                guard let n = v as? NSNumber, !jsonIsBool(v) else {
                    throw MambaKitError(.format, "\(k) must be a number (got \(v))", at: source.location)
                }
                return n
            }
            func i(_ k: String) throws -> Int? {
                guard let n = try number(k) else { return nil }
                let d = n.doubleValue
                guard d.isFinite, d == d.rounded(), abs(d) <= 9e15 else {
                    throw MambaKitError(.format, "\(k) must be an integer (got \(n))", at: source.location)
                }
                let checked: Int = try Settings.check(k, Int(d), source)
                return checked
            }
            func d(_ k: String) throws -> Double? {
                guard let n = try number(k) else { return nil }
                let v = n.doubleValue
                // beta1, beta2, eps and min_lr_ratio have no flags; every key is in the table.
                let checked: Double = try Settings.check(k, v, source)
                return checked
            }
            if let v = try i("steps") { steps = v }
            if let v = try i("batch_size") { batchSize = v }
            if let v = try i("seq_len") { seqLen = v }
            if let v = try d("lr") { lr = v }
            if let v = try d("min_lr_ratio") { minLRRatio = v }
            if let v = try i("warmup") { warmup = v }
            if let v = try d("weight_decay") { weightDecay = v }
            if let v = try d("beta1") { beta1 = v }
            if let v = try d("beta2") { beta2 = v }
            if let v = try d("eps") { eps = v }
            if let v = try d("grad_clip") { gradClip = v }
            if let v = o["seed"], !(v is NSNull) {
                guard let t = v as? String, let u = UInt64(t) else {
                    throw MambaKitError(.format, "seed must be a decimal string (got \(v))", at: source.location)
                }
                seed = u
            }
            if let v = try d("val_fraction") { valFraction = v }
            if let v = try i("eval_every") { evalEvery = v }
            if let v = try i("eval_tokens") { evalTokens = v }
            if let v = try i("checkpoint_every") { checkpointEvery = v }
            if let v = try i("log_every") { logEvery = v }
            func bool(_ k: String) throws -> Bool? {
                guard let v = o[k], !(v is NSNull) else { return nil }
                guard jsonIsBool(v), let b = (v as? NSNumber)?.boolValue else {
                    throw MambaKitError(.format, "\(k) must be true or false (got \(v))", at: source.location)
                }
                return b
            }
            if let v = try bool("keep_best") { keepBest = v }
            if let v = try i("patience") { patience = v }
            if let v = try i("seq_len_warmup") { seqLenWarmup = v }
            if let v = try bool("carry_state") { carryState = v }
            if let v = try i("carry_reset") { carryReset = v }
        }

        /// Checks every option against `Settings` (a library caller's options go through the same ranges as flags
        /// and files).
        public func validate(_ source: SettingSource = .api("Trainer.Options")) throws {
            try Settings.check("steps", steps, source); try Settings.check("batch_size", batchSize, source)
            try Settings.check("seq_len", seqLen, source); try Settings.check("lr", lr, source)
            try Settings.check("min_lr_ratio", minLRRatio, source); try Settings.check("warmup", warmup, source)
            try Settings.check("weight_decay", weightDecay, source); try Settings.check("beta1", beta1, source)
            try Settings.check("beta2", beta2, source); try Settings.check("eps", eps, source)
            try Settings.check("grad_clip", gradClip, source); try Settings.check("val_fraction", valFraction, source)
            try Settings.check("eval_every", evalEvery, source); try Settings.check("eval_tokens", evalTokens, source)
            try Settings.check("checkpoint_every", checkpointEvery, source)
            try Settings.check("log_every", logEvery, source)
            try Settings.check("keep_checkpoints", keepCheckpoints, source)
            try Settings.check("patience", patience, source)
            try Settings.check("seq_len_warmup", seqLenWarmup, source)
            try Settings.check("carry_reset", carryReset, source)
        }

        /// The window length at `step` (0-based): `seqLen`, or during the first `seqLenWarmup` steps a length
        /// growing linearly from min(64, seqLen), rounded down to a multiple of 64 (few distinct shapes).
        public func windowLength(at step: Int) -> Int {
            guard seqLenWarmup > 0, step < seqLenWarmup else { return seqLen }
            let start = min(64, seqLen)
            let grown = start + (seqLen - start) * step / seqLenWarmup
            return max(start, grown / 64 * 64)
        }

        var json: [String: Any] {
            ["steps": steps, "batch_size": batchSize, "seq_len": seqLen, "lr": lr, "min_lr_ratio": minLRRatio,
             "warmup": warmup, "weight_decay": weightDecay, "beta1": beta1, "beta2": beta2, "eps": eps,
             "grad_clip": gradClip, "seed": String(seed), "val_fraction": valFraction, "eval_every": evalEvery,
             "eval_tokens": evalTokens, "checkpoint_every": checkpointEvery, "log_every": logEvery,
             "keep_best": keepBest, "patience": patience, "seq_len_warmup": seqLenWarmup, "carry_state": carryState,
             "carry_reset": carryReset]
        }
    }

    public enum Event {
        case started(step: Int, of: Int, parameters: Int, trainSize: Int, validationSize: Int, unit: String)
        case step(step: Int, of: Int, loss: Double, lr: Double, gradNorm: Double, tokensPerSecond: Double, elapsed: Double)
        case validation(step: Int, metrics: [String: Double])
        case checkpoint(step: Int, path: String)
        case earlyStop(step: Int, bestStep: Int, bestLoss: Double)
        /// The time the run will take, measured on its first steps: seconds per training step, and the seconds
        /// left for all remaining steps and validations (validation priced at a third of a training step per
        /// token, the forward pass alone).
        case estimate(step: Int, secondsPerStep: Double, remainingSeconds: Double, validations: Int)
        /// A line of information about the run (its budget).
        case note(String)
    }

    public let model: MambaModel
    public let objective: TrainingObjective
    public let options: Options
    public let outDir: String
    /// Identifies the training data (paths and sizes) so a resume on other data is refused.
    public let dataFingerprint: [String]
    /// The processes training this model together (data-parallel over MPI), and the exchange of their
    /// gradients (nil in one process). Only rank 0 writes: checkpoints, metrics, the model, events.
    public let group: ProcessGroup
    public let exchange: ShardedGradients?
    let optimizer: AdamW
    var rng: RNG
    public private(set) var step = 0
    /// The lowest validation loss so far, its step, and validations since (early stopping; saved in checkpoints).
    public private(set) var bestLoss = Double.infinity
    public private(set) var bestStep = 0
    var sinceBest = 0
    /// Training seconds before this run (restored on resume), and up to the latest step.
    var elapsedBefore = 0.0
    var elapsedNow = 0.0

    /// A language-model trainer over `corpus`.
    public convenience init(model: MambaModel, corpus: TokenCorpus, options: Options, outDir: String,
                            dataFingerprint: [String], group: ProcessGroup = .world) throws {
        let objective = LanguageModelObjective(corpus: corpus, config: model.config, batchSize: options.batchSize,
                                               seqLen: options.seqLen, evalTokens: options.evalTokens,
                                               windowLength: options.windowLength(at:),
                                               carryReset: options.carryState ? options.carryReset : nil)
        try self.init(model: model, objective: objective, options: options, outDir: outDir,
                      dataFingerprint: dataFingerprint, group: group)
    }

    /// A trainer of `model` on `objective`. With a `group` of N > 1 processes (`ProcessGroup.world` under
    /// `mpirun`), the objective trains on this rank's share of each batch, the gradients are reduce-scattered and
    /// this rank updates its slice of the parameters (ZeRO-1, `ShardedGradients`).
    public init(model: MambaModel, objective: TrainingObjective, options: Options, outDir: String,
                dataFingerprint: [String], group: ProcessGroup = .world) throws {
        self.model = model
        self.objective = objective
        self.options = options
        self.outDir = outDir
        self.dataFingerprint = dataFingerprint
        self.group = group
        let layout = model.params.layout
        if group.size > 1 {
            try ShardedGradients.check(layout: layout, group: group)
            let x = ShardedGradients(layout: layout, group: group)
            exchange = x
            model.layerGradientsReady = { [unowned model] l in x.layerReady(l, grads: model.grads) }
        } else {
            exchange = nil
            model.layerGradientsReady = nil
        }
        try objective.shard(group)
        optimizer = AdamW(layout: layout, hyper: .init(
            beta1: Float(options.beta1), beta2: Float(options.beta2), eps: Float(options.eps),
            weightDecay: Float(options.weightDecay)), range: exchange?.own)
        rng = RNG(seed: options.seed)
    }

    public var schedule: CosineSchedule {
        CosineSchedule(peak: options.lr, minimum: options.lr * options.minLRRatio,
                       warmup: min(options.warmup, options.steps), total: options.steps)
    }

    var checkpointsDir: String { outDir + "/checkpoints" }
    var metricsPath: String { outDir + "/metrics.jsonl" }

    /// Trains until `options.steps`. `shouldStop` is polled after every step (Ctrl-C): the trainer then saves a
    /// checkpoint and throws `.interrupted`. A non-finite loss or gradient throws `.numeric` without saving, so the
    /// last good checkpoint stays as it was.
    public func run(events allEvents: (Event) -> Void = { _ in }, shouldStop: () -> Bool = { false }) throws {
        try options.validate()
        let root = group.isRoot
        // Rank 0 reports and writes; the other ranks compute.
        func events(_ e: Event) { if root { allEvents(e) } }
        // One writer per run directory; what a killed writer left half-written goes first.
        let lock = root ? try RunLock(directory: outDir) : nil
        defer { withExtendedLifetime(lock) {} }
        if root {
            RunLock.removeStaleTemporaries(in: outDir)
            RunLock.removeStaleTemporaries(in: checkpointsDir)
        }
        let o = options
        let metrics = root ? try MetricsLog(path: metricsPath, keepThroughStep: step) : nil
        try checkRanksAgree()
        if group.size > 1 {
            events(.note("data-parallel over \(group.size) processes (\(group.libraryVersion)): \(o.batchSize / group.size)–\((o.batchSize + group.size - 1) / group.size) rows of each batch of \(o.batchSize) per process, optimizer state sharded, \(ByteCountFormatter.string(fromByteCount: Int64(exchange?.bytesPerStep ?? 0), countStyle: .binary)) sent per step per process"))
        }
        events(.started(step: step, of: o.steps, parameters: model.config.parameterCount,
                        trainSize: objective.trainSize, validationSize: objective.validationSize,
                        unit: objective.sizeUnit))
        let clock = ContinuousClock()
        let t0 = clock.now
        let startStep = step
        var estimateStart = clock.now
        var estimateTokens = 0
        var windowStart = clock.now
        var windowTokens = 0
        let own = exchange?.own ?? 0..<model.grads.layout.total
        while step < o.steps {
            model.zeroGradients()
            let (rankLoss, rankTokens) = try objective.trainStep(model: model, rng: &rng, step: step)
            // This rank's slice of the summed gradient; then the loss, tokens, gradient norm and the decision to
            // stop, added over the ranks in rank order (the same on every rank).
            try exchange?.reduce(grads: model.grads)
            let agreed = try group.sumInRankOrder([rankLoss, Double(rankTokens),
                                                   AdamW.squaredNorm(model.grads, range: own), shouldStop() ? 1 : 0])
            let (loss, tokens, gradNorm) = (agreed[0], Int(agreed[1]), agreed[2].squareRoot())
            AdamW.scale(model.grads, range: own, by: AdamW.clipCoefficient(norm: gradNorm, maxNorm: Float(o.gradClip)))
            guard loss.isFinite, gradNorm.isFinite else {
                let last = (try? String(contentsOfFile: checkpointsDir + "/latest", encoding: .utf8))
                    .map { "the last good checkpoint, \($0.trimmingCharacters(in: .whitespacesAndNewlines)), is kept" }
                    ?? "no checkpoint had been written"
                throw MambaKitError(.numeric, "loss became \(loss.isFinite ? "finite but the gradient norm \(gradNorm)" : "\(loss)") at step \(step + 1); \(last) (lower --lr?)", at: outDir)
            }
            let lr = schedule.rate(step: step + 1)
            optimizer.update(params: model.params, grads: model.grads, lr: Float(lr))
            try exchange?.gatherParameters(model.params)
            step += 1
            windowTokens += tokens
            let now = clock.now
            let elapsed = elapsedBefore + seconds(now - t0)
            elapsedNow = elapsed
            // The first step pays for warm-up (allocation, page faults); the estimate times the next few.
            if step == startStep + 1 { estimateStart = now; estimateTokens = 0 } else { estimateTokens += tokens }
            if step == startStep + 1 + Self.estimateSteps && step < o.steps {
                let perStep = seconds(now - estimateStart) / Double(Self.estimateSteps)
                let tokensPerStep = Double(estimateTokens) / Double(Self.estimateSteps)
                // Steps left, in steps of the length just timed (a sequence-length warmup makes later steps
                // longer: its remaining part is priced at its mean length, halfway to the full one).
                let timed = Double((step - Self.estimateSteps..<step).reduce(0) { $0 + o.windowLength(at: $1) }) / Double(Self.estimateSteps)
                let warming = max(0, min(o.seqLenWarmup, o.steps) - step)
                let full = o.steps - step - warming
                let lengths = Double(warming) * Double(o.windowLength(at: step) + o.seqLen) / 2 + Double(full) * Double(o.seqLen)
                let left = lengths / max(timed, 1)
                let validations = objective.validationSize == 0 ? 0
                    : (o.evalEvery > 0 ? o.steps / o.evalEvery - step / o.evalEvery : 0)
                        + (o.evalEvery > 0 && o.steps % o.evalEvery == 0 ? 0 : 1)
                let perValidation = perStep * Double(objective.validationTokens) / max(tokensPerStep, 1) / 3
                events(.estimate(step: step, secondsPerStep: perStep,
                                 remainingSeconds: left * perStep + Double(validations) * perValidation,
                                 validations: validations))
            }
            if step % o.logEvery == 0 || step == o.steps || step == startStep + 1 {
                let tps = Double(windowTokens) / max(seconds(now - windowStart), 1e-9)
                events(.step(step: step, of: o.steps, loss: loss, lr: lr, gradNorm: gradNorm, tokensPerSecond: tps,
                             elapsed: elapsed))
                try metrics?.append(["step": step, "loss": loss, "lr": lr, "grad_norm": gradNorm,
                                     "tokens_per_s": tps, "elapsed_s": elapsed])
                windowStart = now
                windowTokens = 0
            }
            var earlyStop = false
            if (o.evalEvery > 0 && step % o.evalEvery == 0) || step == o.steps,
               let v = try objective.validate(model: model) {
                events(.validation(step: step, metrics: v))
                var row: [String: Any] = ["step": step]
                for (k, x) in v { row[k] = x }
                try metrics?.append(row)
                let loss = v["val_loss"] ?? .nan
                if loss < bestLoss {
                    bestLoss = loss
                    bestStep = step
                    sinceBest = 0
                    if o.keepBest { try rootWrites { try model.save(directory: outDir) } }
                } else {
                    sinceBest += 1
                    earlyStop = o.patience > 0 && sinceBest >= o.patience
                }
            }
            let stop = agreed[3] > 0
            if (o.checkpointEvery > 0 && step % o.checkpointEvery == 0) || step == o.steps || stop || earlyStop {
                let path = try saveCheckpoint()
                events(.checkpoint(step: step, path: path))
            }
            if earlyStop && !stop {
                events(.earlyStop(step: step, bestStep: bestStep, bestLoss: bestLoss))
                try metrics?.append(["step": step, "early_stop": true, "best_step": bestStep, "best_val_loss": bestLoss])
                break
            }
            if stop && step < o.steps {
                throw MambaKitError(.interrupted, "interrupted at step \(step) of \(o.steps); resume with --resume",
                                    at: checkpointsDir + "/" + Self.checkpointName(step))
            }
        }
        if let x = exchange, step > startStep {
            let n = Double(step - startStep)
            let perStep = seconds(clock.now - t0) / n
            events(.note(String(format: "communication (rank 0): %.2f MB sent per step; %.1f ms per step in the gradient exchange and parameter all-gather, %.1f ms of it waiting after backward (overlap %@), of %.1f ms per step", Double(x.bytesPerStep) / 1e6, x.exchangeSeconds / n * 1e3, x.finalWaitSeconds / n * 1e3, x.overlap ? "on" : "off", perStep * 1e3)))
        }
    }

    /// With several processes: every rank must start from the same parameters, step, RNG, options and data (a
    /// resume on hosts that see different run directories, or ranks given different flags, would otherwise train
    /// N different models that only share gradients). Compares a CRC-32 of the parameters and a hash of the rest.
    func checkRanksAgree() throws {
        guard group.size > 1 else { return }
        let crc = crc32_z(0, UnsafeRawPointer(model.params.base).assumingMemoryBound(to: Bytef.self),
                          model.params.layout.total * MemoryLayout<Float>.stride)
        let settings = (try? JSONSerialization.data(withJSONObject: options.json, options: [.sortedKeys]))
            .map { String(decoding: $0, as: UTF8.self) } ?? ""
        let key = TokenStore.fnv1a("\(step) \(optimizer.step) \(rng.words) \(dataFingerprint) \(settings)")
        let mine = [Double(crc), Double(key >> 32), Double(key & 0xffff_ffff)]
        let all = try group.allgather(mine)
        for (r, v) in all.enumerated() where v != all[0] {
            throw MambaKitError(.distributed, "rank \(r) starts from other \(v[0] != all[0][0] ? "parameters" : "settings, data or step") than rank 0: every rank must be given the same flags and see the same --data and --out (a shared file system for --resume)")
        }
    }

    /// Steps timed (after the first) for the `.estimate` event.
    static let estimateSteps = 3

    /// `step-NNNNNNNN`, the directory name of the checkpoint at `step`.
    public static func checkpointDirectoryName(_ step: Int) -> String { checkpointName(step) }

    static func checkpointName(_ step: Int) -> String {
        "step-" + String(repeating: "0", count: max(0, 8 - String(step).count)) + String(step)
    }

    /// Writes a complete checkpoint directory, points `latest` at it, refreshes OUT's model files, and prunes
    /// older checkpoints. Returns the checkpoint's path.
    /// With several processes every rank calls this: the optimizer's moments and the objective's state are
    /// gathered onto rank 0, which writes; every rank learns whether it succeeded.
    @discardableResult
    public func saveCheckpoint() throws -> String {
        let name = Self.checkpointName(step)
        // Each view's moments, gathered view by view from the slices' owners onto rank 0 (so that rank 0 holds
        // no more than one process writing a checkpoint does: one copy of each tensor); empty on other ranks.
        var moments: [(m: [Float], v: [Float])] = []
        let base = optimizer.range.lowerBound
        for view in model.params.layout.views {
            let end = view.offset + view.count
            if let x = exchange {
                let parts = x.slices.map { s -> Range<Int> in
                    let lo = min(max(view.offset, s.lowerBound), end), hi = max(min(end, s.upperBound), lo)
                    return (lo - view.offset)..<(hi - view.offset)
                }
                let mine = parts[group.rank].lowerBound + view.offset - base
                var pair: (m: [Float], v: [Float]) = ([], [])
                if group.isRoot { pair = ([Float](repeating: 0, count: view.count), [Float](repeating: 0, count: view.count)) }
                try pair.m.withUnsafeMutableBufferPointer { b in
                    try group.gather(optimizer.m.ptr + max(0, mine), ranges: parts, into: group.isRoot ? b.baseAddress : nil)
                }
                try pair.v.withUnsafeMutableBufferPointer { b in
                    try group.gather(optimizer.v.ptr + max(0, mine), ranges: parts, into: group.isRoot ? b.baseAddress : nil)
                }
                moments.append(pair)
            } else {
                moments.append((Array(UnsafeBufferPointer(start: optimizer.m.ptr + view.offset - base, count: view.count)),
                                Array(UnsafeBufferPointer(start: optimizer.v.ptr + view.offset - base, count: view.count))))
            }
        }
        let carried = try objective.checkpointState()
        try rootWrites { try writeCheckpoint(name: name, moments: moments, carried: carried) }
        return checkpointsDir + "/" + name
    }

    /// Runs `body` on rank 0, and tells every rank whether it failed: rank 0 throws its error, the others an
    /// error that names rank 0's failure as the reason to stop.
    func rootWrites(_ body: () throws -> Void) throws {
        var failure: Error? = nil
        if group.isRoot { do { try body() } catch { failure = error } }
        guard group.size > 1 else { if let failure { throw failure }; return }
        let failed = try group.sumInRankOrder([failure == nil ? 0 : 1])[0] > 0
        if let failure { throw failure }
        if failed { throw MambaKitError(.distributed, "rank 0 could not write to the run directory (its error says why); stopping", at: outDir) }
    }

    /// Rank 0's part of `saveCheckpoint`: `moments` are each view's whole moments, in layout order.
    func writeCheckpoint(name: String, moments: [(m: [Float], v: [Float])],
                         carried: (json: [String: Any], tensors: [SafeTensorOut])) throws {
        try ensureDirectory(checkpointsDir)
        let final = checkpointsDir + "/" + name
        let tmp = checkpointsDir + "/.\(name).tmp-\(getpid())"
        try? FileManager.default.removeItem(atPath: tmp)
        try ensureDirectory(tmp)
        do {
            try model.save(directory: tmp)
            var tensors: [SafeTensorOut] = []
            for (view, (m, v)) in zip(model.params.layout.views, moments) {
                tensors.append(SafeTensorOut(name: "m." + view.name, shape: view.shape, floats: m))
                tensors.append(SafeTensorOut(name: "v." + view.name, shape: view.shape, floats: v))
            }
            tensors += carried.tensors
            try SafeTensorsFile.write(tensors, metadata: ["format": "mambakit-training"],
                                      to: tmp + "/training_state.safetensors")
            var state: [String: Any] = [
                "step": step, "adam_step": optimizer.step, "rng": rng.words.map { String($0, radix: 16) },
                "elapsed_s": elapsedNow, "options": options.json, "data": dataFingerprint,
                "best_val_loss": bestLoss.isFinite ? bestLoss : NSNull(), "best_step": bestStep, "since_best": sinceBest,
            ]
            if !carried.json.isEmpty { state["objective"] = carried.json }
            let json = try JSONSerialization.data(withJSONObject: state, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(json, to: tmp + "/trainer_state.json")
            if FileManager.default.fileExists(atPath: final) { try FileManager.default.removeItem(atPath: final) }
            guard rename(tmp, final) == 0 else {
                throw MambaKitError(.io, "cannot rename checkpoint into place: \(String(cString: strerror(errno)))", at: final)
            }
            fsyncDirectory(checkpointsDir)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        try AtomicFile.writeText(name + "\n", to: checkpointsDir + "/latest")
        // With keepBest, OUT holds the best-validated model; before any validation, the latest.
        if !options.keepBest || !bestLoss.isFinite { try model.save(directory: outDir) }
        // Prune: keep the newest `keepCheckpoints` complete checkpoints.
        let all = ((try? FileManager.default.contentsOfDirectory(atPath: checkpointsDir)) ?? [])
            .filter { $0.hasPrefix("step-") }.sorted()
        for old in all.dropLast(max(1, options.keepCheckpoints)) where old != name {
            try? FileManager.default.removeItem(atPath: checkpointsDir + "/" + old)
        }
    }

    /// The model config and options of the run in `outDir` (its latest checkpoint), or nil when there is none:
    /// a resumed run takes every setting it is not given again from here.
    public static func savedRun(outDir: String) throws -> (config: MambaConfig, options: Options)? {
        let latestPath = outDir + "/checkpoints/latest"
        guard let latest = try? String(contentsOfFile: latestPath, encoding: .utf8) else { return nil }
        let dir = outDir + "/checkpoints/" + latest.trimmingCharacters(in: .whitespacesAndNewlines)
        let config = try MambaConfig.load(path: dir + "/" + MambaModel.configFile)
        let statePath = dir + "/trainer_state.json"
        guard let options = try TrainerState(path: statePath).options else {
            throw MambaKitError(.format, "options are missing", at: statePath)
        }
        return (config, options)
    }

    /// Restores model, optimizer, step and RNG from `OUT/checkpoints/latest`. Refuses a checkpoint made with
    /// another model shape or other data.
    public func resume() throws {
        let latestPath = checkpointsDir + "/latest"
        guard let latest = try? String(contentsOfFile: latestPath, encoding: .utf8) else {
            throw MambaKitError(.io, "no checkpoint to resume from (checkpoints/latest is missing)", at: outDir)
        }
        let dir = checkpointsDir + "/" + latest.trimmingCharacters(in: .whitespacesAndNewlines)
        let saved = try MambaModel.load(directory: dir)
        guard saved.config == model.config else {
            throw MambaKitError(.config, "the checkpoint's model shape differs from the requested one", at: dir)
        }
        model.params.copy(from: saved.params)
        let statePath = dir + "/trainer_state.json"
        let st = try TrainerState(path: statePath)
        if let fp = st.data, fp != dataFingerprint {
            throw MambaKitError(.usage, "the checkpoint was trained on other data (\(fp.joined(separator: ", "))); resume with the same --data", at: statePath)
        }
        if let so = st.optionsJSON {
            for key in ["batch_size", "seq_len", "seed"] where "\(so[key] ?? "")" != "\(options.json[key] ?? "")" {
                throw MambaKitError(.usage, "the checkpoint used \(key) = \(so[key] ?? "?"), this run asks for \(options.json[key] ?? "?"); resume with the same value", at: statePath)
            }
        }
        guard st.step <= options.steps else {
            throw MambaKitError(.usage, "the checkpoint is at step \(st.step), past this run's \(options.steps) steps", at: statePath)
        }
        let ts = try SafeTensorsFile(path: dir + "/training_state.safetensors")
        // This rank's part of each moment (all of it in one process): any number of processes resumes any
        // checkpoint, which holds the whole moments.
        let base = optimizer.range.lowerBound
        for v in model.params.layout.views {
            let part = optimizer.part(of: v)
            if part.isEmpty { continue }
            for (key, buffer) in [("m.", optimizer.m), ("v.", optimizer.v)] {
                if part.count == v.count {
                    try ts.copyFloats(key + v.name, into: buffer.ptr + (v.offset - base), count: v.count)
                } else {
                    var whole = [Float](repeating: 0, count: v.count)
                    try whole.withUnsafeMutableBufferPointer { try ts.copyFloats(key + v.name, into: $0.baseAddress!, count: v.count) }
                    for i in part { buffer.ptr[i - base] = whole[i - v.offset] }
                }
            }
        }
        try objective.restore(json: st.objective, tensors: ts, at: statePath)
        step = st.step
        optimizer.step = st.adamStep
        rng = RNG(words: st.rngWords)
        elapsedBefore = st.elapsed
        bestLoss = st.bestLoss
        bestStep = st.bestStep
        sinceBest = st.sinceBest
        elapsedNow = elapsedBefore
    }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

func fsyncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY)
    if fd >= 0 { fsync(fd); close(fd) }
}

/// Appends JSON lines to `metrics.jsonl`, flushing each. On resume it first drops lines logged after the
/// checkpoint's step, so the file reads as one uninterrupted run.
final class MetricsLog {
    let path: String
    let handle: FileHandle

    init(path: String, keepThroughStep: Int) throws {
        self.path = path
        if FileManager.default.fileExists(atPath: path) {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            let kept = text.split(separator: "\n").filter { line in
                guard keepThroughStep > 0,
                      let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let s = o["step"] as? Int else { return false }
                return s <= keepThroughStep
            }
            try AtomicFile.writeText(kept.map { $0 + "\n" }.joined(), to: path)
        } else {
            try AtomicFile.writeText("", to: path)
        }
        guard let h = FileHandle(forWritingAtPath: path) else {
            throw MambaKitError(.io, "cannot open metrics log for writing", at: path)
        }
        handle = h
        do { try handle.seekToEnd() } catch { throw MambaKitError(.io, "cannot write the metrics log: \(ioReason(error))", at: path) }
    }

    deinit { try? handle.close() }

    func append(_ obj: [String: Any]) throws {
        var o = obj
        for (k, v) in o { if let d = v as? Double, !d.isFinite { o[k] = NSNull() } }
        let data = try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])
        do { try handle.write(contentsOf: data + Data([10])) } catch {
            throw MambaKitError(.io, "cannot write the metrics log: \(ioReason(error))", at: path)
        }
    }
}
