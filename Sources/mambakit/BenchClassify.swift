import Foundation
import MambaKit

extension Bench {
    /// Sequence-classification inference throughput (`SequenceClassifier.logits`: backbone in chunks of 2048 with the
    /// state carried, mean pooling, linear head, strand `none`) on random byte sequences with the reference backbone:
    /// `batch` sequences of `length` tokens per call, one warm-up call, then timed calls for at least ~3 s.
    func benchClassify(config base: MambaConfig, name: String, length: Int, batch: Int) throws -> [String: Any] {
        resetPeakRSS()
        var config = base
        config.classLabels = ["a", "b"]
        let clf = try SequenceClassifier(model: try MambaModel(config: config, seed: 0), pooling: .mean)
        var rng = RNG(seed: 3)
        let seqs = (0..<batch).map { _ in (0..<length).map { _ in Int32(rng.int(below: 256)) } }
        _ = try clf.logits(seqs, batchSize: batch)
        let clock = ContinuousClock()
        let t0 = clock.now
        var calls = 0
        repeat {
            _ = try clf.logits(seqs, batchSize: batch)
            calls += 1
        } while calls < 2 || secs(clock.now - t0) < 3
        let s = secs(clock.now - t0) / Double(calls)
        let sps = Double(batch) / s
        printErr(String(format: "classify %@ L=%d batch %d: %.1f sequences/s (%.0f tokens/s), peak RSS %.0f MB", name,
                        length, batch, sps, sps * Double(length), Double(peakRSS()) / 1e6))
        return ["impl": "mambakit", "task": "classify", "config": name, "batch": batch, "seq_len": length,
                "threads": Parallel.threads, "sequences_per_s": sps, "tokens_per_s": sps * Double(length),
                "seconds_per_batch": s, "peak_rss_mb": Double(peakRSS()) / 1e6, "parameters": config.parameterCount]
    }
}
