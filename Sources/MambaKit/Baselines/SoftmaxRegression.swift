import Foundation

/// Multinomial logistic regression on standardised features: minimises the mean cross-entropy plus
/// `l2 / 2 · ‖W‖²` (the biases are not penalised) with L-BFGS (10 pairs, backtracking Armijo line search) until the
/// gradient's largest component is below `tolerance` or `maxIterations` pass. The problem is convex, so the result
/// does not depend on a learning rate or a seed. Everything is in Double.
public struct SoftmaxRegression: Sendable {
    public let classes: Int, features: Int
    /// Feature means and standard deviations of the training set (a constant feature gets 1).
    public private(set) var mean: [Double], scale: [Double]
    /// `(classes, features)` row-major, then `classes` biases.
    public private(set) var parameters: [Double]
    public private(set) var iterations = 0
    public private(set) var trainingLoss = Double.nan

    public init(classes: Int, features: Int) {
        self.classes = classes
        self.features = features
        mean = [Double](repeating: 0, count: features)
        scale = [Double](repeating: 1, count: features)
        parameters = [Double](repeating: 0, count: classes * features + classes)
    }

    /// Fits to `x` (each row `features` long) and labels `y` in `0..<classes`.
    public mutating func fit(_ x: [[Double]], _ y: [Int], l2: Double = 1e-2, maxIterations: Int = 500,
                             tolerance: Double = 1e-6) throws {
        guard !x.isEmpty, x.count == y.count else { throw MambaKitError(.usage, "no training examples for the baseline") }
        guard x.allSatisfy({ $0.count == features }), y.allSatisfy({ (0..<classes).contains($0) }) else {
            throw MambaKitError(.usage, "baseline features or labels of the wrong size")
        }
        let n = Double(x.count)
        for j in 0..<features {
            var m = 0.0
            for row in x { m += row[j] }
            m /= n
            var v = 0.0
            for row in x { v += (row[j] - m) * (row[j] - m) }
            let s = (v / n).squareRoot()
            mean[j] = m
            scale[j] = s > 1e-12 ? s : 1
        }
        let z = x.map(standardise)
        let (C, F) = (classes, features)
        func objective(_ p: [Double]) -> (Double, [Double]) {
            var g = [Double](repeating: 0, count: p.count)
            var loss = 0.0
            var logits = [Double](repeating: 0, count: C)
            for (row, label) in zip(z, y) {
                for c in 0..<C {
                    var s = p[C * F + c]
                    for j in 0..<F { s += p[c * F + j] * row[j] }
                    logits[c] = s
                }
                let mx = logits.max() ?? 0
                var sum = 0.0
                for c in 0..<C { logits[c] = exp(logits[c] - mx); sum += logits[c] }
                loss -= log(logits[label] / sum)
                for c in 0..<C {
                    let d = (logits[c] / sum - (c == label ? 1 : 0)) / n
                    g[C * F + c] += d
                    for j in 0..<F { g[c * F + j] += d * row[j] }
                }
            }
            loss /= n
            for i in 0..<(C * F) {
                loss += 0.5 * l2 * p[i] * p[i]
                g[i] += l2 * p[i]
            }
            return (loss, g)
        }
        var p = [Double](repeating: 0, count: C * F + C)
        var (f, g) = objective(p)
        var sPairs: [[Double]] = [], yPairs: [[Double]] = [], rho: [Double] = []
        func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
        var it = 0
        while it < maxIterations, (g.map(abs).max() ?? 0) > tolerance {
            it += 1
            // Two-loop recursion: d = −H·g.
            var q = g
            var alpha = [Double](repeating: 0, count: sPairs.count)
            for i in stride(from: sPairs.count - 1, through: 0, by: -1) {
                alpha[i] = rho[i] * dot(sPairs[i], q)
                for k in q.indices { q[k] -= alpha[i] * yPairs[i][k] }
            }
            if let ls = sPairs.last, let ly = yPairs.last {
                let gamma = dot(ls, ly) / dot(ly, ly)
                for k in q.indices { q[k] *= gamma }
            }
            for i in 0..<sPairs.count {
                let beta = rho[i] * dot(yPairs[i], q)
                for k in q.indices { q[k] += sPairs[i][k] * (alpha[i] - beta) }
            }
            var d = q.map { -$0 }
            var slope = dot(g, d)
            if slope >= 0 { d = g.map { -$0 }; slope = -dot(g, g); sPairs = []; yPairs = []; rho = [] }
            var step = 1.0
            var next = p, fNext = f, gNext = g
            var accepted = false
            for _ in 0..<40 {
                for k in p.indices { next[k] = p[k] + step * d[k] }
                (fNext, gNext) = objective(next)
                if fNext <= f + 1e-4 * step * slope { accepted = true; break }
                step *= 0.5
            }
            guard accepted else { break }
            let s = zip(next, p).map { $0 - $1 }, yv = zip(gNext, g).map { $0 - $1 }
            let sy = dot(s, yv)
            if sy > 1e-12 {
                sPairs.append(s); yPairs.append(yv); rho.append(1 / sy)
                if sPairs.count > 10 { sPairs.removeFirst(); yPairs.removeFirst(); rho.removeFirst() }
            }
            p = next; f = fNext; g = gNext
        }
        parameters = p
        iterations = it
        trainingLoss = f
    }

