import Foundation

// Audio tokenizers: 8-bit quantisers that turn samples (floats, full scale ±1) into 256 tokens and back, as WaveNet,
// SampleRNN, SaShiMi and the Mamba paper's audio models do (FACTS.md, Audio). Three quantisers: standard mu-law
// (torchaudio's `mu_law_encoding`/`mu_law_decoding`, plus clipping), SaShiMi's variant (state-spaces/s4
// `src/dataloaders/audio.py`, followed to the letter where it differs from the textbook formula), and uniform 8-bit.
// The per-sample formulas, evaluated in Double, are the reference (`encodeReference`); for the mu-law quantisers
// `encode` gets the same tokens from a table of the 255 bin boundaries, found once by bisection on the formula itself,
// so it is exact at every boundary and needs no logarithm per sample (a branch-free 8-step search, about 4× faster
// than `log1p` here; checked against the formula on every Float in [−1.01, 1.01] by an opt-in test).

/// How samples become tokens. All three are 8-bit: 256 tokens, 0…255, with 128 the token of silence.
public enum AudioQuantizer: String, Sendable, CaseIterable {
    /// Standard mu-law, mu = 255 (WaveNet; torchaudio `mu_law_encoding` / `mu_law_decoding`):
    /// `y = sign(x)·ln(1 + mu|x|)/ln(1 + mu)`, `q = floor((y + 1)/2·mu + 0.5)`; decoding `y = 2q/mu − 1`,
    /// `x = sign(y)·((1 + mu)^|y| − 1)/mu`. Input is clipped to [−1, 1] first (torchaudio does not clip: beyond ±1
    /// it returns tokens outside 0…255). Steps are fine near 0 and coarse near ±1; `decode(encode(x))` is within
    /// `((1 + mu)^(1/mu) − 1)·(|x| + 1/mu)` ≈ 0.022·(|x| + 1/255) of x, i.e. about 2.2 % of the amplitude.
    /// x = 0 is the lower edge of bin 128; evaluated in Double (here) or float32 (torchaudio), `y + 1` rounds to 1
    /// for tiny negative x, so bin 128 starts a hair below 0, at x = −1.2·10⁻¹⁸.
    case mulaw
    /// SaShiMi's mu-law (state-spaces/s4 `mu_law_encode` / `mu_law_decode`): each clip (the whole array given to
    /// `encode`) is first min-max scaled to [−1, 1], `s = −1 + 2(x − min)/(max − min + 10⁻⁶)`; then
    /// `y = sign(s)·ln(1 + mu|s + 10⁻⁸|)/ln(1 + mu)` and `q = floor((y + 1)/2·(256 − 0.01) + 0.005)`; decoding
    /// `y = q/128 − 1` and the mu-law expansion. How this differs from the textbook form (and from FACTS.md's summary):
    ///
    /// - the clip's loudness is lost: a whisper and a shout of the same shape give the same tokens, and a constant
    ///   clip (all silence) scales to −1 everywhere, so it encodes as token 0 throughout, not 128 (the 10⁻⁶ in the
    ///   denominator is what keeps that division finite; it also puts the clip's maximum just below +1);
    /// - the 10⁻⁸ inside the absolute value shifts the compander by 10⁻⁸ (while `sign(s)` does not move), so
    ///   scaled values in (−10⁻⁸, 0) get token 127 — except within 1.2·10⁻¹⁸ of −10⁻⁸, where `y + 1` rounds to 1
    ///   and the token is 128 (the only place where the formula is not monotone; `encode` reproduces it);
    /// - `q/128 − 1` is (within 4·10⁻⁵) the lower edge of bin q, not its centre: the bins are 1/255.99 wide in
    ///   (y + 1)/2, the decoded levels step by 1/256. Decoding is biased low by up to one bin: y − ŷ lies in
    ///   [−4·10⁻⁵, 0.0079]. Token 255 decodes to 0.9574, not 1, token 0 to −1 and token 128 to exactly 0;
    /// - the reference runs in float32 (PyTorch); here it runs in Double, so a sample within float32 rounding
    ///   (relative ~10⁻⁷) of a bin boundary can land in the neighbouring bin compared with PyTorch. (In float32 the
    ///   10⁻⁸ shift even vanishes for |s| ≥ 0.25, where it is below half an ulp.)
    case sashimi
    /// Uniform 8-bit: 256 equal bins over [−1, 1], `q = floor((x + 1)·128)` clipped to 0…255 (the high byte of
    /// 16-bit PCM in offset binary, as 8-bit WAV stores it), computed as `floor(128·x) + 128`, which is exact in
    /// floating point; decoding to the bin centre `(q + 0.5)/128 − 1`, so `|decode(encode(x)) − x| ≤ 1/256` for x in
    /// [−1, 1].
    case linear
    /// Standard mu-law (`mulaw`) of the clip normalised first: its mean removed and its peak scaled to 1,
    /// `s = (x − mean)/max|x − mean|` (a silent clip, peak below 10⁻⁹, stays 0), so that a recording's DC offset
    /// and level — which differ between microphones and speakers — do not reach the tokens. Decoding is mu-law's.
    /// For classifiers: measured on a speaker never heard in training, it is what lets a waveform model carry over
    /// (BENCHMARKS.md).
    case normalized
}

