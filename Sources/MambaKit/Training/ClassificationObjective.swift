/// One labelled sequence, tokenized.
public struct LabeledSequence: Sendable, Equatable {
    /// The record's name (FASTA/FASTQ) or a generated one.
    public var id: String
    public var tokens: [Int32]
    /// Index into the class list.
    public var label: Int
    public init(id: String, tokens: [Int32], label: Int) {
        self.id = id
        self.tokens = tokens
        self.label = label
    }
}

/// Sequence classification as a `TrainingObjective`: each step draws `batchSize` examples uniformly (with
/// replacement) from the training set with the trainer's RNG, crops any longer than `maxLength` to a random window
/// of that length, replaces each by its reverse complement with probability ½ when `rcAugment` is set
/// (reverse-complement augmentation) or, for audio, changes its speed, gain and start (`AudioAugmentation`, before the
/// crop), and minimises the class-weighted cross-entropy of a right-padded batch.
/// Validation runs the whole validation sequences (no cropping, constant memory) with the `strand` strategy and
/// reports the unweighted mean loss, accuracy, macro-F1 and MCC.
public final class ClassificationObjective: TrainingObjective {
    public let classifier: SequenceClassifier
    public let train: [LabeledSequence]
    public let validation: [LabeledSequence]
    public let batchSize: Int
    public let maxLength: Int
    /// Per-class loss weights (nil: all 1).
    public let classWeights: [Float]?
    /// Token id → id of its complement; needed by reverse-complement augmentation and `.rcAverage`.
    public let complement: [Int32]?
    public let rcAugment: Bool
    /// Audio: speed, gain and shift drawn per example (`AudioAugmentation`), before the crop.
    public let audioAugment: AudioAugmentation?
    public let strand: StrandStrategy
    /// Inference chunk length for validation.
    public let chunk: Int
    /// The processes sharing each batch, and this one's rows of it (all of them in one process).
    var group = ProcessGroup.single
    var rows: Range<Int>

    public init(classifier: SequenceClassifier, train: [LabeledSequence], validation: [LabeledSequence],
                batchSize: Int, maxLength: Int, classWeights: [Float]? = nil, complement: [Int32]? = nil,
                rcAugment: Bool = false, audioAugment: AudioAugmentation? = nil, strand: StrandStrategy = .none,
                chunk: Int = 2048) throws {
        guard !train.isEmpty else { throw MambaKitError(.usage, "no training sequences") }
        guard batchSize > 0, maxLength > 0 else { throw MambaKitError(.usage, "batch size and length must be positive") }
        let C = classifier.numClasses
        for s in train + validation where s.label < 0 || s.label >= C || s.tokens.isEmpty {
            throw MambaKitError(.usage, s.tokens.isEmpty ? "empty sequence" : "label \(s.label) outside the \(C) classes",
                                at: "sequence '\(s.id)'")
        }
        if let w = classWeights, w.count != C || w.contains(where: { !($0 > 0) || !$0.isFinite }) {
            throw MambaKitError(.usage, "class weights must be \(C) positive numbers (got \(w))")
        }
        if (strand == .rcAverage || rcAugment) && complement?.count != classifier.model.config.vocabSize {
            throw MambaKitError(.usage, "rc-average and reverse-complement augmentation need a complement table over the vocabulary")
        }
        self.classifier = classifier
        self.train = train
        self.validation = validation
        self.batchSize = batchSize
        self.maxLength = maxLength
        self.classWeights = classWeights
        self.complement = complement
        self.rcAugment = rcAugment
        self.audioAugment = audioAugment
        self.strand = strand
        self.chunk = chunk
        rows = 0..<batchSize
    }

    public func shard(_ group: ProcessGroup) throws {
        guard batchSize >= group.size else {
            throw MambaKitError(.usage, "--batch-size \(batchSize) is smaller than the \(group.size) processes: each needs at least one sequence of the batch")
        }
        self.group = group
        rows = group.share(of: batchSize)
    }

    /// Weights `n / (C · n_k)` from the training labels (scikit-learn's "balanced"); a class with no examples gets 1.
    public static func balancedWeights(labels: [Int], classes C: Int) -> [Float] {
        var counts = [Int](repeating: 0, count: C)
        for y in labels { counts[y] += 1 }
        return counts.map { $0 == 0 ? 1 : Float(Double(labels.count) / (Double(C) * Double($0))) }
    }

