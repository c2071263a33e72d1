import CMPI
import Foundation

/// Data-parallel gradients with the optimizer state sharded (ZeRO stage 1; Rajbhandari et al. 2020): the
/// parameter arena `0..<total` is cut into one contiguous slice per rank (`slices`); rank r owns slice r, keeps
/// the AdamW moments of that slice only (optimizer memory per rank falls as 1/N), and updates it; the updated
/// slices are then all-gathered so that every rank holds every parameter.
///
/// Gradients reach their owners through a reduce-scatter that MambaKit performs itself, so that its order is
/// fixed: the arena is cut into buckets (one per layer, in the order backward finishes them, then the rest:
/// embedding, final norm, heads); each bucket goes out as one `MPI_Alltoallv` that sends every rank the part of
/// the bucket in its slice, and the owner adds the N copies in rank order, ((g₀ + g₁) + g₂) + …. The run is
/// therefore bit-identical from one run to the next for a given N, and with N = 1 it is the single-process run.
///
/// With `overlap`, a layer's bucket is sent (non-blocking, `MPI_Ialltoallv`) as soon as backward has finished
/// that layer, while the earlier layers' backward still runs; outstanding requests are pushed along at each later
/// layer (Open MPI progresses them only inside MPI calls) and completed after backward.
public final class ShardedGradients {
    public let group: ProcessGroup
    public let total: Int
    /// Rank r's slice of the arena.
    public let slices: [Range<Int>]
    public var own: Range<Int> { slices[group.rank] }
    /// Whether layer buckets are sent during backward.
    public var overlap: Bool

    final class Bucket {
        let range: Range<Int>
        /// The part of `range` in this rank's slice (where the sum goes).
        let mine: Range<Int>
        let sendCounts, sendDispls, recvCounts, recvDispls: UnsafeMutablePointer<Int32>
        let recv: FloatBuffer
        var request: UnsafeMutableRawPointer? = nil
        var issued = false
        let sentBytes: Int

        init(range: Range<Int>, slices: [Range<Int>], rank: Int) {
            self.range = range
            let n = slices.count
            func cut(_ s: Range<Int>) -> Range<Int> {
                let lo = max(range.lowerBound, s.lowerBound), hi = min(range.upperBound, s.upperBound)
                return lo < hi ? lo..<hi : range.lowerBound..<range.lowerBound
            }
            mine = cut(slices[rank])
            sendCounts = .allocate(capacity: n); sendDispls = .allocate(capacity: n)
            recvCounts = .allocate(capacity: n); recvDispls = .allocate(capacity: n)
            var sent = 0
            for j in 0..<n {
                let c = cut(slices[j])
                sendCounts[j] = Int32(c.count)
                sendDispls[j] = Int32(c.lowerBound - range.lowerBound)
                if j != rank { sent += c.count * 4 }
                recvCounts[j] = Int32(mine.count)
                recvDispls[j] = Int32(j * mine.count)
            }
            sentBytes = sent
            recv = FloatBuffer(count: n * mine.count)
        }

        deinit {
            sendCounts.deallocate(); sendDispls.deallocate(); recvCounts.deallocate(); recvDispls.deallocate()
        }
    }

    let buckets: [Bucket]
    /// Layer index → its buckets (a layer larger than `maxBucket` floats has several).
    let layerBuckets: [Int: [Int]]
    var failure: MambaKitError?
    /// Seconds this rank spent inside the reduce-scatter's MPI calls, and in waiting for it after backward, over
    /// the steps so far (benchmarks: how much overlap hides).
    public private(set) var exchangeSeconds = 0.0
    public private(set) var finalWaitSeconds = 0.0
    /// Bytes this rank sends per step: the reduce-scatter and the parameter all-gather.
    public let bytesPerStep: Int

    /// Most floats in one bucket: MPI's counts and displacements are 32-bit, and the owner receives N copies of
    /// its part of a bucket into one buffer.
    static func maxBucket(ranks: Int) -> Int { max(1, min(1 << 28, Int(Int32.max) / max(ranks, 1))) }

