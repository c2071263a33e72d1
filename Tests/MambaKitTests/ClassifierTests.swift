import Foundation
import MambaKit
import Testing

/// A tiny classifier (TinyModel.tied's backbone, 3 classes) moved away from its initialisation like TinyModel.
func tinyClassifier(pooling: Pooling, classes: [String] = ["a", "b", "c"], seed: UInt64 = 7) throws -> SequenceClassifier {
    var c = TinyModel.tied.config
    c.classLabels = classes
    let m = try MambaModel(config: c, seed: seed)
    var rng = RNG(seed: 99)
    for v in m.params.layout.views {
        var (shift, s) = (0.0, 0.08)
        if v.name.hasSuffix("dt_proj.bias") { (shift, s) = (3, 1) }
        if v.name.hasSuffix("A_log") || v.name.hasSuffix("x_proj.weight") { s = 0.3 }
        if v.name.hasPrefix("classifier") { s = 0.5 }
        let p = m.params.ptr(v)
        for i in 0..<v.count { p[i] += Float(shift + rng.normal() * s) }
    }
    return try SequenceClassifier(model: m, pooling: pooling)
}

/// Byte-level complement of A, C, G, T in both cases (other bytes map to themselves), for strand tests.
let byteComplement: [Int32] = (0..<256).map { b -> Int32 in
    let pairs: [Character: Character] = ["A": "T", "T": "A", "C": "G", "G": "C", "a": "t", "t": "a", "c": "g", "g": "c"]
    if let c = pairs[Character(Unicode.Scalar(UInt8(b)))] { return Int32(c.asciiValue!) }
    return Int32(b)
}

func randomDNA(_ n: Int, rng: inout RNG) -> [Int32] {
    let acgt: [Int32] = [65, 67, 71, 84]
    return (0..<n).map { _ in acgt[rng.int(below: 4)] }
}

@Suite struct ClassifierTests {
    static let lengths = [37, 20, 5]

    func batch(V: Int, seed: UInt64) -> [[Int32]] {
        Self.lengths.enumerated().map { i, n in randomTokens(n, V: V, seed: seed + UInt64(i)) }
    }

