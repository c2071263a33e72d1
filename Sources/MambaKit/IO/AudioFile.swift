#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CSndfile
import Foundation

/// What an audio file's header announces, as libsndfile reports it.
public struct AudioInfo: Sendable, Equatable {
    /// Frames per second (a frame holds one sample per channel).
    public var sampleRate: Int
    public var channels: Int
    /// Frames in the file.
    public var frames: Int
    /// libsndfile's names of the container and the sample encoding, e.g. "WAV (Microsoft), Signed 16 bit PCM".
    public var formatName: String

    public init(sampleRate: Int, channels: Int, frames: Int, formatName: String) {
        self.sampleRate = sampleRate
        self.channels = channels
        self.frames = frames
        self.formatName = formatName
    }
}

/// Reading audio as mono Float at a model's sample rate, and writing mono WAV files.
///
/// Reading goes through libsndfile (`sf_open` with `SF_INFO.format = 0`, so any container it knows: WAV, FLAC, OGG,
/// AIFF, ...). Integer PCM decodes to Float as `q / 0x8000` (16-bit; likewise 2^(bits−1) for other widths), so values
/// lie in [−1, 1); float files are taken as stored. Channels are mixed down to their mean, the result is resampled
/// with `Resampler` (libsoxr, high quality) when the rates differ, and finally clipped to [−1, 1] — which only touches
/// float files stored beyond full scale and the resampler's overshoot next to full-scale transients. Non-finite
/// samples (NaN, ±Inf in float files) are refused. The header is checked before anything is allocated; a file that
/// ends before the frames it announced is an error naming the file and the frame.
public enum AudioFile {
    /// The longest file (in frames) read, and the longest resampled output produced: 2^31, over 12 hours at 48 kHz.
    /// Longer announcements are taken as corrupt headers rather than allocated.
    public static let maxFrames = 1 << 31
    /// libsndfile's own limit on channels (`SF_MAX_CHANNELS`).
    public static let maxChannels = 1024
    /// The lowest sample rate a file may have, as for a model's rate: resampling a 5 KB WAV at 1 Hz to 16 kHz makes
    /// 80 million samples and takes libsoxr minutes.
    public static let minSampleRate = 1000

    public enum Encoding: String, Sendable {
        /// 16-bit signed integer PCM.
        case pcm16
        /// 32-bit IEEE float.
        case float32
    }

    /// Reads any file libsndfile opens (WAV, FLAC, OGG, AIFF, ...), mixes channels down to mono (mean), and resamples
    /// to `sampleRate` with libsoxr (high quality; no resampling when rates match). Returns samples in [-1, 1] as
    /// Float; the count is `round(frames · sampleRate / fileRate)`.
    public static func readMono(_ path: String, sampleRate: Int) throws -> [Float] {
        let file = try SoundFileReader(path: path)
        try checkOutputLength(file, sampleRate: sampleRate)
        // Grown a block at a time as frames are decoded, not sized from the header: a 56-byte FLAC whose STREAMINFO
        // announces 671 million frames must fail with "audio data ends early", not allocate 2.7 GB first.
        var mono: [Float] = []
        while mono.count < file.info.frames {
            let done = mono.count
            let n = min(readBlockFrames, file.info.frames - done)
            mono.append(contentsOf: repeatElement(0, count: n))
            try mono.withUnsafeMutableBufferPointer { out in
                try file.readMono(UnsafeMutableBufferPointer(rebasing: out[done..<(done + n)]))
            }
        }
        file.close()
        var samples = try Resampler.resample(mono, from: file.info.sampleRate, to: sampleRate)
        clip(&samples[...])
        return samples
    }

    /// The header of any file libsndfile opens, after the same checks `readMono` makes.
    public static func info(_ path: String) throws -> AudioInfo {
        let file = try SoundFileReader(path: path)
        file.close()
        return file.info
    }

