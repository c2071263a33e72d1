/// A `MambaModel` whose config names classes (`config.classLabels`), used as a sequence classifier: backbone →
/// `ClassificationHead` pooling → `classifier.weight/bias`. Training runs one right-padded batch forward and backward;
/// inference runs sequences of any length in chunks with the recurrent state carried, so memory depends on the chunk,
/// not on the sequence (a 10⁶-bp record needs the same workspace as a 2-kbp one).
public final class SequenceClassifier {
    public let model: MambaModel
    public let pooling: Pooling
    let weightView: TensorView
    let biasView: TensorView
    private var workspaces: [[Int]: Workspace] = [:]

    public var classes: [String] { model.config.classLabels }
    /// Bytes held by the cached workspaces: bounded by the chunk and batch size, whatever the sequence lengths.
    public var workspaceBytes: Int { workspaces.values.reduce(0) { $0 + $1.bytes } }
    public var numClasses: Int { model.config.classLabels.count }

    public init(model: MambaModel, pooling: Pooling) throws {
        guard let w = model.params.layout.view("classifier.weight"), let b = model.params.layout.view("classifier.bias")
        else {
            throw MambaKitError(.config, "the model is not a classifier (its config.json names no mambakit.classes)")
        }
        self.model = model
        self.pooling = pooling
        weightView = w
        biasView = b
    }

    /// Pooling stored in the model's config (`mambakit.pooling`), default mean.
    public convenience init(model: MambaModel) throws {
        let name = model.config.mambakit["pooling"] as? String ?? Pooling.mean.rawValue
        guard let p = Pooling(rawValue: name) else {
            throw MambaKitError(.config, "mambakit.pooling '\(name)' is not one of mean, last")
        }
        try self.init(model: model, pooling: p)
    }

    private func workspace(B: Int, L: Int, training: Bool) -> Workspace {
        let key = [B, L, training ? 1 : 0]
        if let ws = workspaces[key] { return ws }
        // Keep a handful: batches of fixed-length fragments need one or two shapes.
        if workspaces.count >= 8 { workspaces.removeAll() }
        let ws = Workspace(config: model.config, B: B, L: L, training: training, lmHead: false)
        workspaces[key] = ws
        return ws
    }

    /// Right-pads `batch` with token 0 to `(B, L)`, L the longest sequence.
    private static func padded(_ batch: [[Int32]], L: Int, from start: Int = 0) -> [Int32] {
        var ids = [Int32](repeating: 0, count: batch.count * L)
        for (b, s) in batch.enumerated() where s.count > start {
            let n = min(L, s.count - start)
            for t in 0..<n { ids[b * L + t] = s[start + t] }
        }
        return ids
    }

    /// One training step's forward and backward on a right-padded batch: accumulates every gradient (backbone and
    /// head) into `model.grads` and returns the class-weighted mean loss.
    public func lossAndGradients(batch: [[Int32]], labels: [Int], classWeights: [Float]? = nil,
                                 weightTotal: Float? = nil) -> Double {
        precondition(batch.count == labels.count && !batch.isEmpty)
        let (B, D, C) = (batch.count, model.config.hiddenSize, numClasses)
        let lengths = batch.map(\.count)
        let L = lengths.max()!
        let ws = workspace(B: B, L: L, training: true)
        let ids = Self.padded(batch, L: L)
        ids.withUnsafeBufferPointer { model.forwardBackbone(ids: $0.baseAddress!, ws: ws) }
        var pooled = [Float](repeating: 0, count: B * D)
        var logits = [Float](repeating: 0, count: B * C)
        var dlogits = [Float](repeating: 0, count: B * C)
        var dpooled = [Float](repeating: 0, count: B * D)
        let p = model.params, g = model.grads
        ClassificationHead.poolForward(out: &pooled, h: ws.hidden, lengths: lengths, L: L, D: D, pooling: pooling)
        Linear.forward(out: &logits, ldo: C, inp: pooled, ldi: D, weight: p.ptr(weightView), bias: p.ptr(biasView),
                       M: B, I: D, O: C)
        let ce = ClassificationHead.crossEntropy(logits: logits, labels: labels, C: C, classWeights: classWeights,
                                                 weightTotal: weightTotal, dlogits: &dlogits)
        Linear.backward(dinp: &dpooled, lddi: D, dweight: g.ptr(weightView), dbias: g.ptr(biasView), dout: dlogits,
                        lddo: C, inp: pooled, ldi: D, weight: p.ptr(weightView), M: B, I: D, O: C)
        ws.dHidden.update(repeating: 0, count: B * L * D)
        ClassificationHead.poolBackward(dh: ws.dHidden, dpooled: dpooled, lengths: lengths, L: L, D: D, pooling: pooling)
        ids.withUnsafeBufferPointer { model.backwardBackbone(ids: $0.baseAddress!, ws: ws) }
        return ce.loss
    }

