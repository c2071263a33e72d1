import Foundation

/// Augmentation of tokenized audio clips for classification training (what suits sound; DNA's reverse complement
/// does not apply): each draw decodes the clip's tokens to samples, changes them, and encodes them back with the
/// clip's quantiser.
///
/// - speed perturbation (Ko et al., Interspeech 2015): the clip resampled by a factor drawn uniformly in 1 ± `speed`
///   (linear interpolation), which moves pitch and tempo together, as a different voice would;
/// - gain drawn uniformly in ±`gainDB` decibels (clipped to [−1, 1]; nothing for the per-clip min-max `sashimi`
///   quantiser, which removes gain itself);
/// - a time shift: up to `shift` samples dropped from the start, or as many silence tokens put before it.
///
/// The draws come from the trainer's RNG, so a resumed run repeats them.
public struct AudioAugmentation: Sendable, Equatable {
    public var tokenizer: AudioTokenizer
    public var gainDB: Double = 6
    public var speed: Double = 0.1
    public var shift: Int

    /// Defaults: ±10 % speed, ±6 dB, shifts up to 50 ms at the tokenizer's rate. (A random first-order spectral tilt
    /// was tried too and lowered unseen-speaker accuracy, 0.254 → 0.166: BENCHMARKS.md.)
    public init(tokenizer: AudioTokenizer) {
        self.tokenizer = tokenizer
        shift = tokenizer.sampleRate / 20
    }

    public func apply(_ tokens: [Int32], rng: inout RNG) -> [Int32] {
        guard !tokens.isEmpty else { return tokens }
        let x = tokenizer.decode(tokens)
        let factor = 1 + speed * (2 * rng.uniform() - 1)
        let gain = Float(Foundation.pow(10, gainDB * (2 * rng.uniform() - 1) / 20))
        let move = shift > 0 ? rng.int(below: 2 * shift + 1) - shift : 0
        // y[i] = x(i·factor), linearly interpolated, over the clip's span.
        let n = max(1, Int(Double(x.count - 1) / factor) + 1)
        var y = [Float](repeating: 0, count: n)
        for i in 0..<n {
            let t = Double(i) * factor
            let j = min(Int(t), x.count - 1), f = Float(t - Double(j))
            let u = x[j], w = x[min(j + 1, x.count - 1)]
            y[i] = min(max((u + f * (w - u)) * gain, -1), 1)
        }
        var out = tokenizer.encode(y)
        if move > 0 {
            out = [Int32](repeating: tokenizer.silenceToken, count: move) + out
        } else if move < 0, -move < out.count {
            out.removeFirst(-move)
        }
        return out
    }
}