    /// Streaming `readMono`: calls `body` with consecutive blocks of mono, resampled samples whose concatenation
    /// equals `readMono(path, sampleRate:)` bit for bit. Every block holds exactly `blockFrames` samples except the
    /// last, which is shorter but never empty (a file that resamples to nothing calls `body` zero times). Memory is
    /// bounded by the output block, one read buffer of min(`blockFrames`, 65536) frames × channels and libsoxr's
    /// filter state, whatever the length of the file. An error thrown by `body` stops the read and is rethrown.
    public static func forEachBlock(_ path: String, sampleRate: Int, blockFrames: Int = 65536,
                                    _ body: ([Float]) throws -> Void) throws {
        guard blockFrames > 0, blockFrames <= maxFrames else {
            throw MambaKitError(.usage, "blockFrames must be in 1...\(maxFrames), not \(blockFrames)", at: path)
        }
        let file = try SoundFileReader(path: path)
        defer { file.close() }
        try checkOutputLength(file, sampleRate: sampleRate)
        let stream = try Resampler.Stream(from: file.info.sampleRate, to: sampleRate)
        let inputFrames = min(blockFrames, readBlockFrames)
        var mono = [Float](repeating: 0, count: inputFrames)
        var block = [Float](repeating: 0, count: blockFrames)
        var filled = 0
        var framesRead = 0
        var flushing = false
        while true {
            // Read the next piece of the file once the previous one has been fully consumed by the resampler.
            let n = flushing ? 0 : min(inputFrames, file.info.frames - framesRead)
            if !flushing {
                try mono.withUnsafeMutableBufferPointer { try file.readMono(.init(rebasing: $0[0..<n])) }
                framesRead += n
            }
            var consumed = 0
            repeat {
                let (c, p) = try mono.withUnsafeBufferPointer { input in
                    try block.withUnsafeMutableBufferPointer { output in
                        try stream.step(flushing ? nil : UnsafeBufferPointer(rebasing: input[consumed..<n]),
                                        UnsafeMutableBufferPointer(rebasing: output[filled...]))
                    }
                }
                consumed += c
                filled += p
                if filled == blockFrames {
                    clip(&block[...])
                    try body(block)
                    filled = 0
                }
                if flushing {
                    if p == 0 {
                        if filled > 0 {
                            clip(&block[0..<filled])
                            try body(Array(block[0..<filled]))
                        }
                        return
                    }
                } else if c == 0 && p == 0 && consumed < n {
                    throw Resampler.stalled(from: file.info.sampleRate, to: sampleRate)
                }
            } while flushing || consumed < n
            if framesRead == file.info.frames { flushing = true }
        }
    }

    /// Writes a mono WAV atomically (temp file + rename, like AtomicFile): 16-bit PCM by default, float on request.
    ///
    /// Samples outside [−1, 1] (±Inf included) are clipped to ±1 first; NaN is refused. 16-bit PCM stores
    /// `round(x · 0x8000)` clamped to [−32768, 32767] (rounding half away from zero), so reading back gives every
    /// sample within half an LSB (1/65536), except +1, which comes back one LSB low (32767/32768), and a file read
    /// as Float and written again is reproduced exactly. We quantise ourselves rather than letting libsndfile convert:
    /// its float→16-bit path scales by 0x7FFF (off by up to 1.5 LSB after the ÷0x8000 read) or, with
    /// `SFC_SET_CLIPPING`, truncates x · 2^31 to its top 16 bits (a half-LSB bias). Float32 stores the clipped
    /// values bit for bit. The encoded file is assembled in memory (2 or 4 bytes per sample) and handed to
    /// `AtomicFile`, so readers see either the old file or the complete new one.
    public static func writeWAV(_ samples: [Float], sampleRate: Int, to path: String,
                                encoding: Encoding = .pcm16) throws {
        guard sampleRate > 0, sampleRate <= Int(Int32.max) else {
            throw MambaKitError(.usage, "sample rate must be a positive 32-bit integer, not \(sampleRate)", at: path)
        }
        if let bad = samples.firstIndex(where: { $0.isNaN }) {
            throw MambaKitError(.numeric, "cannot write NaN to a WAV file", at: "\(path), sample \(bad)")
        }
        var info = SF_INFO()
        info.samplerate = Int32(sampleRate)
        info.channels = 1
        info.format = Int32(SF_FORMAT_WAV) | Int32(encoding == .pcm16 ? SF_FORMAT_PCM_16 : SF_FORMAT_FLOAT)
        guard sf_format_check(&info) != 0 else {
            throw MambaKitError(.usage, "libsndfile refuses a mono \(encoding.rawValue) WAV at \(sampleRate) Hz",
                                at: path)
        }
        let memory = MemoryFile()
        var io = MemoryFile.virtualIO
        let handle = sf_open_virtual(&io, Int32(SFM_WRITE), &info, Unmanaged.passUnretained(memory).toOpaque())
        guard let handle else {
            throw MambaKitError(.io, "cannot start a WAV file: \(libsndfileReason(nil))", at: path)
        }
        var written = 0
        var failure: String? = nil
        withExtendedLifetime(memory) {
            var shorts = [Int16](repeating: 0, count: min(samples.count, readBlockFrames))
            var floats = [Float](repeating: 0, count: encoding == .float32 ? shorts.count : 0)
            while written < samples.count && failure == nil {
                let n = min(shorts.count, samples.count - written)
                let wrote: sf_count_t
                switch encoding {
                case .pcm16:
                    for i in 0..<n {
                        let x = min(max(samples[written + i], -1), 1)
                        shorts[i] = Int16(min(max((x * 32768).rounded(.toNearestOrAwayFromZero), -32768), 32767))
                    }
                    wrote = sf_writef_short(handle, shorts, sf_count_t(n))
                case .float32:
                    for i in 0..<n { floats[i] = min(max(samples[written + i], -1), 1) }
                    wrote = sf_writef_float(handle, floats, sf_count_t(n))
                }
                if wrote != sf_count_t(n) {
                    let total = written + Int(max(wrote, 0))
                    failure = "wrote \(total) of \(samples.count) samples: \(libsndfileReason(handle))"
                }
                written += n
            }
            if sf_close(handle) != 0 && failure == nil {
                failure = "cannot finish the WAV file: \(libsndfileReason(nil))"
            }
        }
        if let failure { throw MambaKitError(.io, failure, at: path) }
        try memory.bytes.withUnsafeBytes { try AtomicFile.write($0, to: path) }
    }