    /// The logits `[C]` of each sequence. Sequences run `batchSize` at a time, right-padded, in chunks of `chunk`
    /// tokens with the recurrent state carried (pooling accumulates across chunks), so memory does not grow with
    /// length. With `.rcAverage`, the result is the mean of the logits of each sequence and of its reverse
    /// complement, `complement` mapping each token id to the id of its complement.
    public func logits(_ sequences: [[Int32]], strand: StrandStrategy = .none, complement: [Int32]? = nil,
                       chunk: Int = 2048, batchSize: Int = 16) throws -> [[Float]] {
        for (i, s) in sequences.enumerated() where s.isEmpty {
            throw MambaKitError(.usage, "sequence \(i + 1) is empty: nothing to classify")
        }
        let chunk = model.config.chunkLength(chunk)
        let forward = try logitsOneStrand(sequences, chunk: chunk, batchSize: batchSize)
        guard strand == .rcAverage else { return forward }
        guard let complement, complement.count == model.config.vocabSize else {
            throw MambaKitError(.usage, "rc-average needs a complement table over the model's vocabulary")
        }
        let rc = sequences.map { s in s.reversed().map { complement[Int($0)] } }
        let reverse = try logitsOneStrand(rc, chunk: chunk, batchSize: batchSize)
        return zip(forward, reverse).map { a, b in zip(a, b).map { ($0 + $1) * 0.5 } }
    }

    private func logitsOneStrand(_ sequences: [[Int32]], chunk: Int, batchSize: Int) throws -> [[Float]] {
        let (D, C, V) = (model.config.hiddenSize, numClasses, model.config.vocabSize)
        for (i, s) in sequences.enumerated() {
            if let bad = s.first(where: { $0 < 0 || Int($0) >= V }) {
                throw MambaKitError(.usage, "token \(bad) outside the model's vocabulary of \(V)", at: "sequence \(i + 1)")
            }
        }
        // Group sequences of similar length (stable by length) so padding stays small.
        let order = sequences.indices.sorted { (sequences[$0].count, $0) < (sequences[$1].count, $1) }
        var out = [[Float]](repeating: [], count: sequences.count)
        var start = 0
        while start < order.count {
            let idx = Array(order[start..<min(order.count, start + batchSize)])
            start += idx.count
            let batch = idx.map { sequences[$0] }
            let B = batch.count
            let lengths = batch.map(\.count)
            let maxLen = lengths.max()!
            let state = RecurrentState(config: model.config, batch: B)
            var sums = [Double](repeating: 0, count: B * D)
            var pooled = [Float](repeating: 0, count: B * D)
            var pos = 0
            while pos < maxLen {
                let n = min(chunk, maxLen - pos)
                let ws = workspace(B: B, L: n, training: false)
                let ids = Self.padded(batch, L: n, from: pos)
                ids.withUnsafeBufferPointer { model.forwardBackbone(ids: $0.baseAddress!, ws: ws, state: state) }
                let h = ws.hidden
                for b in 0..<B {
                    let valid = min(n, max(0, lengths[b] - pos))
                    switch pooling {
                    case .mean:
                        for t in 0..<valid {
                            let row = h + (b * n + t) * D
                            for j in 0..<D { sums[b * D + j] += Double(row[j]) }
                        }
                    case .last:
                        if lengths[b] - 1 >= pos && lengths[b] - 1 < pos + n {
                            let row = h + (b * n + lengths[b] - 1 - pos) * D
                            for j in 0..<D { pooled[b * D + j] = row[j] }
                        }
                    }
                }
                pos += n
            }
            if pooling == .mean {
                for b in 0..<B { for j in 0..<D { pooled[b * D + j] = Float(sums[b * D + j] / Double(lengths[b])) } }
            }
            var logits = [Float](repeating: 0, count: B * C)
            Linear.forward(out: &logits, ldo: C, inp: pooled, ldi: D, weight: model.params.ptr(weightView),
                           bias: model.params.ptr(biasView), M: B, I: D, O: C)
            for (k, i) in idx.enumerated() { out[i] = Array(logits[(k * C)..<((k + 1) * C)]) }
        }
        return out
    }