    /// `overlap` defaults to on; `MAMBAKIT_MPI_OVERLAP=0` turns it off (to measure what it hides).
    public init(layout: ArenaLayout, group: ProcessGroup,
                overlap: Bool = ProcessInfo.processInfo.environment["MAMBAKIT_MPI_OVERLAP"] != "0") {
        self.group = group
        self.overlap = overlap
        total = layout.total
        slices = (0..<group.size).map { ProcessGroup.share(of: layout.total, rank: $0, size: group.size) }
        // Runs of views of one layer ("backbone.layers.<l>.") or of the rest, in arena order; a run covers the
        // alignment gap after its last view.
        func layer(of name: String) -> Int? {
            let prefix = "backbone.layers."
            guard name.hasPrefix(prefix) else { return nil }
            let rest = name.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: ".") else { return nil }
            return Int(rest[..<dot])
        }
        var runs: [(layer: Int?, range: Range<Int>)] = []
        let views = layout.views
        for (i, v) in views.enumerated() {
            let start = i == 0 ? 0 : v.offset
            let end = i + 1 < views.count ? views[i + 1].offset : layout.total
            let l = layer(of: v.name)
            if let last = runs.last, last.layer == l {
                runs[runs.count - 1].range = last.range.lowerBound..<end
            } else {
                runs.append((l, start..<end))
            }
        }
        // A layer appearing in two runs (an unusual layout) is not sent early: its buckets join the rest.
        var counts: [Int: Int] = [:]
        for r in runs { if let l = r.layer { counts[l, default: 0] += 1 } }
        var ordered: [(layer: Int?, range: Range<Int>)] = []
        let layers = runs.compactMap { r in r.layer.flatMap { counts[$0] == 1 ? $0 : nil } }
        for l in layers.sorted(by: >) { ordered.append(runs.first { $0.layer == l }!) }
        for r in runs where r.layer.map({ counts[$0] != 1 }) ?? true { ordered.append((nil, r.range)) }
        var list: [Bucket] = []
        var byLayer: [Int: [Int]] = [:]
        for r in ordered where !r.range.isEmpty {
            var lo = r.range.lowerBound
            while lo < r.range.upperBound {
                let hi = min(r.range.upperBound, lo + Self.maxBucket(ranks: group.size))
                if let l = r.layer { byLayer[l, default: []].append(list.count) }
                list.append(Bucket(range: lo..<hi, slices: slices, rank: group.rank))
                lo = hi
            }
        }
        buckets = list
        layerBuckets = byLayer
        let gatherBytes = slices[group.rank].count * 4 * (group.size - 1)
        bytesPerStep = list.reduce(gatherBytes) { $0 + $1.sentBytes }
    }

    /// Whether the arena is too large for MPI's 32-bit counts in the parameter all-gather.
    public static func check(layout: ArenaLayout, group: ProcessGroup) throws {
        let largest = (0..<group.size).map { ProcessGroup.share(of: layout.total, rank: $0, size: group.size).upperBound }.max() ?? 0
        guard largest <= Int(Int32.max) else {
            throw MambaKitError(.distributed, "the model's \(layout.total) parameter floats exceed what one MPI collective addresses (\(Int32.max))")
        }
    }

    /// Called by backward when layer `l`'s gradients are complete: with `overlap`, sends its buckets now and
    /// pushes the outstanding ones along.
    public func layerReady(_ l: Int, grads: Arena) {
        guard overlap, group.size > 1, failure == nil, let ids = layerBuckets[l] else { return }
        let t0 = mk_mpi_wtime()
        for i in ids { issue(i, grads: grads, blocking: false) }
        for b in buckets where b.request != nil {
            var done: Int32 = 0
            let rc = mk_mpi_test(&b.request, &done)
            if rc != 0 { failure = ProcessGroup.mpiError(rc, "MPI_Test") }
        }
        exchangeSeconds += mk_mpi_wtime() - t0
    }

    func issue(_ i: Int, grads: Arena, blocking: Bool) {
        let b = buckets[i]
        guard !b.issued else { return }
        b.issued = true
        let send = UnsafeRawPointer(grads.base + b.range.lowerBound)
        let rc: Int32
        if blocking {
            rc = mk_mpi_alltoallv(send, b.sendCounts, b.sendDispls, b.recv.ptr, b.recvCounts, b.recvDispls, Int32(MK_MPI_FLOAT))
        } else {
            rc = mk_mpi_ialltoallv(send, b.sendCounts, b.sendDispls, b.recv.ptr, b.recvCounts, b.recvDispls,
                                   Int32(MK_MPI_FLOAT), &b.request)
        }
        if rc != 0, failure == nil { failure = ProcessGroup.mpiError(rc, blocking ? "MPI_Alltoallv" : "MPI_Ialltoallv") }
    }

    /// After backward: sends what is left, completes every bucket, and leaves in `grads` over this rank's slice
    /// the sum of all ranks' gradients (added in rank order). Elsewhere `grads` keeps this rank's own values.
    public func reduce(grads: Arena) throws {
        guard group.size > 1 else { return }
        let t0 = mk_mpi_wtime()
        for i in buckets.indices { issue(i, grads: grads, blocking: !overlap) }
        let t1 = mk_mpi_wtime()
        for b in buckets where b.request != nil {
            let rc = mk_mpi_wait(&b.request)
            if rc != 0, failure == nil { failure = ProcessGroup.mpiError(rc, "MPI_Wait") }
        }
        let t2 = mk_mpi_wtime()
        exchangeSeconds += t2 - t0
        finalWaitSeconds += t2 - t1
        if let failure { self.failure = nil; throw failure }
        let n = group.size
        for b in buckets {
            b.issued = false
            let c = b.mine.count
            guard c > 0 else { continue }
            let dst = grads.base + b.mine.lowerBound, src = b.recv.ptr
            dst.update(from: src, count: c)
            for r in 1..<n {
                let s = src + r * c
                for i in 0..<c { dst[i] += s[i] }
            }
        }
    }

    /// After the update of this rank's slice: every rank's slice of `params` copied to every rank.
    public func gatherParameters(_ params: Arena) throws {
        guard group.size > 1 else { return }
        let t0 = mk_mpi_wtime()
        try group.allgather(params.base, ranges: slices)
        exchangeSeconds += mk_mpi_wtime() - t0
    }
}