/// Tokenizer of audio samples: a quantiser and the sample rate the model works at (audio is resampled to it before
/// `encode`). Stored in a model's `config.json` under `mambakit` through `toJSON()` / `init(json:)`.
///
/// Samples are floats with full scale ±1 (libsndfile's float reading of PCM). A NaN sample reads as 0 and ±∞ as ±1
/// (readers never produce them; this only keeps a bad buffer from turning into out-of-range tokens).
///
/// ```swift
/// let tok = AudioTokenizer(quantizer: .mulaw, sampleRate: 16000)
/// let ids = tok.encode([0, 0.5, -1])   // [128, 239, 0]
/// let x = tok.decode(ids)              // [0.0000862, 0.4967, -1]
/// ```
public struct AudioTokenizer: Sendable, Equatable {
    public var quantizer: AudioQuantizer
    /// Samples per second of the model's input, stored with the model.
    public var sampleRate: Int

    /// mu of the mu-law quantisers.
    public static let mu: Double = 255

    public init(quantizer: AudioQuantizer = .mulaw, sampleRate: Int = 16000) {
        self.quantizer = quantizer
        self.sampleRate = sampleRate
    }

    /// 256 for every quantiser.
    public var vocabSize: Int { 256 }

    /// The token that starts an autoregressive input: 128 for every quantiser. SaShiMi fills position 0 of its inputs
    /// with 128 (`q_zero`); standard mu-law and uniform 8-bit encode x = 0 as 128 too (0 is the lower edge of bin
    /// 128 in both: x = −10⁻⁵ gives 127), and 128 decodes to the smallest positive level (mulaw: 8.6·10⁻⁵,
    /// linear: 1/256; SaShiMi: exactly 0). Note that SaShiMi's own encoder maps a silent clip to token 0 (see
    /// `AudioQuantizer.sashimi`), so 128 is "zero" only in SaShiMi's decoding.
    public var silenceToken: Int32 { 128 }

    // MARK: - Encoding and decoding

    /// Tokens (0…255) for one clip of samples. For `.sashimi` the min-max scaling runs over the whole array, so pass
    /// one clip (or one training window, as SaShiMi does) at a time.
    public func encode(_ x: [Float]) -> [Int32] {
        let n = x.count
        guard n > 0 else { return [] }
        let table = AudioTokenizer.thresholds(quantizer)
        let x = quantizer == .normalized ? AudioTokenizer.normalizedClip(x) : x
        return [Int32](unsafeUninitializedCapacity: n) { out, count in
            x.withUnsafeBufferPointer { src in
                table.withUnsafeBufferPointer { t in
                    let t = t.baseAddress!
                    switch quantizer {
                    case .mulaw, .normalized:
                        for i in 0..<n { out[i] = Int32(AudioTokenizer.search(t, AudioTokenizer.clean(src[i]))) }
                    case .linear:
                        // floor(128·x) + 128 is exact in Float too (scaling by 2⁷, then integers below 2²⁴; beyond
                        // that the clamp decides), and ±∞ clamp to 0 and 255 as ±1 would.
                        for i in 0..<n {
                            let v = src[i]
                            let q = min(max((v * 128).rounded(.down) + 128, 0), 255)
                            out[i] = v.isNaN ? 128 : Int32(q)
                        }
                    case .sashimi:
                        let (lo, den) = AudioTokenizer.minMax(src)
                        let island = Tables.sashimiIsland
                        for i in 0..<n {
                            let s = -1 + 2 * (AudioTokenizer.clean(src[i]) - lo) / den
                            let q = AudioTokenizer.search(t, s)
                            out[i] = s >= island.lo && s <= island.hi ? 128 : Int32(q)
                        }
                    }
                }
            }
            count = n
        }
    }