    /// What the model reads along one sequence, computed in chunks with the state carried: per layer, the mean
    /// selective Δ over channels at each position (large Δ: the state takes the input in; small: it keeps its
    /// memory), and with mean pooling each position's exact share of the logits, `W·h_t / L` (they sum, with the
    /// bias, to the logits).
    public func explain(_ tokens: [Int32], chunk: Int = 2048) throws -> (delta: [[Float]], contributions: [[Float]]?, logits: [Float]) {
        let c = model.config
        let (D, C, V) = (c.hiddenSize, numClasses, c.vocabSize)
        guard !tokens.isEmpty else { throw MambaKitError(.usage, "the sequence is empty") }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= V }) {
            throw MambaKitError(.usage, "token \(bad) outside the model's vocabulary of \(V)")
        }
        let n = tokens.count
        let chunk = c.chunkLength(chunk)
        var delta = [[Float]](repeating: [Float](repeating: 0, count: n), count: c.numHiddenLayers)
        var contrib: [[Float]]? = pooling == .mean ? [] : nil
        let state = RecurrentState(config: c, batch: 1)
        let W = model.params.ptr(weightView)
        var sums = [Double](repeating: 0, count: D)
        var last = [Float](repeating: 0, count: D)
        var pos = 0
        while pos < n {
            let len = min(chunk, n - pos)
            let ws = workspace(B: 1, L: len, training: false)
            let ids = Array(tokens[pos..<(pos + len)])
            ids.withUnsafeBufferPointer {
                model.forwardBackbone(ids: $0.baseAddress!, ws: ws, state: state) { layer, d, channels in
                    for t in 0..<len {
                        var s: Float = 0
                        for j in 0..<channels { s += d[t * channels + j] }
                        delta[layer][pos + t] = s / Float(channels)
                    }
                }
            }
            let h = ws.hidden
            for t in 0..<len {
                let row = h + t * D
                for j in 0..<D { sums[j] += Double(row[j]) }
                if contrib != nil {
                    contrib!.append((0..<C).map { k in
                        var s: Float = 0
                        for j in 0..<D { s += W[k * D + j] * row[j] }
                        return s / Float(n)
                    })
                }
            }
            if pos + len == n { for j in 0..<D { last[j] = h[(len - 1) * D + j] } }
            pos += len
        }
        let pooled = pooling == .mean ? sums.map { Float($0 / Double(n)) } : last
        var logits = [Float](repeating: 0, count: C)
        Linear.forward(out: &logits, ldo: C, inp: pooled, ldi: D, weight: W, bias: model.params.ptr(biasView),
                       M: 1, I: D, O: C)
        return (delta, contrib, logits)
    }
}
