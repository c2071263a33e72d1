import CSndfile
import Foundation
import MambaKit
import Testing

// AudioFile and Resampler: write → read round trips, mix-down, FLAC, resampling accuracy and length, streaming, and
// what malformed files get. Multi-channel and FLAC inputs are written here with libsndfile directly (no sox needed);
// malformed WAV/FLAC headers are crafted byte by byte.

/// One LSB of 16-bit PCM as read by libsndfile (÷ 0x8000).
private let lsb: Float = 1.0 / 32768

/// Writes interleaved 16-bit samples with libsndfile in the given container (e.g. SF_FORMAT_WAV, SF_FORMAT_FLAC).
private func writeShorts(_ path: String, _ samples: [Int16], channels: Int, sampleRate: Int, major: Int) {
    var info = SF_INFO()
    info.samplerate = Int32(sampleRate)
    info.channels = Int32(channels)
    info.format = Int32(major | SF_FORMAT_PCM_16)
    let handle = sf_open(path, Int32(SFM_WRITE), &info)
    precondition(handle != nil, "test fixture: \(String(cString: sf_strerror(nil)))")
    let frames = samples.count / channels
    precondition(sf_writef_short(handle, samples, sf_count_t(frames)) == sf_count_t(frames))
    sf_close(handle)
}

/// Writes interleaved float samples to a float WAV with libsndfile.
private func writeFloats(_ path: String, _ samples: [Float], channels: Int, sampleRate: Int) {
    var info = SF_INFO()
    info.samplerate = Int32(sampleRate)
    info.channels = Int32(channels)
    info.format = Int32(SF_FORMAT_WAV | SF_FORMAT_FLOAT)
    let handle = sf_open(path, Int32(SFM_WRITE), &info)
    precondition(handle != nil, "test fixture: \(String(cString: sf_strerror(nil)))")
    let frames = samples.count / channels
    precondition(sf_writef_float(handle, samples, sf_count_t(frames)) == sf_count_t(frames))
    sf_close(handle)
}

private func writeBytes(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

private func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
private func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

/// A canonical PCM WAV: RIFF, a 16-byte fmt chunk, a data chunk whose size field says `dataSize` (default: the true
/// size of `data`).
private func wavBytes(channels: Int, sampleRate: Int, bits: Int = 16, data: [UInt8], dataSize: Int? = nil) -> [UInt8] {
    let blockAlign = channels * bits / 8
    var body: [UInt8] = Array("WAVE".utf8)
    body += Array("fmt ".utf8) + le32(16) + le16(1) + le16(channels) + le32(sampleRate)
    body += le32(sampleRate * blockAlign) + le16(blockAlign) + le16(bits)
    body += Array("data".utf8) + le32(dataSize ?? data.count) + data
    return Array("RIFF".utf8) + le32(body.count) + body
}

/// "fLaC" and a lone STREAMINFO block announcing `totalSamples` frames, with no audio frames after it.
private func flacHeader(totalSamples: Int, sampleRate: Int = 16000, channels: Int = 1, bits: Int = 16) -> [UInt8] {
    var info: [UInt8] = [0x10, 0x00, 0x10, 0x00]           // min/max block size 4096
    info += [0, 0, 0, 0, 0, 0]                               // min/max frame size unknown
    let packed = (UInt64(sampleRate) << 44) | (UInt64(channels - 1) << 41) | (UInt64(bits - 1) << 36)
        | UInt64(totalSamples)
    info += (0..<8).reversed().map { UInt8((packed >> (8 * UInt64($0))) & 0xFF) }
    info += [UInt8](repeating: 0, count: 16)                 // MD5 unknown
    return Array("fLaC".utf8) + [0x80, 0, 0, 34] + info       // last metadata block, type 0, 34 bytes
}

/// a · sin(2π f t + φ) sampled at `rate` for `count` samples, computed in Double.
private func sine(_ f: Double, rate: Int, count: Int, amplitude: Double = 0.5, phase: Double = 0) -> [Float] {
    (0..<count).map { Float(amplitude * sin(2 * Double.pi * f * Double($0) / Double(rate) + phase)) }
}

/// Frequency from upward zero crossings (linearly interpolated) of `x[range]`.
private func zeroCrossingFrequency(_ x: [Float], rate: Int, in range: Range<Int>) -> Double {
    var crossings: [Double] = []
    for i in range.lowerBound..<(range.upperBound - 1) where x[i] < 0 && x[i + 1] >= 0 {
        let a = Double(x[i]), b = Double(x[i + 1])
        crossings.append(Double(i) + a / (a - b))
    }
    guard crossings.count >= 2 else { return 0 }
    return Double(crossings.count - 1) / (crossings.last! - crossings.first!) * Double(rate)
}

private func rms(_ x: ArraySlice<Float>) -> Double {
    (x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(x.count)).squareRoot()
}

/// Files left in `dir` besides `expected` (temporary files of an atomic write must not linger).
private func strayFiles(_ dir: String, expected: Set<String>) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !expected.contains($0) }
}

