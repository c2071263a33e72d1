/// Token streams for language-model training: one stream per input file (or record), each split into a training part
/// and a held-out tail (`valFraction` of its tokens, at least one token). With `.wholeStreams`, whole streams are
/// held out instead (every ⌈1/valFraction⌉-th, at least one, never all): the right split for many short clips
/// (audio), where a tail of each would leave no clip long enough for a training window.
///
/// The tokens live in memory (small corpora, tests, n-gram counts) or in a `TokenStore` on disk, read window by
/// window, so that training memory does not depend on the corpus: what stays in memory is 16 bytes per stream
/// (its offset and training length) plus, per window length in use, 16 bytes per stream long enough for a window.
///
/// Training batches are random windows of L+1 tokens (inputs t…t+L−1, targets t+1…t+L) drawn with the run's RNG:
/// the stream with probability proportional to its training length, then a uniform start. Windows never cross
/// from one stream into another, nor from the training part into the held-out part.
public final class TokenCorpus {
    enum Storage {
        case memory([Int32])
        case store(TokenStore)
    }

    let storage: Storage
    /// Stream i is tokens [offsets[i], offsets[i+1]) of the storage.
    let offsets: [Int]
    /// Per stream: tokens [0, trainEnds[i]) train; the rest is held out.
    public let trainEnds: [Int]

    public enum Holdout: Sendable { case tails, wholeStreams }

    /// An in-memory corpus.
    public convenience init(streams named: [(name: String, tokens: [Int32])], valFraction: Double, holdout: Holdout = .tails) throws {
        guard !named.isEmpty else { throw MambaKitError(.usage, "no training data given") }
        var offsets = [0]
        var all: [Int32] = []
        all.reserveCapacity(named.reduce(0) { $0 + $1.tokens.count })
        for s in named {
            all += s.tokens
            offsets.append(all.count)
        }
        self.init(storage: .memory(all), offsets: offsets, valFraction: valFraction, holdout: holdout)
    }

    /// A corpus read from a token store.
    public convenience init(store: TokenStore, valFraction: Double, holdout: Holdout = .tails) throws {
        guard store.streamCount > 0 else { throw MambaKitError(.usage, "no training data given") }
        self.init(storage: .store(store), offsets: store.offsets, valFraction: valFraction, holdout: holdout)
    }

    init(storage: Storage, offsets: [Int], valFraction: Double, holdout: Holdout) {
        self.storage = storage
        self.offsets = offsets
        let n = offsets.count - 1
        let counts = (0..<n).map { offsets[$0 + 1] - offsets[$0] }
        if holdout == .wholeStreams && valFraction > 0 && n >= 2 {
            let every = max(2, Int((1 / valFraction).rounded(.up)))
            // Every `every`-th stream, or the last one when there are fewer than `every`.
            trainEnds = (0..<n).map { i in
                let held = n >= every ? (i % every == every - 1) : (i == n - 1)
                return held ? 0 : counts[i]
            }
        } else {
            trainEnds = counts.map { c in
                let hold = valFraction > 0 ? max(1, Int((Double(c) * valFraction).rounded())) : 0
                return max(0, c - hold)
            }
        }
    }

    public var streamCount: Int { offsets.count - 1 }
    public func count(ofStream i: Int) -> Int { offsets[i + 1] - offsets[i] }
    public var trainTokens: Int { trainEnds.reduce(0, +) }
    public var validationTokens: Int { offsets[streamCount] - trainTokens }

    /// Copies tokens [start, start + count) of stream `i` into `out`.
    public func read(stream i: Int, from start: Int, count: Int, into out: UnsafeMutablePointer<Int32>) throws {
        precondition(start >= 0 && count >= 0 && start + count <= self.count(ofStream: i), "range outside stream \(i)")
        switch storage {
        case .memory(let all):
            all.withUnsafeBufferPointer { p in
                for t in 0..<count { out[t] = p[offsets[i] + start + t] }
            }
        case .store(let s):
            try s.read(from: offsets[i] + start, count: count, into: out)
        }
    }

    /// Tokens `range` of stream `i`.
    public func tokens(ofStream i: Int, _ range: Range<Int>) throws -> [Int32] {
        var out = [Int32](repeating: 0, count: range.count)
        try out.withUnsafeMutableBufferPointer { try read(stream: i, from: range.lowerBound, count: range.count, into: $0.baseAddress!) }
        return out
    }