    /// Samples for tokens: each token's level (see `AudioQuantizer`). Never fails: an id outside 0…255 decodes as the
    /// silence token does.
    public func decode(_ ids: [Int32]) -> [Float] {
        let levels = AudioTokenizer.levels(quantizer)
        let n = ids.count
        return [Float](unsafeUninitializedCapacity: n) { out, count in
            levels.withUnsafeBufferPointer { lv in
                ids.withUnsafeBufferPointer { src in
                    for i in 0..<n {
                        let id = src[i]
                        out[i] = lv[UInt32(bitPattern: id) < 256 ? Int(id) : 128]
                    }
                }
            }
            count = n
        }
    }

    /// `encode` computed sample by sample from the formulas in Double (the reference the tests hold `encode` to).
    public func encodeReference(_ x: [Float]) -> [Int32] {
        switch quantizer {
        case .mulaw, .linear:
            return x.map { AudioTokenizer.referenceToken(AudioTokenizer.clean($0), quantizer) }
        case .normalized:
            let v = x.map { AudioTokenizer.clean($0) }
            let mean = v.reduce(0, +) / Double(max(v.count, 1))
            let peak = v.reduce(0) { max($0, abs($1 - mean)) }
            // (Through Float, as `encode` rounds the normalised clip.)
            return v.map { AudioTokenizer.referenceToken(peak < 1e-9 ? 0 : Double(Float(($0 - mean) / peak)), .mulaw) }
        case .sashimi:
            guard !x.isEmpty else { return [] }
            let v = x.map { AudioTokenizer.clean($0) }
            let lo = v.min()!, hi = v.max()!
            return v.map { AudioTokenizer.referenceToken(-1 + 2 * ($0 - lo) / (hi - lo + 1e-6), .sashimi) }
        }
    }

    /// `decode` computed token by token from the formulas in Double, rounded to Float.
    public func decodeReference(_ ids: [Int32]) -> [Float] {
        ids.map { Float(AudioTokenizer.referenceLevel((0...255).contains($0) ? Int($0) : 128, quantizer)) }
    }

    // MARK: - The formulas (reference)

    /// The token of one input value by the quantiser's formula in Double: x for `.mulaw` and `.linear` (clipped to
    /// [−1, 1] here), the min-max scaled value s for `.sashimi`.
    public static func referenceToken(_ v: Double, _ quantizer: AudioQuantizer) -> Int32 {
        let q: Double
        switch quantizer {
        case .mulaw, .normalized:
            let x = min(max(v, -1), 1)
            let y = sign(x) * Foundation.log1p(mu * abs(x)) / Foundation.log1p(mu)
            q = ((y + 1) / 2 * mu + 0.5).rounded(.down)
        case .sashimi:
            let y = sign(v) * Foundation.log1p(mu * abs(v + 1e-8)) / Foundation.log1p(mu)
            q = ((y + 1) / 2 * (256 - 0.01) + 0.005).rounded(.down)
        case .linear:
            q = (min(max(v, -1), 1) * 128).rounded(.down) + 128
        }
        return Int32(min(max(q, 0), 255))
    }

    /// The level token q (0…255) decodes to, by the quantiser's formula in Double.
    public static func referenceLevel(_ q: Int, _ quantizer: AudioQuantizer) -> Double {
        switch quantizer {
        case .mulaw, .normalized: return expand(2 * Double(q) / mu - 1)
        case .sashimi: return expand(Double(q) / 128 - 1)
        case .linear: return (Double(q) + 0.5) / 128 - 1
        }
    }

    /// Mu-law expansion `sign(y)·((1 + mu)^|y| − 1)/mu`.
    static func expand(_ y: Double) -> Double {
        sign(y) * Foundation.expm1(abs(y) * Foundation.log1p(mu)) / mu
    }

    /// −1, 0 or +1 (0 for ±0, as `torch.sign`).
    static func sign(_ v: Double) -> Double { v > 0 ? 1 : (v < 0 ? -1 : 0) }

    /// A sample as Double, NaN read as 0 and ±∞ as ±1.
    @inline(__always)
    static func clean(_ x: Float) -> Double {
        x.isFinite ? Double(x) : (x.isNaN ? 0 : (x > 0 ? 1 : -1))
    }

    // MARK: - Tables (fast path)

