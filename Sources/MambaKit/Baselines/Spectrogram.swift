import Foundation

/// Power spectra of real frames by an in-place iterative radix-2 FFT (Cooley–Tukey, decimation in time), for the
/// spectral baseline. `size` is a power of two; the result has `size / 2 + 1` bins (DC to Nyquist), each
/// `|X_k|² = (Σ_n x_n e^{-2πi kn/size})²` in Double.
public struct PowerSpectrum: Sendable {
    public let size: Int
    let cosines: [Double], sines: [Double]
    let reversed: [Int]

    public init(size: Int) throws {
        guard size >= 2, size <= 1 << 20, size & (size - 1) == 0 else {
            throw MambaKitError(.usage, "FFT size must be a power of two in 2...2^20 (got \(size))")
        }
        self.size = size
        cosines = (0..<(size / 2)).map { cos(2 * Double.pi * Double($0) / Double(size)) }
        sines = (0..<(size / 2)).map { -sin(2 * Double.pi * Double($0) / Double(size)) }
        var bits = 0
        while 1 << bits < size { bits += 1 }
        reversed = (0..<size).map { i in
            var r = 0
            for b in 0..<bits where i & (1 << b) != 0 { r |= 1 << (bits - 1 - b) }
            return r
        }
    }

    public var bins: Int { size / 2 + 1 }

    /// `out[k] = |X_k|²` for k in 0...size/2, from `frame` (`size` samples); `re`, `im` are scratch of `size`.
    public func callAsFunction(_ frame: UnsafePointer<Double>, out: UnsafeMutablePointer<Double>,
                               re: inout [Double], im: inout [Double]) {
        let n = size
        for i in 0..<n {
            re[reversed[i]] = frame[i]
            im[reversed[i]] = 0
        }
        var half = 1
        while half < n {
            let stride = n / (half * 2)
            var start = 0
            while start < n {
                for j in 0..<half {
                    let c = cosines[j * stride], s = sines[j * stride]
                    let a = start + j, b = a + half
                    let tr = re[b] * c - im[b] * s
                    let ti = re[b] * s + im[b] * c
                    re[b] = re[a] - tr
                    im[b] = im[a] - ti
                    re[a] += tr
                    im[a] += ti
                }
                start += half * 2
            }
            half *= 2
        }
        for k in 0...(n / 2) { out[k] = re[k] * re[k] + im[k] * im[k] }
    }
}

/// The log-mel spectrogram of a clip, summarised as a fixed-length vector for a linear classifier.
///
/// Frames of `frame` samples (a power of two) every `hop` samples, Hann-windowed; the power spectrum through
/// `bands` triangular mel filters (HTK's mel scale, 2595 · log10(1 + f / 700), from 0 Hz to Nyquist); the log of
/// each band's energy plus a floor; then the clip's mean log energy (over all frames and bands) subtracted, so the
/// recording's gain does not matter. A clip of any length becomes `segments × bands` values (the frames split into
/// `segments` equal runs in time, each averaged), then the mean and the standard deviation of each band over the
/// whole clip: `(segments + 2) · bands` features. A clip shorter than one frame is zero-padded to one.
public struct SpectralFeatures: Sendable {
    public let frame: Int, hop: Int, bands: Int, segments: Int, sampleRate: Int
    public static let floor = 1e-10
    let fft: PowerSpectrum
    let window: [Double]
    /// `(bands, bins)` filter weights.
    let filters: [[Double]]

    public init(sampleRate: Int, frame: Int = 256, hop: Int = 128, bands: Int = 40, segments: Int = 8) throws {
        guard hop >= 1, hop <= frame, bands >= 1, bands <= frame / 2, segments >= 1, segments <= 1024,
              sampleRate >= 1 else {
            throw MambaKitError(.usage, "spectral features need 1 ≤ hop ≤ frame, 1 ≤ bands ≤ frame/2, 1 ≤ segments ≤ 1024 (got frame \(frame), hop \(hop), bands \(bands), segments \(segments))")
        }
        fft = try PowerSpectrum(size: frame)
        self.frame = frame
        self.hop = hop
        self.bands = bands
        self.segments = segments
        self.sampleRate = sampleRate
        // Periodic Hann.
        window = (0..<frame).map { 0.5 - 0.5 * cos(2 * Double.pi * Double($0) / Double(frame)) }
        func mel(_ f: Double) -> Double { 2595 * log10(1 + f / 700) }
        func hz(_ m: Double) -> Double { 700 * (pow(10, m / 2595) - 1) }
        let nyquist = Double(sampleRate) / 2
        let edges = (0...(bands + 1)).map { hz(mel(nyquist) * Double($0) / Double(bands + 1)) }
        let binHz = Double(sampleRate) / Double(frame)
        filters = (0..<bands).map { b in
            (0..<(frame / 2 + 1)).map { k in
                let f = Double(k) * binHz
                let (lo, mid, hi) = (edges[b], edges[b + 1], edges[b + 2])
                if f <= lo || f >= hi { return 0 }
                return f <= mid ? (f - lo) / (mid - lo) : (hi - f) / (hi - mid)
            }
        }
    }