@Suite struct AudioFileTests {
    // MARK: write → read

    @Test func pcm16RoundTripWithinHalfAnLSB() throws {
        let dir = TempDir()
        let path = dir.file("pcm16.wav")
        var x = randomFloats(20_000, seed: 11, scale: 0.4).map { min(max($0, -1), 1) }
        x += [0, 1, -1, lsb, -lsb, 0.5 * lsb, 1 - lsb, 1 - 0.25 * lsb, -1 + 0.25 * lsb]
        try AudioFile.writeWAV(x, sampleRate: 16000, to: path)
        let info = try AudioFile.info(path)
        #expect(info == AudioInfo(sampleRate: 16000, channels: 1, frames: x.count,
                                  formatName: "WAV (Microsoft), Signed 16 bit PCM"))
        let y = try AudioFile.readMono(path, sampleRate: 16000)
        #expect(y.count == x.count)
        // round(x · 2^15) / 2^15 is within half an LSB; only values above 32767.5/32768 clip to 32767 and land
        // up to one LSB low (+1 itself comes back as 32767/32768).
        for i in 0..<x.count {
            let bound = x[i] > 32767.5 / 32768 ? lsb : 0.5 * lsb
            if abs(y[i] - x[i]) > bound {
                Issue.record("sample \(i): wrote \(x[i]), read \(y[i]), |diff| \(abs(y[i] - x[i]) / lsb) LSB")
                break
            }
        }
        #expect(y[x.count - 8] == Float(32767) / 32768)   // +1
        #expect(y[x.count - 7] == -1)
        #expect(strayFiles(dir.path, expected: ["pcm16.wav"]).isEmpty)
    }

    @Test func sixteenBitContentIsReproducedExactly() throws {
        // Every 16-bit code, read as q / 32768 and written back, gives the same code.
        let dir = TempDir()
        let codes = (Int(Int16.min)...Int(Int16.max)).map { Int16($0) }
        writeShorts(dir.file("all.wav"), codes, channels: 1, sampleRate: 8000, major: SF_FORMAT_WAV)
        let x = try AudioFile.readMono(dir.file("all.wav"), sampleRate: 8000)
        #expect(x == codes.map { Float($0) / 32768 })
        try AudioFile.writeWAV(x, sampleRate: 8000, to: dir.file("again.wav"))
        let a = try Data(contentsOf: URL(fileURLWithPath: dir.file("all.wav")))
        let b = try Data(contentsOf: URL(fileURLWithPath: dir.file("again.wav")))
        #expect(a == b)
    }

    @Test func float32RoundTripIsExact() throws {
        let dir = TempDir()
        let path = dir.file("float.wav")
        var x = randomFloats(10_000, seed: 12, scale: 0.3).map { min(max($0, -1), 1) }
        x += [0, -0.0, 1, -1, .leastNonzeroMagnitude, 1e-30, -0.999_999_94]
        try AudioFile.writeWAV(x, sampleRate: 22050, to: path, encoding: .float32)
        #expect(try AudioFile.info(path) == AudioInfo(sampleRate: 22050, channels: 1, frames: x.count,
                                                      formatName: "WAV (Microsoft), 32 bit float"))
        let y = try AudioFile.readMono(path, sampleRate: 22050)
        #expect(y.count == x.count)
        #expect(zip(x, y).allSatisfy { $0.bitPattern == $1.bitPattern || ($0 == 0 && $1 == 0) })
    }

    @Test func outOfRangeSamplesAreClippedOnWrite() throws {
        let dir = TempDir()
        let x: [Float] = [1.5, -2, .infinity, -.infinity, 1.000_001, 0.25]
        for encoding in [AudioFile.Encoding.pcm16, .float32] {
            let path = dir.file("clip-\(encoding.rawValue).wav")
            try AudioFile.writeWAV(x, sampleRate: 8000, to: path, encoding: encoding)
            let top: Float = encoding == .pcm16 ? 32767 / 32768 : 1
            #expect(try AudioFile.readMono(path, sampleRate: 8000) == [top, -1, top, -1, top, 0.25],
                    "\(encoding)")
        }
    }

    @Test func nanIsRefusedOnWriteAndTheTargetIsUntouched() throws {
        let dir = TempDir()
        let path = dir.file("nan.wav")
        try AudioFile.writeWAV([0.5], sampleRate: 8000, to: path)
        let e = caught { try AudioFile.writeWAV([0, 0, .nan], sampleRate: 8000, to: path) }
        #expect(e?.kind == .numeric)
        #expect(e?.location == "\(path), sample 2")
        #expect(try AudioFile.readMono(path, sampleRate: 8000) == [0.5])
        #expect(caught { try AudioFile.writeWAV([0], sampleRate: 0, to: path) }?.kind == .usage)
    }

    @Test func emptySignalRoundTrips() throws {
        let dir = TempDir()
        let path = dir.file("empty.wav")
        try AudioFile.writeWAV([], sampleRate: 16000, to: path)
        #expect(try AudioFile.info(path).frames == 0)
        #expect(try AudioFile.readMono(path, sampleRate: 16000).isEmpty)
        #expect(try AudioFile.readMono(path, sampleRate: 44100).isEmpty)
        var calls = 0
        try AudioFile.forEachBlock(path, sampleRate: 8000) { _ in calls += 1 }
        #expect(calls == 0)
    }

    // MARK: channels and containers

    @Test func stereoIsMixedDownToTheMean() throws {
        let dir = TempDir()
        let path = dir.file("stereo.wav")
        var rng = RNG(seed: 13)
        let shorts = (0..<2 * 5000).map { _ in Int16(truncatingIfNeeded: Int(rng.next() >> 48)) }
            + [Int16.max, Int16.max, Int16.min, Int16.min, Int16.max, Int16.min]
        writeShorts(path, shorts, channels: 2, sampleRate: 16000, major: SF_FORMAT_WAV)
        #expect(try AudioFile.info(path).channels == 2)
        let y = try AudioFile.readMono(path, sampleRate: 16000)
        let want: [Float] = (0..<shorts.count / 2).map { (i: Int) -> Float in
            let sum: Float = Float(shorts[2 * i]) / 32768 + Float(shorts[2 * i + 1]) / 32768
            return sum / 2
        }
        #expect(y == want)
        let ends: [Float] = [32767 / 32768, -1, -0.5 / 32768]
        #expect(Array(y.suffix(3)) == ends)
    }

    @Test func threeFloatChannelsAreMixedDownToTheMean() throws {
        let dir = TempDir()
        let path = dir.file("three.wav")
        let x = randomFloats(3 * 4000, seed: 14, scale: 0.3)
        writeFloats(path, x, channels: 3, sampleRate: 8000)
        let y = try AudioFile.readMono(path, sampleRate: 8000)
        // The mean as AudioFile computes it: channels summed in order in Float, then divided by the count.
        let want: [Float] = (0..<4000).map { (i: Int) -> Float in
            let sum: Float = x[3 * i] + x[3 * i + 1] + x[3 * i + 2]
            return sum / 3
        }
        #expect(y == want)
    }

    @Test func flacIsRead() throws {
        let dir = TempDir()
        let path = dir.file("tone.flac")
        let x = sine(1000, rate: 16000, count: 12345, amplitude: 0.7)
        let shorts = x.map { Int16(($0 * 32768).rounded()) }
        writeShorts(path, shorts, channels: 1, sampleRate: 16000, major: SF_FORMAT_FLAC)
        let flacName = "FLAC (Free Lossless Audio Codec), Signed 16 bit PCM"
        #expect(try AudioFile.info(path) == AudioInfo(sampleRate: 16000, channels: 1, frames: 12345,
                                                      formatName: flacName))
        #expect(try AudioFile.readMono(path, sampleRate: 16000) == shorts.map { Float($0) / 32768 })
        // A stereo FLAC at another rate goes through mix-down and the resampler like any other file.
        let stereo = zip(shorts, shorts.map { $0 / 2 }).flatMap { [$0, $1] }
        writeShorts(dir.file("stereo.flac"), stereo, channels: 2, sampleRate: 16000, major: SF_FORMAT_FLAC)
        let mono: [Float] = (0..<shorts.count).map { (i: Int) -> Float in
            let sum: Float = Float(stereo[2 * i]) / 32768 + Float(stereo[2 * i + 1]) / 32768
            return sum / 2
        }
        let got = try AudioFile.readMono(dir.file("stereo.flac"), sampleRate: 8000)
        #expect(got == (try Resampler.resample(mono, from: 16000, to: 8000)))
    }

    // MARK: resampling

    /// A 0.5-amplitude 440 Hz sine, resampled, is compared with the same sine computed at the new rate, on the middle
    /// of the signal (the first and last 50 ms see the filter's response to the signal switching on and off).
    /// Tolerances: libsoxr HQ is a linear-phase filter of 20-bit precision (errors near 2^-20 ≈ 1e-6 of full scale)
    /// whose pass band reaches 91 % of the lower Nyquist frequency, far above 440 Hz, and soxr removes its own delay.
    /// So the output should be the ideal sine to about 2^-20, phase included. Bounds, with the values measured here
    /// (Swift 6.3.1, libsoxr 0.1.3) for the four rate pairs:
    /// - sample-wise |resampled − ideal| < 2e-6 (measured 2.1e-7 … 4.2e-7: a few Float ulps at 0.5). A delay of even
    ///   a hundredth of a sample would cost 0.5 · 2π · 440 / 16000 / 100 ≈ 9e-4, and a 16-bit-quality filter ~1e-5.
    /// - amplitude √2 · RMS within 1e-5 of 0.5 (measured ≤ 7e-8).
    /// - zero-crossing frequency within 1e-3 Hz of 440 (measured ≤ 2.3e-5 Hz: the bias of linear interpolation
    ///   between samples, identical for the ideal sine).
    @Test(arguments: [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 44100)])
    func sineKeepsFrequencyAmplitudeAndPhase(from: Int, to: Int) throws {
        let f = 440.0
        let x = sine(f, rate: from, count: from, phase: 0.3)   // one second
        let dir = TempDir()
        let path = dir.file("sine.wav")
        try AudioFile.writeWAV(x, sampleRate: from, to: path, encoding: .float32)
        let y = try AudioFile.readMono(path, sampleRate: to)
        #expect(y.count == to)
        #expect(y == (try Resampler.resample(x, from: from, to: to)))
        let middle = (to / 20)..<(to - to / 20)
        let ideal = sine(f, rate: to, count: to, phase: 0.3)
        let worst = middle.map { abs(y[$0] - ideal[$0]) }.max()!
        #expect(worst < 2e-6, "max |resampled − ideal| = \(worst)")
        let amplitude = rms(y[middle]) * 2.0.squareRoot()
        #expect(abs(amplitude - 0.5) < 1e-5, "amplitude from RMS \(amplitude)")
        let freq = zeroCrossingFrequency(y, rate: to, in: middle)
        #expect(abs(freq - f) < 1e-3, "zero-crossing frequency \(freq) Hz")
    }

    /// Content above the new Nyquist frequency is removed, not folded back: a 7 kHz tone at 44.1 kHz is far above
    /// 4 kHz, the Nyquist frequency of 8 kHz, so after resampling only the filter's stop-band leakage remains. Bound:
    /// RMS < 1e-6, 111 dB below the input's 0.35 (measured 3.8e-8; a folded-back tone would keep RMS 0.35).
    @Test func downsamplingRemovesContentAboveNyquist() throws {
        let y = try Resampler.resample(sine(7000, rate: 44100, count: 44100), from: 44100, to: 8000)
        let leak = rms(y[400..<7600])
        #expect(leak < 1e-6, "RMS after resampling \(leak) (input RMS 0.35)")
    }

    @Test func outputLengthIsRoundedNTimesRatio() throws {
        let rates = [(44100, 16000), (8000, 16000), (16000, 8000), (48000, 16000), (22050, 16000), (16000, 44100),
                     (44100, 48000), (3, 7)]
        for (from, to) in rates {
            for n in [0, 1, 2, 3, 5, 7, 100, 1001, 4410, 12345] {
                let want = Int((Double(n) * Double(to) / Double(from) + 0.5).rounded(.down))
                let y = try Resampler.resample(randomFloats(n, seed: UInt64(n), scale: 0.3), from: from, to: to)
                #expect(y.count == want, "\(n) samples \(from) → \(to) Hz")
                #expect(try Resampler.outputLength(n, from: from, to: to) == want)
            }
        }
        // Halves round up: 1 sample at 16 kHz → 0.5 at 8 kHz → 1; 3 → 1.5 → 2.
        #expect(try Resampler.resample([0.1], from: 16000, to: 8000).count == 1)
        #expect(try Resampler.resample([0.1, 0.2, 0.3], from: 16000, to: 8000).count == 2)
        #expect(try Resampler.resample([0.25, -0.5], from: 16000, to: 16000) == [0.25, -0.5])
        #expect(caught { _ = try Resampler.resample([0], from: 0, to: 16000) }?.kind == .usage)
        #expect(caught { _ = try Resampler.resample([0], from: 16000, to: -1) }?.kind == .usage)
    }

    @Test func streamingResamplerEqualsOneShot() throws {
        let x = randomFloats(50_000, seed: 15, scale: 0.3)
        for (from, to) in [(44100, 16000), (8000, 16000), (16000, 16000)] {
            let stream = try Resampler.Stream(from: from, to: to)
            var rng = RNG(seed: 16)
            var y: [Float] = []
            var start = 0
            while start < x.count {
                let n = min(x.count - start, Int(rng.next() % 3000))   // pieces of 0 to 2999 samples
                y += try stream.process(Array(x[start..<(start + n)]))
                start += n
            }
            y += try stream.flush()
            #expect(y == (try Resampler.resample(x, from: from, to: to)), "\(from) → \(to) Hz")
            #expect(caught { _ = try stream.process([0]) }?.kind == .usage)
        }
    }

    // MARK: streaming reads

    @Test(arguments: [(44100, 16000), (16000, 16000), (8000, 16000)])
    func forEachBlockEqualsReadMono(from: Int, to: Int) throws {
        let dir = TempDir()
        let path = dir.file("long.wav")
        let stereo = randomFloats(2 * 150_001, seed: 17, scale: 0.25)
        writeFloats(path, stereo, channels: 2, sampleRate: from)
        let whole = try AudioFile.readMono(path, sampleRate: to)
        #expect(whole.count == Int((150_001.0 * Double(to) / Double(from) + 0.5).rounded(.down)))
        for blockFrames in [7, 4096, 65536, 1_000_000] {
            var blocks: [[Float]] = []
            try AudioFile.forEachBlock(path, sampleRate: to, blockFrames: blockFrames) { blocks.append($0) }
            #expect(Array(blocks.joined()) == whole, "blockFrames \(blockFrames)")
            #expect(blocks.dropLast().allSatisfy { $0.count == blockFrames })
            #expect(blocks.last.map { !$0.isEmpty && $0.count <= blockFrames } == true)
        }
        #expect(caught { try AudioFile.forEachBlock(path, sampleRate: to, blockFrames: 0) { _ in } }?.kind
                == .usage)
    }

    @Test func forEachBlockStopsOnTheBodysError() throws {
        struct Stop: Error {}
        let dir = TempDir()
        let path = dir.file("stop.wav")
        try AudioFile.writeWAV(randomFloats(10_000, seed: 18, scale: 0.2), sampleRate: 16000, to: path)
        var calls = 0
        #expect(throws: Stop.self) {
            try AudioFile.forEachBlock(path, sampleRate: 16000, blockFrames: 1000) { _ in
                calls += 1
                if calls == 3 { throw Stop() }
            }
        }
        #expect(calls == 3)
    }

    // MARK: malformed input

    @Test func missingFileIsAnIOError() {
        let path = TempDir().file("nowhere.wav")
        let e = caught { _ = try AudioFile.readMono(path, sampleRate: 16000) }
        #expect(e?.kind == .io)
        #expect(e?.location == path)
        #expect(e?.message.contains("No such file or directory") == true)
    }

    @Test func nonPositiveTargetRateIsRefusedNamingTheFile() throws {
        let dir = TempDir()
        let path = dir.file("ok.wav")
        try AudioFile.writeWAV([0.1, 0.2], sampleRate: 8000, to: path)
        for rate in [0, -16000] {
            let e = caught { _ = try AudioFile.readMono(path, sampleRate: rate) }
            #expect(e?.kind == .usage)
            #expect(e?.location == path)
            #expect(caught { try AudioFile.forEachBlock(path, sampleRate: rate) { _ in } }?.location == path)
        }
    }

    @Test func randomBytesAreRefused() throws {
        let dir = TempDir()
        let path = dir.file("noise.wav")
        var rng = RNG(seed: 19)
        try writeBytes(path, (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
        for read in [{ _ = try AudioFile.readMono(path, sampleRate: 16000) }, { _ = try AudioFile.info(path) },
                     { try AudioFile.forEachBlock(path, sampleRate: 16000) { _ in } }] {
            let e = caught(read)
            #expect(e?.kind == .format)
            #expect(e?.location == path)
            #expect(e?.message.contains("Format not recognised") == true, "\(e?.description ?? "")")
        }
    }

    @Test func truncatedHeaderIsRefused() throws {
        let dir = TempDir()
        let path = dir.file("short-header.wav")
        let full = wavBytes(channels: 1, sampleRate: 8000, data: [UInt8](repeating: 1, count: 200))
        try writeBytes(path, Array(full.prefix(30)))   // cut inside the fmt chunk
        let e = caught { _ = try AudioFile.info(path) }
        #expect(e?.kind == .format)
        #expect(e?.location == path)
        #expect(e?.message.contains("libsndfile") == true, "\(e?.description ?? "")")
    }

    @Test func zeroChannelsAndZeroRateAreRefused() throws {
        let dir = TempDir()
        let zeroChannels = dir.file("zero-channels.wav")
        try writeBytes(zeroChannels, wavBytes(channels: 0, sampleRate: 8000, data: [1, 0, 2, 0]))
        let e = caught { _ = try AudioFile.readMono(zeroChannels, sampleRate: 8000) }
        #expect(e?.kind == .format)
        #expect(e?.location == zeroChannels)
        // libsndfile 1.2 refuses it itself ("Channel count is zero."); AudioFile's own check is the backstop.
        #expect(e?.message.lowercased().contains("channel") == true, "\(e?.description ?? "")")

        let zeroRate = dir.file("zero-rate.wav")
        try writeBytes(zeroRate, wavBytes(channels: 1, sampleRate: 0, data: [1, 0, 2, 0]))
        let r = caught { _ = try AudioFile.info(zeroRate) }
        #expect(r?.kind == .format)
        #expect(r?.location == zeroRate)
    }

    /// libsndfile trusts the file over a data chunk size that runs past its end: it logs the mismatch and announces
    /// the whole frames actually present, which AudioFile then reads (an odd trailing byte is dropped).
    @Test func truncatedDataChunkReadsWhatLibsndfileAnnounces() throws {
        let dir = TempDir()
        let codes = (0..<100).map { Int16($0 * 300 - 15000) }
        let data = codes.flatMap { le16(Int($0)) }
        for (name, bytes) in [("cut.wav", data), ("cut-odd.wav", data + [0x7F])] {
            let path = dir.file(name)
            try writeBytes(path, wavBytes(channels: 1, sampleRate: 8000, data: bytes, dataSize: 2000))
            #expect(try AudioFile.info(path).frames == 100, "\(name)")
            #expect(try AudioFile.readMono(path, sampleRate: 8000) == codes.map { Float($0) / 32768 }, "\(name)")
        }
    }

    @Test func absurdFrameCountIsRefusedBeforeAllocating() throws {
        // A FLAC STREAMINFO may announce up to 2^36 frames; libsndfile passes 2^35 on unchecked.
        let dir = TempDir()
        let path = dir.file("huge.flac")
        try writeBytes(path, flacHeader(totalSamples: 1 << 35))
        let e = caught { _ = try AudioFile.readMono(path, sampleRate: 16000) }
        #expect(e?.kind == .format)
        #expect(e?.location == path)
        #expect(e?.message.contains("\(1 << 35) frames") == true, "\(e?.description ?? "")")
        #expect(caught { try AudioFile.forEachBlock(path, sampleRate: 16000) { _ in } }?.location == path)
    }

    @Test func fileEndingBeforeItsAnnouncedFramesIsAnError() throws {
        let dir = TempDir()
        // A FLAC header announcing 1000 frames and holding none.
        let empty = dir.file("announced.flac")
        try writeBytes(empty, flacHeader(totalSamples: 1000))
        #expect(try AudioFile.info(empty).frames == 1000)
        let e = caught { _ = try AudioFile.readMono(empty, sampleRate: 16000) }
        #expect(e?.kind == .format)
        #expect(e?.location == "\(empty), frame 0")
        #expect(e?.message.contains("1000 frames") == true, "\(e?.description ?? "")")

        // A real FLAC cut in half: the STREAMINFO still announces all its frames.
        let whole = dir.file("whole.flac")
        let shorts = sine(300, rate: 16000, count: 40_000, amplitude: 0.6).map { Int16(($0 * 32768).rounded()) }
        writeShorts(whole, shorts, channels: 1, sampleRate: 16000, major: SF_FORMAT_FLAC)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: whole))
        let cut = dir.file("cut.flac")
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cut))
        #expect(try AudioFile.info(cut).frames == 40_000)
        let c = caught { _ = try AudioFile.readMono(cut, sampleRate: 16000) }
        #expect(c?.kind == .format)
        #expect(c?.location?.hasPrefix("\(cut), frame ") == true, "\(c?.description ?? "")")
        let frame = c?.location.flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
        #expect(frame > 0 && frame < 40_000)
        #expect(caught { try AudioFile.forEachBlock(cut, sampleRate: 8000) { _ in } }?.location == c?.location)
    }

    @Test func nonFiniteFloatSamplesAreRefused() throws {
        let dir = TempDir()
        let path = dir.file("nan.wav")
        writeFloats(path, [0, 0.5, 0.25, .nan, 0.1, 0.2], channels: 2, sampleRate: 8000)
        let e = caught { _ = try AudioFile.readMono(path, sampleRate: 8000) }
        #expect(e?.kind == .format)
        #expect(e?.location == "\(path), frame 1, channel 1")
    }

    @Test func floatFilesBeyondFullScaleAreClippedOnRead() throws {
        let dir = TempDir()
        let path = dir.file("loud.wav")
        writeFloats(path, [2, -3, 0.5, 1.25], channels: 1, sampleRate: 8000)
        #expect(try AudioFile.readMono(path, sampleRate: 8000) == [1, -1, 0.5, 1])
    }
}