    /// Frames read per libsndfile call (the interleaved read buffer holds this many frames of all channels).
    static let readBlockFrames = 65536

    /// Refuses a target rate ≤ 0 and outputs longer than `maxFrames`, naming the file.
    private static func checkOutputLength(_ file: SoundFileReader, sampleRate: Int) throws {
        do {
            _ = try Resampler.outputLength(file.info.frames, from: file.info.sampleRate, to: sampleRate)
        } catch let error as MambaKitError {
            throw MambaKitError(error.kind, error.message, at: file.path)
        }
    }

    /// Clips to [−1, 1] in place.
    private static func clip(_ x: inout ArraySlice<Float>) {
        for i in x.indices { x[i] = min(max(x[i], -1), 1) }
    }
}

/// libsndfile's current error text for `handle`, or for the last failed open when `handle` is nil, without its
/// closing full stop (it is followed by ", <file>").
private func libsndfileReason(_ handle: OpaquePointer?) -> String {
    guard let text = sf_strerror(handle) else { return "unknown libsndfile error" }
    var reason = String(cString: text).trimmingCharacters(in: .whitespacesAndNewlines)
    while reason.hasSuffix(".") { reason.removeLast() }
    return reason
}

/// libsndfile keeps the reason for a failed `sf_open` in a process-wide variable; holding this lock from the open to
/// reading that reason keeps concurrent opens from reporting each other's errors.
private let openLock = NSLock()

/// An open libsndfile reader with a checked header; reads mono blocks frame by frame in order.
private final class SoundFileReader {
    let path: String
    let info: AudioInfo
    private var handle: OpaquePointer?
    private var interleaved: [Float] = []
    private var position = 0

    init(path: String) throws {
        self.path = path
        // Tell a missing, unreadable or non-regular file (.io) from one libsndfile cannot parse (.format).
        try FileInput.checkFile(path)
        var sfinfo = SF_INFO()   // format = 0: libsndfile detects the container from the file's bytes.
        openLock.lock()
        let handle = sf_open(path, Int32(SFM_READ), &sfinfo)
        let reason = handle == nil ? libsndfileReason(nil) : ""
        openLock.unlock()
        guard let handle else {
            throw MambaKitError(.format, "libsndfile cannot read this audio file: \(reason)", at: path)
        }
        self.handle = handle
        // Refuse impossible or absurd headers before any buffer is sized from them.
        let frames = Int64(sfinfo.frames)
        let channels = Int(sfinfo.channels)
        let rate = Int(sfinfo.samplerate)
        var problem: String? = nil
        if channels <= 0 || channels > AudioFile.maxChannels {
            problem = "header announces \(channels) channels (expected 1...\(AudioFile.maxChannels))"
        } else if rate < AudioFile.minSampleRate {
            problem = "header announces a sample rate of \(rate) Hz (at least \(AudioFile.minSampleRate) expected)"
        } else if frames < 0 || frames > Int64(AudioFile.maxFrames) {
            problem = "header announces \(frames) frames (at most \(AudioFile.maxFrames) are read)"
        } else if Int(frames).multipliedReportingOverflow(by: channels).overflow {
            problem = "header announces \(frames) frames × \(channels) channels, which overflows"
        }
        if let problem {
            sf_close(handle)
            self.handle = nil
            throw MambaKitError(.format, problem, at: path)
        }
        info = AudioInfo(sampleRate: rate, channels: channels, frames: Int(frames),
                         formatName: Self.formatName(sfinfo.format))
    }