    public var count: Int { (segments + 2) * bands }

    /// The log mel-band energies of every frame, less their mean: `(frames, bands)` row-major.
    public func logBands(_ x: [Float]) -> (frames: Int, values: [Double]) {
        let frames = x.count <= frame ? 1 : 1 + (x.count - frame + hop - 1) / hop
        var values = [Double](repeating: 0, count: frames * bands)
        var buf = [Double](repeating: 0, count: frame)
        var power = [Double](repeating: 0, count: fft.bins)
        var re = [Double](repeating: 0, count: frame), im = [Double](repeating: 0, count: frame)
        var total = 0.0
        for f in 0..<frames {
            let start = f * hop
            for i in 0..<frame {
                let t = start + i
                buf[i] = t < x.count ? Double(x[t]) * window[i] : 0
            }
            buf.withUnsafeBufferPointer { b in
                power.withUnsafeMutableBufferPointer { p in fft(b.baseAddress!, out: p.baseAddress!, re: &re, im: &im) }
            }
            for band in 0..<bands {
                var e = 0.0
                for (k, w) in filters[band].enumerated() where w > 0 { e += w * power[k] }
                let v = log(e + Self.floor)
                values[f * bands + band] = v
                total += v
            }
        }
        let mean = total / Double(values.count)
        for i in values.indices { values[i] -= mean }
        return (frames, values)
    }

    /// The feature vector of one clip.
    public func callAsFunction(_ x: [Float]) -> [Double] {
        let (frames, v) = logBands(x)
        var out = [Double](repeating: 0, count: count)
        for band in 0..<bands {
            var mean = 0.0
            for f in 0..<frames { mean += v[f * bands + band] }
            mean /= Double(frames)
            var varSum = 0.0
            for f in 0..<frames { varSum += (v[f * bands + band] - mean) * (v[f * bands + band] - mean) }
            out[segments * bands + band] = mean
            out[(segments + 1) * bands + band] = (varSum / Double(frames)).squareRoot()
            // The time course of each band about its mean (cepstral mean normalisation, per band).
            for s in 0..<segments {
                // Equal runs of frames; a clip with fewer frames than segments repeats frames.
                let lo = s * frames / segments, hi = max(lo + 1, (s + 1) * frames / segments)
                var sum = 0.0
                for f in lo..<hi { sum += v[f * bands + band] }
                out[s * bands + band] = sum / Double(hi - lo) - mean
            }
        }
        return out
    }
}

/// k-mer frequencies of a DNA sequence over A, C, G, T (case folded; a k-mer with any other letter is skipped):
/// `4^k` values summing to 1 (all zero when the sequence has no valid k-mer).
public struct KmerFeatures: Sendable {
    public let k: Int
    public init(k: Int = 5) throws {
        guard (1...8).contains(k) else { throw MambaKitError(.usage, "k-mer length must be in 1...8 (got \(k))") }
        self.k = k
    }

    public var count: Int { 1 << (2 * k) }

    public func callAsFunction(_ bases: [UInt8]) -> [Double] {
        var out = [Double](repeating: 0, count: count)
        let mask = count - 1
        var code = 0, valid = 0, total = 0
        for b in bases {
            let v: Int
            switch b | 0x20 {
            case UInt8(ascii: "a"): v = 0
            case UInt8(ascii: "c"): v = 1
            case UInt8(ascii: "g"): v = 2
            case UInt8(ascii: "t"): v = 3
            default: valid = 0; continue
            }
            code = ((code << 2) | v) & mask
            valid += 1
            if valid >= k { out[code] += 1; total += 1 }
        }
        if total > 0 { for i in out.indices { out[i] /= Double(total) } }
        return out
    }
}