    /// Every stream whole (for small corpora: n-gram counts).
    public func allStreams() throws -> [[Int32]] {
        try (0..<streamCount).map { try tokens(ofStream: $0, 0..<count(ofStream: $0)) }
    }

    /// For one window length: the streams with room for a window, and the running total of their start positions.
    private var windowTable: (L: Int, streams: [Int], cumulative: [Int])?

    /// A batch lane of stateful training: the stream it walks, where its next window starts, and the windows it has
    /// read since it last started.
    public struct Lane: Equatable, Sendable {
        public var stream: Int, position: Int, windows: Int
        public init(stream: Int, position: Int, windows: Int) {
            self.stream = stream; self.position = position; self.windows = windows
        }
    }

    /// Stateful training: fills `ids` and `targets` (each B·L, B = lanes.count) with each lane's next window of
    /// L+1 tokens (inputs t…t+L−1, targets t+1…t+L; the next window starts at t+L, so windows tile the stream).
    /// A lane starts afresh — a random start drawn as `sampleBatch` draws one — when it has none yet, when its
    /// stream's training part has no room for the window, or when it has read `reset` windows (0: never).
    /// Returns the lanes that started afresh: their recurrent state must be zeroed.
    public func nextWindows(lanes: inout [Lane?], L: Int, reset: Int, rng: inout RNG,
                            ids: inout [Int32], targets: inout [Int32]) throws -> [Int] {
        var restarted: [Int] = []
        var window = [Int32](repeating: 0, count: L + 1)
        for b in lanes.indices {
            let goesOn = lanes[b].map { $0.position + L + 1 <= trainEnds[$0.stream] && (reset == 0 || $0.windows < reset) } ?? false
            if !goesOn {
                let (stream, start) = try drawWindow(L: L, rng: &rng)
                lanes[b] = Lane(stream: stream, position: start, windows: 0)
                restarted.append(b)
            }
            let lane = lanes[b]!
            try window.withUnsafeMutableBufferPointer {
                try read(stream: lane.stream, from: lane.position, count: L + 1, into: $0.baseAddress!)
            }
            for t in 0..<L {
                ids[b * L + t] = window[t]
                targets[b * L + t] = window[t + 1]
            }
            lanes[b] = Lane(stream: lane.stream, position: lane.position + L, windows: lane.windows + 1)
        }
        return restarted
    }

    /// A random window start: the stream with probability proportional to its valid starts, then a uniform start.
    func drawWindow(L: Int, rng: inout RNG) throws -> (stream: Int, start: Int) {
        if windowTable?.L != L {
            // Streams long enough for one window of L+1 tokens; stream k has trainEnd − L valid starts.
            var streams: [Int] = [], cumulative: [Int] = []
            var total = 0
            for i in 0..<streamCount where trainEnds[i] >= L + 1 {
                total += trainEnds[i] - L
                streams.append(i)
                cumulative.append(total)
            }
            windowTable = (L, streams, cumulative)
        }
        let (streams, cumulative) = (windowTable!.streams, windowTable!.cumulative)
        guard let total = cumulative.last else {
            let longest = trainEnds.max() ?? 0
            throw MambaKitError(.usage, "sequence length \(L) needs at least \(L + 1) training tokens in one file; the longest training part has \(longest) (lower --seq-len or --val-fraction)")
        }
        // Each valid start position is equally likely.
        let draw = rng.int(below: total)
        // The first stream whose running total exceeds the draw.
        var lo = 0, hi = cumulative.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if cumulative[mid] > draw { hi = mid } else { lo = mid + 1 }
        }
        return (streams[lo], draw - (lo > 0 ? cumulative[lo - 1] : 0))
    }

    /// Fills `ids` and `targets` (each B·L) with B random windows of the training parts.
    public func sampleBatch(B: Int, L: Int, rng: inout RNG, ids: inout [Int32], targets: inout [Int32]) throws {
        var window = [Int32](repeating: 0, count: L + 1)
        for b in 0..<B {
            let (stream, start) = try drawWindow(L: L, rng: &rng)
            try window.withUnsafeMutableBufferPointer {
                try read(stream: stream, from: start, count: L + 1, into: $0.baseAddress!)
            }
            for t in 0..<L {
                ids[b * L + t] = window[t]
                targets[b * L + t] = window[t + 1]
            }
        }
    }
}