    public var trainSize: Int { train.count }
    public var validationSize: Int { validation.count }
    public var sizeUnit: String { "sequences" }
    public var validationTokens: Int {
        validation.reduce(0) { $0 + $1.tokens.count } * (strand == .rcAverage && complement != nil ? 2 : 1)
    }

    public func trainStep(model: MambaModel, rng: inout RNG, step: Int) throws -> (loss: Double, tokens: Int) {
        precondition(model === classifier.model)
        var batch: [[Int32]] = []
        var labels: [Int] = []
        for _ in 0..<batchSize {
            let ex = train[rng.int(below: train.count)]
            var s = ex.tokens
            if let audioAugment { s = audioAugment.apply(s, rng: &rng) }
            if s.count > maxLength {
                let start = rng.int(below: s.count - maxLength + 1)
                s = Array(s[start..<(start + maxLength)])
            }
            if rcAugment, let complement, rng.next() & 1 == 1 { s = s.reversed().map { complement[Int($0)] } }
            batch.append(s)
            labels.append(ex.label)
        }
        // Every rank drew the whole batch; this one trains on its rows, weighted by the whole batch's weight.
        let total = labels.reduce(Float(0)) { $0 + (classWeights?[$1] ?? 1) }
        let mine = Array(batch[rows])
        let loss = classifier.lossAndGradients(batch: mine, labels: Array(labels[rows]), classWeights: classWeights,
                                               weightTotal: total)
        return (loss, mine.reduce(0) { $0 + $1.count })
    }

    public func validate(model: MambaModel) throws -> [String: Double]? {
        guard !validation.isEmpty else { return nil }
        let r = try evaluate(validation, group: group)
        return ["val_loss": r.loss, "val_accuracy": r.metrics.accuracy, "val_macro_f1": r.metrics.macroF1,
                "val_mcc": r.metrics.mcc]
    }

    /// Mean (unweighted) cross-entropy, metrics and per-sequence logits over `examples`.
    /// With a `group` of several processes, each computes the logits of its share of `examples` and all
    /// receive all of them (the same result on every rank).
    public func evaluate(_ examples: [LabeledSequence], group: ProcessGroup = .single) throws
        -> (loss: Double, metrics: ClassificationMetrics, logits: [[Float]])
    {
        try Self.evaluate(classifier: classifier, examples, strand: strand, complement: complement, chunk: chunk,
                          group: group)
    }

    public static func evaluate(classifier: SequenceClassifier, _ examples: [LabeledSequence], strand: StrandStrategy,
                                complement: [Int32]?, chunk: Int, group: ProcessGroup = .single) throws
        -> (loss: Double, metrics: ClassificationMetrics, logits: [[Float]])
    {
        var logits: [[Float]]
        if group.size > 1 {
            let share = group.share(of: examples.count)
            let mine = share.isEmpty ? [] : try classifier.logits(examples[share].map(\.tokens), strand: strand,
                                                                   complement: complement, chunk: chunk)
            let C = classifier.numClasses
            let flat = try group.allgatherVariable(mine.flatMap { $0 })
            guard flat.count == examples.count * C else {
                throw MambaKitError(.distributed, "gathered \(flat.count) logits for \(examples.count) sequences of \(C) classes")
            }
            logits = (0..<examples.count).map { Array(flat[$0 * C..<($0 + 1) * C]) }
        } else {
            logits = try classifier.logits(examples.map(\.tokens), strand: strand, complement: complement, chunk: chunk)
        }
        var nll = 0.0
        var predictions: [Int] = []
        for (ex, z) in zip(examples, logits) {
            let m = Double(z.max()!)
            let lse = m + log(z.reduce(0.0) { $0 + exp(Double($1) - m) })
            nll += lse - Double(z[ex.label])
            predictions.append(z.indices.max { z[$0] < z[$1] }!)
        }
        let m = ClassificationMetrics(labels: examples.map(\.label), predictions: predictions,
                                      classes: classifier.numClasses)
        return (nll / Double(max(examples.count, 1)), m, logits)
    }
}

#if canImport(Glibc)
import Glibc
#endif