    @Test(arguments: [Pooling.mean, .last])
    func gradientsMatchFiniteDifferences(pooling: Pooling) throws {
        let clf = try tinyClassifier(pooling: pooling)
        let model = clf.model
        let seqs = batch(V: model.config.vocabSize, seed: 21)
        let labels = [2, 0, 1]
        let weights: [Float] = [0.5, 2, 1.5]
        model.zeroGradients()
        let loss0 = clf.lossAndGradients(batch: seqs, labels: labels, classWeights: weights)
        #expect(loss0.isFinite && loss0 > 0)
        // Read every gradient first: the finite-difference evaluations below accumulate into the gradients again.
        let grads = model.grads.buffer.array
        var rng = RNG(seed: 3)
        for v in model.params.layout.views {
            let g = Array(grads[v.offset..<(v.offset + v.count)])
            // The tied LM head is the embedding (it gets gradients through the backbone); nothing else is unused.
            #expect(largestMagnitude(g) > 0, "\(v.name): zero gradient")
            var idx = [g.indices.max { abs(g[$0]) < abs(g[$1]) }!]
            for _ in 0..<3 { idx.append(rng.int(below: v.count)) }
            let p = model.params.ptr(v)
            var vals = model.params.values(v.name)
            // The loss (≈ 1.5) comes from Float activations pooled over few positions, so its rounding noise is a
            // few 1e-7 (measured: shrinking h to 3e-3 makes the disagreements larger, ~7e-5, so they are noise, not
            // truncation): at h = 1e-2 that is ≲ 2e-5 in the quotient; atol 5e-5 gives 2.5× margin, and the largest
            // gradient of every tensor (1e-3 … 1) is held to 1 % as well.
            checkGradient("\(pooling) \(v.name)", &vals, analytic: g, indices: idx, h: 1e-2, atol: 5e-5, rtol: 1e-2) { x in
                let saved = Array(UnsafeBufferPointer(start: p, count: v.count))
                x.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: v.count) }
                defer { saved.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: v.count) } }
                return clf.lossAndGradients(batch: seqs, labels: labels, classWeights: weights)
            }
        }
    }

    @Test(arguments: [Pooling.mean, .last])
    func paddedBatchMatchesEachSequenceAlone(pooling: Pooling) throws {
        let clf = try tinyClassifier(pooling: pooling)
        let model = clf.model
        let seqs = batch(V: model.config.vocabSize, seed: 40)
        let labels = [1, 2, 0]
        model.zeroGradients()
        let batchLoss = clf.lossAndGradients(batch: seqs, labels: labels)
        let batchGrads = model.grads.buffer.array
        var sumGrads = [Float](repeating: 0, count: batchGrads.count)
        var sumLoss = 0.0
        for (s, y) in zip(seqs, labels) {
            model.zeroGradients()
            sumLoss += clf.lossAndGradients(batch: [s], labels: [y])
            for (i, g) in model.grads.buffer.array.enumerated() { sumGrads[i] += g / Float(seqs.count) }
        }
        #expect(abs(batchLoss - sumLoss / 3) < 1e-6, "padded batch loss \(batchLoss) vs mean of singles \(sumLoss / 3)")
        // Same operations on fewer rows: rounding only.
        expectClose("\(pooling) padded vs unpadded gradients", batchGrads, sumGrads,
                    atol: 1e-6 * largestMagnitude(sumGrads), rtol: 1e-5)
        // Inference: one padded batch vs one sequence at a time.
        let together = try clf.logits(seqs, batchSize: 3)
        let alone = try clf.logits(seqs, batchSize: 1)
        expectClose("\(pooling) padded vs unpadded logits", together.flatMap { $0 }, alone.flatMap { $0 }, atol: 1e-5)
    }

    @Test(arguments: [Pooling.mean, .last])
    func chunkedInferenceMatchesWhole(pooling: Pooling) throws {
        let clf = try tinyClassifier(pooling: pooling)
        let seqs = batch(V: clf.model.config.vocabSize, seed: 60)
        let whole = try clf.logits(seqs, chunk: 4096)
        for chunk in [1, 7, 32] {
            let parts = try clf.logits(seqs, chunk: chunk)
            expectClose("\(pooling) chunk \(chunk) vs whole", parts.flatMap { $0 }, whole.flatMap { $0 }, atol: 1e-5)
        }
        // The training path (one padded forward) gives the same loss as cross-entropy of the inference logits.
        let labels = [0, 1, 2]
        let trainLoss = clf.lossAndGradients(batch: seqs, labels: labels)
        var nll = 0.0
        for (z, y) in zip(whole, labels) { nll -= log(ClassificationHead.softmax(z)[y]) }
        #expect(abs(trainLoss - nll / 3) < 1e-5, "training loss \(trainLoss) vs inference \(nll / 3)")
    }

    @Test func longSequencesClassifyInConstantMemory() throws {
        let clf = try tinyClassifier(pooling: .mean)
        var rng = RNG(seed: 12)
        let chunk = 1024
        // Lengths that are not multiples of the chunk, so the last chunk needs its own (smaller) workspace too.
        _ = try clf.logits([randomDNA(3 * chunk + 100, rng: &rng).map { $0 % 32 }], chunk: chunk, batchSize: 1)
        let small = clf.workspaceBytes
        let long = randomDNA(195 * chunk + 100, rng: &rng).map { $0 % 32 }
        let z = try clf.logits([long], chunk: chunk, batchSize: 1)
        #expect(z[0].allSatisfy { $0.isFinite })
        #expect(clf.workspaceBytes == small, "workspaces grew from \(small) to \(clf.workspaceBytes) bytes for 2·10⁵ tokens")
        // And the chunked answer is the answer: a 2·10⁵-token sequence in chunks of 1024 vs 8192.
        let other = try clf.logits([long], chunk: 8192, batchSize: 1)
        expectClose("2·10⁵ tokens, chunk 1024 vs 8192", z[0], other[0], atol: 1e-4)
    }

    @Test func rcAverageIsStrandSymmetric() throws {
        var c = MambaConfig(vocabSize: 256, dModel: 16, layers: 2, dState: 4, dConv: 4)
        c.classLabels = ["x", "y"]
        let clf = try SequenceClassifier(model: try MambaModel(config: c, seed: 3), pooling: .mean)
        var rng = RNG(seed: 8)
        let xs = [randomDNA(50, rng: &rng), randomDNA(17, rng: &rng), randomDNA(33, rng: &rng)]
        let rcs = xs.map { $0.reversed().map { byteComplement[Int($0)] } }
        for batchSize in [1, 3] {
            let fx = try clf.logits(xs, strand: .rcAverage, complement: byteComplement, batchSize: batchSize)
            let frc = try clf.logits(rcs, strand: .rcAverage, complement: byteComplement, batchSize: batchSize)
            #expect(fx == frc, "rc-average: f(x) \(fx) != f(rc(x)) \(frc) at batch size \(batchSize)")
        }
        // Without the strategy the two strands differ (the test above is not vacuous).
        let plain = try clf.logits(xs)
        let plainRC = try clf.logits(rcs)
        #expect(plain != plainRC)
    }

    /// Random ACGT sequences; class 1 carries the motif TATAAT at a random place, class 0 contains neither it nor
    /// its reverse complement ATTATA (so reverse-complement augmentation keeps the labels true).
    static func motifData(count: Int, length: Int, rng: inout RNG) -> [LabeledSequence] {
        let motif: [Int32] = Array("TATAAT".utf8).map { Int32($0) }
        let rcMotif: [Int32] = Array("ATTATA".utf8).map { Int32($0) }
        func contains(_ s: [Int32]) -> Bool {
            (0...(s.count - motif.count)).contains { i in
                let w = Array(s[i..<(i + motif.count)])
                return w == motif || w == rcMotif
            }
        }
        return (0..<count).map { i in
            let label = i % 2
            var s: [Int32]
            repeat {
                s = randomDNA(length, rng: &rng)
                if label == 1 {
                    let at = rng.int(below: length - motif.count + 1)
                    s.replaceSubrange(at..<(at + motif.count), with: motif)
                }
            } while contains(s) != (label == 1)
            return LabeledSequence(id: "s\(i)", tokens: s, label: label)
        }
    }

    @Test func learnsPlantedMotif() throws {
        var c = MambaConfig(vocabSize: 256, dModel: 32, layers: 2, dState: 8, dConv: 4)
        c.classLabels = ["background", "motif"]
        let model = try MambaModel(config: c, seed: 1)
        let clf = try SequenceClassifier(model: model, pooling: .mean)
        var rng = RNG(seed: 2024)
        let train = Self.motifData(count: 512, length: 64, rng: &rng)
        let test = Self.motifData(count: 300, length: 64, rng: &rng)
        let objective = try ClassificationObjective(classifier: clf, train: train, validation: [], batchSize: 16,
                                                    maxLength: 64, complement: byteComplement, rcAugment: true)
        var o = Trainer.Options()
        o.steps = 300; o.batchSize = 16; o.seqLen = 64; o.lr = 1e-2; o.warmup = 20; o.seed = 5
        o.checkpointEvery = 0; o.evalEvery = 0; o.logEvery = 1000
        let dir = TempDir()
        let clock = ContinuousClock()
        let t0 = clock.now
        try Trainer(model: model, objective: objective, options: o, outDir: dir.path, dataFingerprint: []).run()
        let (_, metrics, _) = try objective.evaluate(test)
        let elapsed = clock.now - t0
        #expect(metrics.accuracy > 0.95, "planted-motif accuracy \(metrics.accuracy) after 300 steps (\(elapsed))")
    }

    @Test func earlyStoppingKeepsTheBestModel() throws {
        let clf = try tinyClassifier(pooling: .mean, classes: ["a", "b"])
        let model = clf.model
        var rng = RNG(seed: 4)
        let train = (0..<64).map { i in
            LabeledSequence(id: "t\(i)", tokens: randomTokens(12, V: 32, seed: UInt64(i)), label: i % 2)
        }
        // Validation labels are the training labels flipped: the better the fit, the worse the validation loss.
        let val = train.prefix(16).map { LabeledSequence(id: $0.id, tokens: $0.tokens, label: 1 - $0.label) }
        _ = rng.next()
        let objective = try ClassificationObjective(classifier: clf, train: train, validation: Array(val),
                                                    batchSize: 8, maxLength: 12)
        var o = Trainer.Options()
        o.steps = 200; o.batchSize = 8; o.seqLen = 12; o.lr = 1e-2; o.warmup = 1; o.evalEvery = 5
        o.checkpointEvery = 0; o.logEvery = 1000; o.keepBest = true; o.patience = 2
        let dir = TempDir()
        let trainer = try Trainer(model: model, objective: objective, options: o, outDir: dir.path, dataFingerprint: [])
        try trainer.run()
        #expect(trainer.step < 200, "early stopping never triggered")
        #expect(trainer.step == trainer.bestStep + 2 * 5, "stopped at \(trainer.step), best \(trainer.bestStep)")
        // OUT holds the best model: its validation loss is the recorded best.
        let saved = try MambaModel.load(directory: dir.path)
        let best = try ClassificationObjective.evaluate(classifier: try SequenceClassifier(model: saved, pooling: .mean),
                                                        Array(val), strand: .none, complement: nil, chunk: 2048)
        #expect(abs(best.loss - trainer.bestLoss) < 1e-9, "saved model's loss \(best.loss) vs best \(trainer.bestLoss)")
        let metrics = try String(contentsOfFile: dir.path + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.contains("\"early_stop\":true"))
    }

    @Test func metricsMatchScikitLearnExamples() {
        // sklearn.metrics.matthews_corrcoef docs: y_true [+1, +1, +1, −1], y_pred [+1, −1, +1, +1] → −0.33…
        let binary = ClassificationMetrics(labels: [1, 1, 1, 0], predictions: [1, 0, 1, 1], classes: 2)
        #expect(abs(binary.mcc - (-1.0 / 3)) < 1e-12)
        #expect(binary.accuracy == 0.5)
        // sklearn.metrics.f1_score docs: y_true [0, 1, 2, 0, 1, 2], y_pred [0, 2, 1, 0, 0, 1] → macro 0.2666…
        let multi = ClassificationMetrics(labels: [0, 1, 2, 0, 1, 2], predictions: [0, 2, 1, 0, 0, 1], classes: 3)
        #expect(abs(multi.macroF1 - 0.26666666666666666) < 1e-12)
        #expect(multi.f1PerClass.map { ($0 * 1e6).rounded() / 1e6 } == [0.8, 0, 0])
        #expect(multi.confusion == [[2, 0, 0], [1, 0, 1], [0, 2, 0]])
        // Perfect prediction: MCC 1; constant prediction: MCC 0 (degenerate denominator).
        #expect(abs(ClassificationMetrics(labels: [0, 1, 2], predictions: [0, 1, 2], classes: 3).mcc - 1) < 1e-12)
        #expect(ClassificationMetrics(labels: [0, 1, 2], predictions: [1, 1, 1], classes: 3).mcc == 0)
    }
}