    deinit { close() }

    func close() {
        if let handle { sf_close(handle) }
        handle = nil
    }

    /// Reads the next `out.count` frames, mixed down to the mean of the channels. Throws when the file ends early
    /// or holds a non-finite sample.
    func readMono(_ out: UnsafeMutableBufferPointer<Float>) throws {
        let channels = info.channels
        let need = min(out.count, AudioFile.readBlockFrames) * channels
        if interleaved.count < need { interleaved = [Float](repeating: 0, count: need) }
        var done = 0
        while done < out.count {
            let n = min(out.count - done, AudioFile.readBlockFrames)
            let got = Int(interleaved.withUnsafeMutableBufferPointer {
                sf_readf_float(handle, $0.baseAddress, sf_count_t(n))
            })
            guard got == n else {
                let frame = position + max(got, 0)
                let reason = sf_error(handle) != 0 ? ": " + libsndfileReason(handle) : ""
                throw MambaKitError(.format, "audio data ends early: the header announces \(info.frames) frames, "
                                    + "but reading stopped at frame \(frame)\(reason)", at: "\(path), frame \(frame)")
            }
            try interleaved.withUnsafeBufferPointer { x in
                for f in 0..<n {
                    var sum: Float = 0
                    for c in 0..<channels {
                        let v = x[f * channels + c]
                        guard v.isFinite else {
                            throw MambaKitError(.format, "sample is \(v), not a finite number",
                                                at: "\(path), frame \(position + f), channel \(c)")
                        }
                        sum += v
                    }
                    out[done + f] = channels == 1 ? sum : sum / Float(channels)
                }
            }
            done += n
            position += n
        }
    }

    /// "container, encoding" from libsndfile's format tables,
    /// e.g. "FLAC (Free Lossless Audio Codec), Signed 16 bit PCM".
    private static func formatName(_ format: Int32) -> String {
        func name(_ code: Int32) -> String? {
            var entry = SF_FORMAT_INFO()
            entry.format = code
            guard sf_command(nil, Int32(SFC_GET_FORMAT_INFO), &entry, Int32(MemoryLayout<SF_FORMAT_INFO>.size)) == 0,
                  let text = entry.name else { return nil }
            return String(cString: text)
        }
        let major = format & Int32(SF_FORMAT_TYPEMASK)
        let sub = format & Int32(SF_FORMAT_SUBMASK)
        let majorName = name(major) ?? "format 0x" + String(major, radix: 16)
        guard sub != 0 else { return majorName }
        return majorName + ", " + (name(sub) ?? "encoding 0x" + String(sub, radix: 16))
    }
}

/// A growable in-memory file behind libsndfile's virtual I/O, so `writeWAV` can hand finished bytes to AtomicFile
/// (libsndfile seeks back to patch the header sizes when it closes, so the output cannot simply be streamed).
private final class MemoryFile {
    var bytes: [UInt8] = []
    var position = 0

    static func from(_ userData: UnsafeMutableRawPointer?) -> MemoryFile {
        Unmanaged<MemoryFile>.fromOpaque(userData!).takeUnretainedValue()
    }

    static let virtualIO = SF_VIRTUAL_IO(
        get_filelen: { userData in sf_count_t(MemoryFile.from(userData).bytes.count) },
        seek: { offset, whence, userData in
            let file = MemoryFile.from(userData)
            let base: Int
            switch whence {
            case SEEK_SET: base = 0
            case SEEK_CUR: base = file.position
            case SEEK_END: base = file.bytes.count
            default: return -1
            }
            let target = base + Int(offset)
            guard target >= 0 else { return -1 }
            file.position = target
            return sf_count_t(target)
        },
        read: { pointer, count, userData in
            let file = MemoryFile.from(userData)
            let n = max(0, min(Int(count), file.bytes.count - file.position))
            if n > 0, let pointer {
                file.bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress! + file.position, byteCount: n) }
            }
            file.position += n
            return sf_count_t(n)
        },
        write: { pointer, count, userData in
            let file = MemoryFile.from(userData)
            let n = Int(count)
            guard n > 0, let pointer else { return 0 }
            let end = file.position + n
            // A seek past the end followed by a write leaves a zero-filled gap, as in a sparse file.
            if end > file.bytes.count { file.bytes.append(contentsOf: repeatElement(0, count: end - file.bytes.count)) }
            file.bytes.withUnsafeMutableBytes {
                ($0.baseAddress! + file.position).copyMemory(from: pointer, byteCount: n)
            }
            file.position = end
            return sf_count_t(n)
        },
        tell: { userData in sf_count_t(MemoryFile.from(userData).position) }
    )
}
