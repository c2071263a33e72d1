import CZlib
import Foundation
import MambaKit
import Testing

// Seeded fuzz smoke test of SequenceReader: random bytes and mutated valid FASTA/FASTQ, plain and gzipped (mutated
// before or after compression, split into members, truncated). Every case must parse or throw a MambaKitError that
// names the file — no crash, no hang — and no record may be larger than the input's uncompressed size. Each case has
// its own seed (`baseSeed + case`), so a failure reproduces alone.

private let baseSeed: UInt64 = 0xFA57_0000

/// The number of bytes zlib inflates from `data` (gzip members one after another) before the data ends or turns
/// invalid: an upper bound on what SequenceReader can decode from it.
private func inflatableByteCount(_ data: [UInt8]) -> Int {
    var stream = z_stream()
    guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return 0 }
    defer { inflateEnd(&stream) }
    var total = 0
    var out = [UInt8](repeating: 0, count: 1 << 16)
    var input = data
    input.withUnsafeMutableBufferPointer { inp in
        stream.next_in = inp.baseAddress
        stream.avail_in = UInt32(inp.count)
        while true {
            let status: Int32 = out.withUnsafeMutableBufferPointer { o in
                stream.next_out = o.baseAddress
                stream.avail_out = UInt32(o.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            total += out.count - Int(stream.avail_out)
            if status == Z_STREAM_END {
                if stream.avail_in == 0 { return }
                inflateReset(&stream)
            } else if status != Z_OK {
                return
            }
        }
    }
    return total
}

/// Applies 1–4 random edits: flip a bit, overwrite, insert, delete a run, duplicate a slice, truncate.
private func mutate(_ data: inout [UInt8], _ rng: inout RNG) {
    let alphabet = Array(">@+ACGTNacgt \t\r\n\n".utf8) + [0x00, 0x1F, 0x8B, 0xFF]
    for _ in 0..<(1 + rng.int(below: 4)) {
        guard !data.isEmpty else { data = [alphabet[rng.int(below: alphabet.count)]]; continue }
        let i = rng.int(below: data.count)
        switch rng.int(below: 6) {
        case 0: data[i] ^= UInt8(1 << rng.int(below: 8))
        case 1: data[i] = rng.int(below: 2) == 0 ? alphabet[rng.int(below: alphabet.count)] : UInt8(rng.int(below: 256))
        case 2: data.insert(contentsOf: (0..<(1 + rng.int(below: 8))).map { _ in alphabet[rng.int(below: alphabet.count)] }, at: i)
        case 3: data.removeSubrange(i..<min(data.count, i + 1 + rng.int(below: 16)))
        case 4:
            let j = min(data.count, i + 1 + rng.int(below: 64))
            data.insert(contentsOf: Array(data[i..<j]), at: rng.int(below: data.count))
        default: data.removeSubrange(i...)
        }
    }
}

/// A valid FASTA or FASTQ text.
private func validText(_ rng: inout RNG) -> [UInt8] {
    rng.int(below: 2) == 0
        ? randomFasta(&rng, records: 1 + rng.int(below: 5), maxLength: 400, crlf: rng.int(below: 3) == 0).text
        : randomFastq(&rng, records: 1 + rng.int(below: 8), maxLength: 60, crlf: rng.int(below: 3) == 0).text
}

/// Case `n`: its kind (for messages), the file bytes, and the most bytes any decoding can yield from them.
private func fuzzCase(_ n: Int, _ rng: inout RNG) throws -> (kind: String, file: [UInt8], limit: Int) {
    switch n % 8 {
    case 0:
        let data = (0..<rng.int(below: 2000)).map { _ in UInt8(rng.int(below: 256)) }
        return ("random bytes", data, data.count)
    case 1:
        let alphabet = Array(">@+ACGTacgtN \t\r\n\n\n".utf8) + [0, 1]
        let data = (0..<rng.int(below: 2000)).map { _ in alphabet[rng.int(below: alphabet.count)] }
        return ("random FASTA-like bytes", data, data.count)
    case 2, 3:
        var text = validText(&rng)
        mutate(&text, &rng)
        return ("mutated plain text", text, text.count)
    case 4:
        var text = validText(&rng)
        mutate(&text, &rng)
        return ("mutated text, gzipped", try Gzip.compress(text), text.count)
    case 5:
        var gz = try Gzip.compress(validText(&rng))
        mutate(&gz, &rng)
        return ("gzip, then mutated", gz, inflatableByteCount(gz))
    case 6:
        // Several members, cut anywhere.
        let text = validText(&rng)
        let cuts = ([0, text.count] + (0..<rng.int(below: 3)).map { _ in rng.int(below: text.count + 1) }).sorted()
        var gz: [UInt8] = []
        for k in 0..<(cuts.count - 1) { gz += try Gzip.compress(Array(text[cuts[k]..<cuts[k + 1]])) }
        gz.removeSubrange(rng.int(below: gz.count + 1)...)
        return ("multi-member gzip, truncated", gz, text.count)
    default:
        // A valid member followed by a damaged one, or by garbage.
        let text = validText(&rng)
        var second = try Gzip.compress(validText(&rng))
        mutate(&second, &rng)
        let gz = try Gzip.compress(text) + second
        return ("gzip member then damage", gz, inflatableByteCount(gz))
    }
}

@Suite("SequenceReader fuzz")
struct SequenceReaderFuzzTests {
    @Test func randomAndMutatedInputParsesOrThrows() throws {
        let dir = TempDir()
        let started = Date()
        var parsed = 0
        var rejected = 0
        for n in 0..<400 {
            var rng = RNG(seed: baseSeed + UInt64(n))
            let (kind, file, limit) = try fuzzCase(n, &rng)
            let path = dir.file("case\(n)")
            try Data(file).write(to: URL(fileURLWithPath: path))
            do {
                let reader = try SequenceReader(path: path)
                var records = 0
                while let r = try reader.next() {
                    records += 1
                    let size = r.sequence.count + (r.quality?.count ?? 0)
                    #expect(size <= limit, "case \(n) (\(kind)): a record of \(size) bytes from \(limit) input bytes")
                    // A reader that keeps returning records without consuming input would never end.
                    guard records <= limit + 1 else {
                        Issue.record("case \(n) (\(kind)): \(records) records from \(limit) input bytes")
                        break
                    }
                }
                parsed += 1
            } catch let e as MambaKitError {
                #expect(e.location?.hasPrefix(path) == true, "case \(n) (\(kind)): \(e)")
                #expect(!e.message.isEmpty)
                rejected += 1
            } catch {
                Issue.record("case \(n) (\(kind)): unexpected error \(error)")
            }
        }
        // Both outcomes occur, and the whole run is a smoke test, not a soak.
        #expect(parsed > 40)
        #expect(rejected > 40)
        #expect(Date().timeIntervalSince(started) < 60)
    }
}