    /// The clip's minimum and the denominator max − min + 10⁻⁶ of SaShiMi's min-max scaling. (`encode` divides by
    /// it per sample, as the reference does: multiplying by a precomputed 2/den would round differently.)
    static func minMax(_ x: UnsafeBufferPointer<Float>) -> (lo: Double, den: Double) {
        var lo = Double.infinity, hi = -Double.infinity
        for v in x {
            let d = clean(v)
            lo = min(lo, d)
            hi = max(hi, d)
        }
        return (lo, hi - lo + 1e-6)
    }

    /// Token = the number of thresholds t[1...255] that are ≤ v (t[0] = −∞): a binary search without branches (each
    /// comparison's 0/1 is shifted into place, so there is no jump to mispredict on audio).
    @inline(__always)
    static func search(_ t: UnsafePointer<Double>, _ v: Double) -> Int {
        @inline(__always) func bit(_ b: Bool) -> Int { Int(unsafeBitCast(b, to: UInt8.self)) }
        var q = bit(v >= t[128]) &<< 7
        q |= bit(v >= t[q | 64]) &<< 6
        q |= bit(v >= t[q | 32]) &<< 5
        q |= bit(v >= t[q | 16]) &<< 4
        q |= bit(v >= t[q | 8]) &<< 3
        q |= bit(v >= t[q | 4]) &<< 2
        q |= bit(v >= t[q | 2]) &<< 1
        q |= bit(v >= t[q | 1])
        return q
    }

    /// `referenceToken` by the boundary table: what `encode` does per value for `.mulaw` (v = x) and `.sashimi`
    /// (v = the scaled s); `.linear` works too, though `encode` computes that one directly.
    public static func token(_ v: Double, _ quantizer: AudioQuantizer) -> Int32 {
        let q = thresholds(quantizer).withUnsafeBufferPointer { search($0.baseAddress!, v) }
        if quantizer == .sashimi, v >= Tables.sashimiIsland.lo, v <= Tables.sashimiIsland.hi { return 128 }
        return Int32(q)
    }

    /// `(x − mean)/max|x − mean|` in Double, rounded to Float (NaN as 0, ±∞ as ±1 first); all zeros when the peak is
    /// below 10⁻⁹.
    static func normalizedClip(_ x: [Float]) -> [Float] {
        let v = x.map { clean($0) }
        let mean = v.reduce(0, +) / Double(max(v.count, 1))
        let peak = v.reduce(0) { max($0, abs($1 - mean)) }
        guard peak >= 1e-9 else { return [Float](repeating: 0, count: x.count) }
        return v.map { Float(($0 - mean) / peak) }
    }

    /// The bin boundaries of a quantiser: t[k] (k = 1…255) is the smallest Double in [−1, 1] whose reference token
    /// is ≥ k, t[0] = −∞. Found by bisection over the ordered Doubles, so `search(t, v) == referenceToken(v)` for
    /// every v wherever the formula is monotone: all of [−1, 1] except SaShiMi's island of 128 around s = −10⁻⁸
    /// (`sashimiIsland`).
    public static func thresholds(_ quantizer: AudioQuantizer) -> [Double] {
        switch quantizer {
        case .mulaw, .normalized: return Tables.mulaw
        case .sashimi: return Tables.sashimi
        case .linear: return Tables.linear
        }
    }

    /// The 256 decoded levels of a quantiser (index = token).
    public static func levels(_ quantizer: AudioQuantizer) -> [Float] {
        switch quantizer {
        case .mulaw, .normalized: return Tables.mulawLevels
        case .sashimi: return Tables.sashimiLevels
        case .linear: return Tables.linearLevels
        }
    }

    /// The Doubles s around −10⁻⁸ that SaShiMi's formula maps to 128 although their neighbours get 127 (there
    /// |s + 10⁻⁸| is so small that y + 1 rounds to 1): about ±1.2·10⁻¹⁸ wide.
    public static var sashimiIsland: (lo: Double, hi: Double) { Tables.sashimiIsland }

