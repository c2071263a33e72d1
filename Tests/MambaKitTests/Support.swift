import Foundation
import MambaKit
import Testing

/// Shared helpers of the test suite: fixture paths, tensor comparison with a label, the worst element and its index.
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static func path(_ name: String) -> String { dir + "/" + name }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path(name)))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }
}

struct Mismatch: CustomStringConvertible {
    let label: String
    let index: Int
    let got: Float
    let want: Float
    let maxAbs: Float
    var description: String { "\(label): max |diff| \(maxAbs) at index \(index) (got \(got), want \(want))" }
}

/// Compares element-wise with |got − want| ≤ atol + rtol·|want|; returns the worst violation (nil when all pass).
func compare(_ label: String, _ got: [Float], _ want: [Float], atol: Float, rtol: Float = 0) -> Mismatch? {
    precondition(got.count == want.count, "\(label): \(got.count) values vs \(want.count)")
    var worst: Mismatch? = nil
    var worstExcess: Float = 0
    var maxAbs: Float = 0
    for i in 0..<got.count {
        let d = abs(got[i] - want[i])
        maxAbs = max(maxAbs, d.isNaN ? .infinity : d)
        let excess = d - (atol + rtol * abs(want[i]))
        if excess > worstExcess || d.isNaN {
            worstExcess = d.isNaN ? .infinity : excess
            worst = Mismatch(label: label, index: i, got: got[i], want: want[i], maxAbs: 0)
        }
    }
    if let w = worst { return Mismatch(label: w.label, index: w.index, got: w.got, want: w.want, maxAbs: maxAbs) }
    return nil
}

func expectClose(_ label: String, _ got: [Float], _ want: [Float], atol: Float, rtol: Float = 0,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    let m = compare(label, got, want, atol: atol, rtol: rtol)
    #expect(m == nil, "\(m?.description ?? "")", sourceLocation: sourceLocation)
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// The environment of the processes tests start: the token stores of their temporary corpora go to one cache under
/// the temporary directory (stale stores are removed as new ones are built), not to the user's.
let testProcessEnvironment: [String: String] = ProcessInfo.processInfo.environment.merging(
    ["MAMBAKIT_CACHE": FileManager.default.temporaryDirectory.appendingPathComponent("mambakit-test-tokens").path]) { $1 }

/// A temporary directory removed when the value is dropped.
final class TempDir {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("mambakit-test-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

/// Deterministic pseudo-random floats for layer tests.
func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var rng = RNG(seed: seed)
    return (0..<n).map { _ in Float(rng.normal()) * scale }
}

/// Tests that change the global thread count, and tests that compare two runs bit for bit, hold this lock, so a
/// thread-count change never lands between the two runs of another test (suites run concurrently).
let threadSettingsLock = NSLock()

func withThreadSettingsLock<T>(_ body: () throws -> T) rethrows -> T {
    threadSettingsLock.lock()
    defer { threadSettingsLock.unlock() }
    return try body()
}

// MARK: - Random FASTA / FASTQ text (index and fuzz tests)

/// A random valid FASTA text from a seeded generator: `records` records with unique names, some with a description,
/// each with its own line width (some on one line), soft-masked (lower-case) runs and N; CRLF lines when `crlf`; an
/// occasional empty record; sometimes no final newline. Returns the text and the expected (name, sequence) pairs.
func randomFasta(_ rng: inout RNG, records: Int, maxLength: Int, crlf: Bool) -> (text: [UInt8], records: [(String, [UInt8])]) {
    let eol: [UInt8] = crlf ? [0x0D, 0x0A] : [0x0A]
    let upper = Array("ACGTN".utf8)
    var text: [UInt8] = []
    var expected: [(String, [UInt8])] = []
    for r in 0..<records {
        let name = "chr\(r)_\(rng.int(below: 1000))"
        text += Array(">\(name)".utf8)
        if rng.int(below: 2) == 0 { text += Array(" sample \(r)\tdescription".utf8) }
        text += eol
        let length = rng.int(below: 8) == 0 ? 0 : 1 + rng.int(below: maxLength)
        let widths = [1, 7, 60, 61, 80, length]
        let width = max(1, widths[rng.int(below: widths.count)])
        var sequence: [UInt8] = []
        var lower = false
        for _ in 0..<length {
            if rng.int(below: 40) == 0 { lower.toggle() }
            let b = upper[rng.int(below: rng.int(below: 50) == 0 ? 5 : 4)]
            sequence.append(lower ? b | 0x20 : b)
        }
        var i = 0
        while i < length {
            let end = min(i + width, length)
            text += sequence[i..<end]
            text += eol
            i = end
        }
        expected.append((name, sequence))
    }
    if rng.int(below: 4) == 0, text.last == 0x0A {
        text.removeLast(crlf ? 2 : 1)  // no final newline
    }
    return (text, expected)
}

/// A random valid four-line FASTQ text; qualities use the whole printable range, so some start with '@' or '+'.
func randomFastq(_ rng: inout RNG, records: Int, maxLength: Int, crlf: Bool) -> (text: [UInt8], records: [(String, [UInt8], [UInt8])]) {
    let eol: [UInt8] = crlf ? [0x0D, 0x0A] : [0x0A]
    let bases = Array("ACGTNacgt".utf8)
    var text: [UInt8] = []
    var expected: [(String, [UInt8], [UInt8])] = []
    for r in 0..<records {
        let name = "read\(r)/\(rng.int(below: 3))"
        let length = rng.int(below: maxLength + 1)
        let sequence = (0..<length).map { _ in bases[rng.int(below: bases.count)] }
        let quality = (0..<length).map { _ in UInt8(33 + rng.int(below: 94)) }
        text += Array("@\(name)".utf8) + (rng.int(below: 2) == 0 ? Array(" lane 1".utf8) : []) + eol
        text += sequence + eol
        text += (rng.int(below: 2) == 0 ? Array("+".utf8) : Array("+\(name)".utf8)) + eol
        text += quality + eol
        expected.append((name, sequence, quality))
    }
    return (text, expected)
}

/// The MambaKitError `body` throws, or nil when it throws none (another error type is recorded as an issue).
func thrown(_ body: () throws -> Void) -> MambaKitError? {
    do {
        try body()
        return nil
    } catch let e as MambaKitError {
        return e
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// The MambaKitError `body` must throw: nil and a recorded issue when it throws none or another type.
func caught(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> MambaKitError? {
    do {
        try body()
        Issue.record("expected an error", sourceLocation: sourceLocation)
    } catch let e as MambaKitError {
        return e
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// The example of samtools' faidx(5) manual page: `one` (30 + 30 + 6 bases) and `two` (14 + 14), LF line ends.
let faidxExample = """
>one
ATGCATGCATGCATGCATGCATGCATGCAT
GCATGCATGCATGCATGCATGCATGCATGC
ATGCAT
>two another chromosome
ATGCATGCATGCAT
GCATGCATGCATGC

"""