    func standardise(_ row: [Double]) -> [Double] { (0..<features).map { (row[$0] - mean[$0]) / scale[$0] } }

    /// Class probabilities of one feature vector.
    public func probabilities(_ row: [Double]) -> [Double] {
        let z = standardise(row)
        var logits = (0..<classes).map { c in
            (0..<features).reduce(parameters[classes * features + c]) { $0 + parameters[c * features + $1] * z[$1] }
        }
        let mx = logits.max() ?? 0
        logits = logits.map { exp($0 - mx) }
        let sum = logits.reduce(0, +)
        return logits.map { $0 / sum }
    }
}

/// The linear baseline of `classify baseline`: fixed features (DNA: k-mer frequencies; audio: the log-spectrogram
/// summary of `SpectralFeatures` at the files' rate), standardised, and a `SoftmaxRegression` trained on one
/// labelled set and measured on another. It says how hard a task is before any Mamba model is trained, in seconds.
public enum LinearBaseline {
    public struct Report {
        public let metrics: ClassificationMetrics
        public let classes: [String]
        public let features: String
        public let featureCount: Int
        public let trainExamples: Int
        public let iterations: Int
        public let seconds: Double
        public var json: [String: Any] {
            var o = metrics.json(classes: classes)
            o["features"] = features
            o["feature_count"] = featureCount
            o["train_examples"] = trainExamples
            o["iterations"] = iterations
            o["seconds"] = seconds
            return o
        }
    }

    public enum Features: Sendable {
        /// k-mer frequencies over ACGT.
        case kmers(Int)
        /// Log-spectrogram summary at `sampleRate` (files resampled to it).
        case spectrum(sampleRate: Int)
    }

    /// Trains on `train` (+ `trainLabels`) and evaluates on `data` (+ `labels`), laid out as for `classify train`.
    public static func run(train: String, trainLabels: String?, data: String, labels: String?, features: Features,
                           l2: Double = 1e-2) throws -> Report {
        let clock = ContinuousClock()
        let t0 = clock.now
        let describe: String
        let count: Int
        /// The features and labels of one labelled set (the classes of `known`, when given).
        let load: (String, String?, [String]?) throws -> (classes: [String], x: [[Double]], y: [Int])
        switch features {
        case let .kmers(k):
            let f = try KmerFeatures(k: k)
            let dna = DNATokenizer()
            describe = "\(k)-mer frequencies"
            count = f.count
            load = { path, labels, known in
                let ds = try ClassificationDataset.load(path, labels: labels, tokenizer: .dna(dna), classes: known)
                return (ds.classes, ds.examples.map { f(dna.decode($0.tokens)) }, ds.examples.map(\.label))
            }
        case let .spectrum(rate):
            try Settings.check("sample_rate", rate, .api("baseline"))
            let f = try SpectralFeatures(sampleRate: rate)
            describe = "log-mel spectrogram (\(f.frame)-sample Hann frames every \(f.hop), \(f.bands) mel bands, gain removed; \(f.segments) time segments, band means and deviations) at \(rate) Hz"
            count = f.count
            // The spectrum is taken of the samples themselves, each file read once.
            load = { path, labels, known in
                if labels != nil { throw MambaKitError(.usage, "--labels is for a sequence file; audio data is one folder per class", at: path) }
                let (classes, files) = try ClassificationDataset.audioFiles(directory: path, classes: known)
                let x = try files.map { file -> [Double] in
                    let samples = try AudioFile.readMono(file.path, sampleRate: rate)
                    guard !samples.isEmpty else { throw MambaKitError(.format, "the file holds no samples", at: file.path) }
                    return f(samples)
                }
                return (classes, x, files.map(\.label))
            }
        }
        let trainSet = try load(train, trainLabels, nil)
        guard !trainSet.x.isEmpty else { throw MambaKitError(.usage, "no training sequences", at: train) }
        let testSet = try load(data, labels, trainSet.classes)
        guard !testSet.x.isEmpty else { throw MambaKitError(.usage, "no sequences to evaluate", at: data) }
        var model = SoftmaxRegression(classes: trainSet.classes.count, features: count)
        try model.fit(trainSet.x, trainSet.y, l2: l2)
        let predictions = testSet.x.map { row -> Int in
            let p = model.probabilities(row)
            return p.indices.max { p[$0] < p[$1] } ?? 0
        }
        let metrics = ClassificationMetrics(labels: testSet.y, predictions: predictions, classes: trainSet.classes.count)
        return Report(metrics: metrics, classes: trainSet.classes, features: describe, featureCount: count,
                      trainExamples: trainSet.x.count, iterations: model.iterations, seconds: seconds(clock.now - t0))
    }
}