    private enum Tables {
        static let sashimiIsland: (lo: Double, hi: Double) = {
            // Walk out from −1e-8 (token 128) by bisection to the last 128 on each side; 1e-12 away the token is 127.
            let c = -1e-8
            precondition(referenceToken(c, .sashimi) == 128 && referenceToken(c - 1e-12, .sashimi) == 127
                         && referenceToken(c + 1e-12, .sashimi) == 127)
            func edge(_ inside: Double, _ outside: Double) -> Double {
                var a = inside, b = outside
                while true {
                    let m = a / 2 + b / 2
                    if m == a || m == b { return a }
                    if referenceToken(m, .sashimi) == 128 { a = m } else { b = m }
                }
            }
            return (edge(c, c - 1e-12), edge(c, c + 1e-12))
        }()
        static let mulaw = boundaries(.mulaw)
        static let sashimi = boundaries(.sashimi)
        static let linear = boundaries(.linear)
        static let mulawLevels = (0..<256).map { Float(referenceLevel($0, .mulaw)) }
        static let sashimiLevels = (0..<256).map { Float(referenceLevel($0, .sashimi)) }
        static let linearLevels = (0..<256).map { Float(referenceLevel($0, .linear)) }

        static func boundaries(_ quantizer: AudioQuantizer) -> [Double] {
            // Doubles in order ↔ integer keys in order: the bit pattern for v ≥ 0, its negated magnitude for v < 0.
            func key(_ v: Double) -> Int64 {
                v >= 0 ? Int64(bitPattern: v.bitPattern) : -Int64(bitPattern: (-v).bitPattern)
            }
            func value(_ k: Int64) -> Double {
                k >= 0 ? Double(bitPattern: UInt64(k)) : -Double(bitPattern: UInt64(-k))
            }
            var t = [Double](repeating: -.infinity, count: 256)
            for k in 1...255 {
                // Invariant: token(value(lo)) < k ≤ token(value(hi)).
                var lo = key(-1), hi = key(1)
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2
                    if referenceToken(value(mid), quantizer) >= k { hi = mid } else { lo = mid }
                }
                t[k] = value(hi)
            }
            return t
        }
    }

    // MARK: - JSON (the `mambakit.tokenizer` object of config.json)

    /// `{"type": "audio", "quantizer": ..., "sample_rate": ..., "vocab_size": 256}`.
    public func toJSON() -> [String: Any] {
        ["type": "audio", "quantizer": quantizer.rawValue, "sample_rate": sampleRate, "vocab_size": vocabSize]
    }

    /// Reads what `toJSON()` wrote. `quantizer` and `sample_rate` (a positive integer) are required; `type`, if
    /// given, must be "audio" and `vocab_size`, if given, 256. Unknown keys are ignored.
    public init(json: [String: Any], location: String = "config.json, mambakit.tokenizer") throws {
        if let type = json["type"], (type as? String) != "audio" {
            throw MambaKitError(.config, "tokenizer type is \(type) (expected audio)", at: location)
        }
        guard let rawQuantizer = json["quantizer"] else {
            throw MambaKitError(.config, "tokenizer setting 'quantizer' is missing", at: location)
        }
        guard let name = rawQuantizer as? String, let quantizer = AudioQuantizer(rawValue: name) else {
            let allowed = AudioQuantizer.allCases.map { $0.rawValue }.joined(separator: ", ")
            throw MambaKitError(.config, "tokenizer setting 'quantizer' is \(rawQuantizer) (expected one of "
                + "\(allowed))", at: location)
        }
        guard let rawRate = json["sample_rate"] else {
            throw MambaKitError(.config, "tokenizer setting 'sample_rate' is missing", at: location)
        }
        guard let rate = AudioTokenizer.integer(rawRate) else {
            throw MambaKitError(.config, "tokenizer setting 'sample_rate' is \(rawRate) (expected a positive "
                + "integer, samples per second)", at: location)
        }
        try Settings.check("sample_rate", rate, .file(location, section: ""))
        self.init(quantizer: quantizer, sampleRate: rate)
        if let size = json["vocab_size"] {
            guard let n = AudioTokenizer.integer(size), n == vocabSize else {
                throw MambaKitError(.config, "tokenizer vocab_size is \(size) but audio quantizer '\(name)' has "
                    + "\(vocabSize) tokens", at: location)
            }
        }
    }

    /// An integral JSON number (Int, or an NSNumber without a fractional part) as Int; nil for anything else,
    /// booleans included (JSONSerialization's true would otherwise read as 1).
    private static func integer(_ v: Any) -> Int? {
        if let n = v as? NSNumber {
            if String(cString: n.objCType) == "c" { return nil }
            let d = n.doubleValue
            guard d.isFinite, d == d.rounded(), abs(d) < 0x1p53 else { return nil }
            return n.intValue
        }
        return v as? Int
    }
}
