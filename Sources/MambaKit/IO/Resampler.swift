import CSoxr

/// Sample-rate conversion of mono Float signals with libsoxr ("SoX Resampler"), one-shot or streaming.
///
/// Quality is `SOXR_HQ`: 20-bit precision, linear phase, pass band flat to 91.3 % of the lower Nyquist frequency,
/// aliasing rejected above it. soxr compensates its own filter delay, so output sample `j` sits at time `j / to`, as
/// input sample `i` sits at `i / from`. After the end of the input is signalled, n input samples give exactly
/// `round(n · to / from)` output samples (halves round up), whatever sizes the input arrived in; the streaming
/// output is bit-identical to the one-shot output. Equal rates copy the input unchanged. soxr runs on one thread.
public enum Resampler {
    /// Resamples the whole of `x` from `from` Hz to `to` Hz; the result has `round(x.count · to / from)` samples.
    public static func resample(_ x: [Float], from: Int, to: Int) throws -> [Float] {
        let expected = try outputLength(x.count, from: from, to: to)
        if from == to { return x }
        let stream = try Stream(from: from, to: to)
        // soxr's flush produces exactly `expected` samples; the slack only guards against a future soxr changing it.
        var out = [Float](repeating: 0, count: expected + 16)
        var produced = 0
        var consumed = 0
        var flushing = x.isEmpty
        while true {
            if produced == out.count { out.append(contentsOf: repeatElement(0, count: 1024)) }
            let (c, p) = try x.withUnsafeBufferPointer { input in
                try out.withUnsafeMutableBufferPointer { output in
                    try stream.step(flushing ? nil : UnsafeBufferPointer(rebasing: input[consumed...]),
                                    UnsafeMutableBufferPointer(rebasing: output[produced...]))
                }
            }
            consumed += c
            produced += p
            if flushing {
                if p == 0 { break }
            } else if consumed == x.count {
                flushing = true
            } else if c == 0 && p == 0 {
                throw stalled(from: from, to: to)
            }
        }
        out.removeLast(out.count - produced)
        return out
    }

    /// The number of samples `resample` returns for `count` input samples: `round(count · to / from)`.
    /// Throws on non-positive rates and on results longer than `AudioFile.maxFrames`.
    public static func outputLength(_ count: Int, from: Int, to: Int) throws -> Int {
        guard from > 0, to > 0 else {
            throw MambaKitError(.usage, "sample rates must be positive (asked to resample from \(from) Hz to \(to) Hz)")
        }
        guard count >= 0 else { throw MambaKitError(.usage, "negative sample count \(count)") }
        if from == to { return count }
        // In Double, as soxr computes it; below 2^31 the quotient is accurate to ~1e-16 relative.
        let exact = Double(count) * Double(to) / Double(from)
        guard exact <= Double(AudioFile.maxFrames) else {
            throw MambaKitError(.usage, "resampling \(count) samples from \(from) Hz to \(to) Hz gives more than "
                                + "\(AudioFile.maxFrames) samples")
        }
        return Int((exact + 0.5).rounded(.down))
    }

    /// A streaming resampler: feed input in pieces of any size, then flush; memory stays bounded by soxr's filter.
    ///
    /// ```swift
    /// let stream = try Resampler.Stream(from: 44_100, to: 16_000)
    /// var y = try stream.process(firstPiece)
    /// y += try stream.process(secondPiece)
    /// y += try stream.flush()   // y == Resampler.resample(firstPiece + secondPiece, from: 44_100, to: 16_000)
    /// ```
    public final class Stream {
        public let from: Int
        public let to: Int
        /// nil when the rates are equal (samples pass through unchanged).
        private let soxr: soxr_t?
        private var flushed = false

        public init(from: Int, to: Int) throws {
            _ = try outputLength(0, from: from, to: to)
            self.from = from
            self.to = to
            guard from != to else {
                soxr = nil
                return
            }
            var io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I)
            var quality = soxr_quality_spec(UInt(SOXR_HQ), 0)
            var runtime = soxr_runtime_spec(1)
            var error: soxr_error_t? = nil
            let handle = soxr_create(Double(from), Double(to), 1, &error, &io, &quality, &runtime)
            guard let handle, error == nil else {
                if let handle { soxr_delete(handle) }
                let reason = error.map { String(cString: $0) } ?? "unknown error"
                throw MambaKitError(.usage, "libsoxr cannot resample from \(from) Hz to \(to) Hz: \(reason)")
            }
            soxr = handle
        }

        deinit {
            if let soxr { soxr_delete(soxr) }
        }

        /// Feeds `x` and returns all output available so far (possibly empty: soxr holds back a filter's length).
        public func process(_ x: [Float]) throws -> [Float] {
            guard !flushed else { throw MambaKitError(.usage, "Resampler.Stream.process called after flush") }
            var out: [Float] = []
            var chunk = [Float](repeating: 0, count: max(1024, Int(Double(x.count) * Double(to) / Double(from)) + 64))
            try x.withUnsafeBufferPointer { input in
                var consumed = 0
                while true {
                    let (c, p) = try chunk.withUnsafeMutableBufferPointer { output in
                        try step(UnsafeBufferPointer(rebasing: input[consumed...]), output)
                    }
                    consumed += c
                    out.append(contentsOf: chunk[0..<p])
                    // A full output chunk may mean more output is ready; an empty step with input left is a stall.
                    if consumed == input.count && p < chunk.count { break }
                    guard c > 0 || p > 0 else { throw Resampler.stalled(from: from, to: to) }
                }
            }
            return out
        }

        /// Signals the end of the input and returns the remaining output. The stream cannot be fed afterwards.
        public func flush() throws -> [Float] {
            var out: [Float] = []
            var chunk = [Float](repeating: 0, count: 4096)
            while true {
                let p = try chunk.withUnsafeMutableBufferPointer { try step(nil, $0).produced }
                out.append(contentsOf: chunk[0..<p])
                if p == 0 { return out }
            }
        }

        /// One soxr_process call: consumes up to `input.count` samples (nil: end of input, flush) and writes up to
        /// `output.count` samples. The building block of `process`, `flush` and `AudioFile.forEachBlock`, which fill
        /// caller-owned buffers without intermediate arrays.
        func step(_ input: UnsafeBufferPointer<Float>?, _ output: UnsafeMutableBufferPointer<Float>) throws
            -> (consumed: Int, produced: Int)
        {
            if input == nil { flushed = true }
            guard let soxr else {
                guard let input else { return (0, 0) }
                let n = min(input.count, output.count)
                if n > 0 { output.baseAddress!.update(from: input.baseAddress!, count: n) }
                return (n, n)
            }
            var consumed = 0
            var produced = 0
            let error: soxr_error_t?
            if let input {
                // soxr reads nothing when ilen is 0, but a NULL `in` would mean end of input: pass a valid address.
                var dummy: Float = 0
                error = withUnsafePointer(to: &dummy) { fallback in
                    soxr_process(soxr, UnsafeRawPointer(input.baseAddress ?? fallback), input.count, &consumed,
                                 output.baseAddress, output.count, &produced)
                }
            } else {
                error = soxr_process(soxr, nil, 0, nil, output.baseAddress, output.count, &produced)
            }
            if let error {
                throw MambaKitError(.numeric, "libsoxr failed resampling \(from) Hz to \(to) Hz: "
                                    + String(cString: error))
            }
            return (consumed, produced)
        }
    }

    static func stalled(from: Int, to: Int) -> MambaKitError {
        MambaKitError(.numeric, "libsoxr made no progress resampling \(from) Hz to \(to) Hz")
    }
}
