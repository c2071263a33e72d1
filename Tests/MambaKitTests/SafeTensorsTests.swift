import Foundation
import MambaKit
import Testing

// MARK: - Helpers

/// A fresh, uniquely named directory under the system temporary directory.
private struct ScratchDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("mambakit-safetensors-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    func contents() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: path).sorted() }
}

/// Runs `body` with a scratch directory that is removed afterwards.
private func withScratch<R>(_ body: (ScratchDirectory) throws -> R) throws -> R {
    let scratch = try ScratchDirectory()
    defer { scratch.remove() }
    return try body(scratch)
}

private func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

/// A hand-built file: the 8-byte length (the header's real length unless `declaredLength` overrides it), the header
/// bytes as given (no padding), then `data`.
private func rawFile(_ header: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    littleEndianBytes(declaredLength ?? UInt64(header.count)) + header + data
}

private func rawFile(_ header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    rawFile(Array(header.utf8), data: data, declaredLength: declaredLength)
}

/// Asserts that reading `bytes` fails with a `.format` error whose description names the file and contains
/// `fragment` (which identifies the rule that fired).
private func expectRejected(
    _ bytes: [UInt8], _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation
) throws {
    try withScratch { scratch in
        let path = scratch.path + "/hostile.safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            let file = try SafeTensorsFile(path: path)
            Issue.record("accepted a hostile file; tensors: \(file.names)", sourceLocation: sourceLocation)
        } catch let error as MambaKitError {
            #expect(error.kind == .format, "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(path), "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        }
    }
}

/// The element bytes the writer produces for one float stored as a 2-byte type.
private func encoded16(_ value: Float, _ dtype: SafeTensorDType) -> UInt16 {
    let bytes = SafeTensorOut(name: "x", shape: [1], floats: [value], dtype: dtype).bytes
    return UInt16(bytes[0]) | UInt16(bytes[1]) << 8
}

/// Writes `tensor` alone to a file and reads its values back as floats.
private func readBack(_ tensor: SafeTensorOut) throws -> [Float] {
    try withScratch { scratch in
        let path = scratch.path + "/t.safetensors"
        try SafeTensorsFile.write([tensor], to: path)
        return try SafeTensorsFile(path: path).floats(tensor.name)
    }
}

private let f32Entry = #"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#

@Suite struct SafeTensorsTests {
    // MARK: Round trips and conversions

    @Test func roundTripOfSeveralDtypes() throws {
        let matrix: [Float] = [0, 1, -1.5, 3.25, 1e-8, -1e30]
        let tensors = [
            SafeTensorOut(name: "layers.0.weight", shape: [2, 3], floats: matrix),
            SafeTensorOut(name: "half", shape: [4], floats: [1, -2.5, 0.5, 65504], dtype: .F16),
            SafeTensorOut(name: "brain", shape: [2, 2], floats: [1, -2.5, 0.15625, 256], dtype: .BF16),
            SafeTensorOut(name: "ids", shape: [3], int64s: [0, -7, Int(Int64.max)]),
            SafeTensorOut(name: "scalar", shape: [], floats: [42]),
            SafeTensorOut(name: "empty", shape: [0], floats: []),
            SafeTensorOut(name: "small", dtype: .I32, shape: [2], bytes: [0xFF, 0xFF, 0xFF, 0xFF, 5, 0, 0, 0]),
        ]
        let metadata = ["format": "pt", "note": "quote \" backslash \\ é"]
        try withScratch { scratch in
            let path = scratch.path + "/model.safetensors"
            try SafeTensorsFile.write(tensors, metadata: metadata, to: path)
            let file = try SafeTensorsFile(path: path)
            #expect(file.path == path)
            #expect(file.names == tensors.map(\.name))
            #expect(file.metadata == metadata)
            #expect(file.tensors.map(\.begin) == [0, 24, 32, 40, 64, 68, 68])
            #expect(file.info("half")?.dtype == .F16)
            #expect(file.info("brain")?.shape == [2, 2])
            #expect(file.info("scalar")?.shape == [])
            #expect(file.info("scalar")?.elementCount == 1)
            #expect(file.info("empty")?.elementCount == 0)
            #expect(try file.floats("layers.0.weight") == matrix)
            #expect(try file.floats("half") == [1, -2.5, 0.5, 65504])
            #expect(try file.floats("brain") == [1, -2.5, 0.15625, 256])
            #expect(try file.int64s("ids") == [0, -7, Int(Int64.max)])
            #expect(try file.floats("scalar") == [42])
            #expect(try file.floats("empty") == [])
            #expect(try file.int64s("small") == [-1, 5])

            let raw = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            let headerLength = raw[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
            #expect(headerLength % 8 == 0)
            #expect(raw.count == 8 + headerLength + 68 + 8)
            #expect(try scratch.contents() == ["model.safetensors"])
        }
    }

    @Test func halfPrecisionConversion() throws {
        let vectors: [(Float, UInt16)] = [
            (1.0, 0x3C00), (-2.5, 0xC100), (65504, 0x7BFF), (0x1p-24, 0x0001), (-0.0, 0x8000),
            (.infinity, 0x7C00), (-.infinity, 0xFC00),
            (65520, 0x7C00),  // halfway between 65504 and 2^16: ties to even, i.e. overflows to Inf
            (1 + 0x1p-11, 0x3C00),  // halfway between 0x3C00 and 0x3C01: ties to the even 0x3C00
            (1 + 3 * 0x1p-11, 0x3C02),  // halfway between 0x3C01 and 0x3C02: ties to the even 0x3C02
            (0x1p-25, 0x0000),  // half the smallest subnormal: ties to even zero
            (0x1.8p-25, 0x0001),  // above the tie: rounds up to the smallest subnormal
            (0x1.ffcp-15, 0x0400),  // largest subnormal plus a tie rounds up into the normals
        ]
        for (value, bits) in vectors {
            #expect(encoded16(value, .F16) == bits, "F16 encoding of \(value)")
        }
        let nan = encoded16(.nan, .F16)
        #expect(nan & 0x7C00 == 0x7C00 && nan & 0x03FF != 0)

        // Decoding widens exactly.
        let stored: [UInt16] = [0x0001, 0x03FF, 0x7BFF, 0x3555, 0x8000, 0x7C00, 0xFC00, 0x7E00]
        let values = try readBack(
            SafeTensorOut(name: "h", dtype: .F16, shape: [stored.count], bytes: stored.flatMap(littleEndianBytes)))
        #expect(Array(values[0..<7]) == [0x1p-24, 0x3FFp-24, 65504, 0.333251953125, -0.0, .infinity, -.infinity])
        #expect(values[4].sign == .minus)
        #expect(values[7].isNaN)
    }

    @Test func bfloat16Conversion() throws {
        let vectors: [(Float, UInt16)] = [
            (1.0, 0x3F80), (-2.5, 0xC020), (.infinity, 0x7F80), (-.infinity, 0xFF80), (-0.0, 0x8000),
            (.greatestFiniteMagnitude, 0x7F80),  // rounds up past the largest bfloat16 to Inf
            (Float(bitPattern: 0x0001_0000), 0x0001),  // smallest bfloat16 subnormal
            (Float(bitPattern: 0x0000_8000), 0x0000),  // half of it: ties to even zero
            (Float(bitPattern: 0x3F80_8000), 0x3F80),  // tie: stays on even 0x3F80
            (Float(bitPattern: 0x3F81_8000), 0x3F82),  // tie: rounds up to even 0x3F82
            (Float(bitPattern: 0x3F80_8001), 0x3F81),  // just above the tie
        ]
        for (value, bits) in vectors {
            #expect(encoded16(value, .BF16) == bits, "BF16 encoding of \(value)")
        }
        let nan = encoded16(.nan, .BF16)
        #expect(nan & 0x7F80 == 0x7F80 && nan & 0x007F != 0)
        // A NaN whose payload lives only in the low 16 bits must not collapse to Inf.
        let lowPayloadNaN = encoded16(Float(bitPattern: 0x7F80_0001), .BF16)
        #expect(lowPayloadNaN & 0x7F80 == 0x7F80 && lowPayloadNaN & 0x007F != 0)

        let stored: [UInt16] = [0x0001, 0x3F80, 0xC020, 0x7F7F]
        let values = try readBack(
            SafeTensorOut(name: "b", dtype: .BF16, shape: [4], bytes: stored.flatMap(littleEndianBytes)))
        #expect(values == [0x1p-133, 1, -2.5, Float(bitPattern: 0x7F7F_0000)])
    }

    @Test func float64NarrowsToNearestEven() throws {
        let doubles: [Double] = [0.1, 1 + 0x1p-24, 1 + 3 * 0x1p-24, 1e300, 1e-50, -.infinity]
        let expected: [Float] = [0.1, 1, 1 + 0x1p-22, .infinity, 0, -.infinity]
        let bytes = doubles.flatMap { littleEndianBytes($0.bitPattern) }
        #expect(try readBack(SafeTensorOut(name: "d", dtype: .F64, shape: [6], bytes: bytes)) == expected)
        let widened = SafeTensorOut(name: "w", shape: [2], floats: [0.1, -3], dtype: .F64)
        #expect(try readBack(widened) == [0.1, -3])
    }

    @Test func zeroTensorFilesAreValid() throws {
        try withScratch { scratch in
            let written = scratch.path + "/none.safetensors"
            try SafeTensorsFile.write([], to: written)
            #expect(try SafeTensorsFile(path: written).tensors.isEmpty)

            let handMade = scratch.path + "/braces.safetensors"
            try Data(rawFile("{}      ")).write(to: URL(fileURLWithPath: handMade))
            #expect(try SafeTensorsFile(path: handMade).names == [])

            let metadataOnly = scratch.path + "/meta.safetensors"
            try Data(rawFile(#"{"__metadata__":{"k":"v"}}"#)).write(to: URL(fileURLWithPath: metadataOnly))
            #expect(try SafeTensorsFile(path: metadataOnly).metadata == ["k": "v"])
        }
    }

    @Test func headerStringsDecodeEscapes() throws {
        let empty = #"{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"#
        let header = #"{"caf\u00e9":\#(empty),"\ud83d\ude00":\#(empty),"a\"b\\c\/d\n\t":\#(empty)}"#
        try withScratch { scratch in
            let path = scratch.path + "/escapes.safetensors"
            try Data(rawFile(header)).write(to: URL(fileURLWithPath: path))
            let file = try SafeTensorsFile(path: path)
            #expect(Set(file.names) == ["café", "😀", "a\"b\\c/d\n\t"])

            let tricky = ["quote\"", "back\\slash", "line\nfeed", "control\u{01}", "emoji 😀", "é"]
            let rewritten = scratch.path + "/tricky.safetensors"
            try SafeTensorsFile.write(tricky.map { SafeTensorOut(name: $0, shape: [1], floats: [1]) }, to: rewritten)
            #expect(try SafeTensorsFile(path: rewritten).names == tricky)
        }
    }

    @Test func accessorsRejectUnknownNamesAndWrongTypes() throws {
        try withScratch { scratch in
            let path = scratch.path + "/m.safetensors"
            let tensors = [
                SafeTensorOut(name: "w", shape: [2], floats: [1, 2]), SafeTensorOut(name: "i", shape: [1], int64s: [3]),
            ]
            try SafeTensorsFile.write(tensors, to: path)
            let file = try SafeTensorsFile(path: path)
            #expect(file.info("nope") == nil)
            #expect(throws: MambaKitError(.format, "no tensor named 'nope'", at: path)) { try file.floats("nope") }
            #expect(throws: MambaKitError.self) { try file.int64s("nope") }
            #expect(throws: MambaKitError.self) { try file.floats("i") }
            #expect(throws: MambaKitError.self) { try file.int64s("w") }

            var buffer = [Float](repeating: 0, count: 3)
            do {
                try buffer.withUnsafeMutableBufferPointer { try file.copyFloats("w", into: $0.baseAddress!, count: 3) }
                Issue.record("copyFloats accepted a wrong count")
            } catch let error as MambaKitError {
                #expect(error.kind == .shape)
                #expect(error.description.contains(path))
            }
            try buffer.withUnsafeMutableBufferPointer { try file.copyFloats("w", into: $0.baseAddress!, count: 2) }
            #expect(buffer == [1, 2, 0])
        }
    }

    // MARK: Rejection rules, one per rule

    @Test func rejectsFileShorterThanEightBytes() throws {
        try expectRejected([1, 2, 3, 4, 5], "too short")
        try expectRejected([], "too short")
    }

    @Test func rejectsHeaderLengthOverLimit() throws {
        try expectRejected(rawFile("{}", declaredLength: 100_000_001), "exceeds the 100000000-byte limit")
        try expectRejected(rawFile("{}", declaredLength: .max), "exceeds the 100000000-byte limit")
    }

    @Test func rejectsHeaderPastEndOfFile() throws {
        try expectRejected(rawFile("{}", declaredLength: 100), "runs past the end")
    }

    @Test func rejectsInvalidUTF8() throws {
        // Byte offsets count from the start of the file: the header starts at byte 8.
        try expectRejected(rawFile([0x7B, 0x22, 0x61, 0xFF, 0x22, 0x3A, 0x31, 0x7D]), "not valid UTF-8, ")
        try expectRejected(rawFile([0x7B, 0x22, 0x61, 0xFF, 0x22, 0x3A, 0x31, 0x7D]), "byte 11")
        try expectRejected(rawFile([0x7B, 0x22, 0xC0, 0x80, 0x22, 0x3A, 0x31, 0x7D]), "not valid UTF-8")  // overlong
        let surrogate: [UInt8] = [0x7B, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x3A, 0x31, 0x7D]
        try expectRejected(rawFile(surrogate), "not valid UTF-8")
        try expectRejected(rawFile([0x7B, 0x22, 0xE2, 0x82]), "not valid UTF-8")  // cut short
    }

    @Test func rejectsMalformedJSON() throws {
        try expectRejected(rawFile(#"{"a" 1}"#), "byte 13")
        for header in [
            #"{"a":1,}"#, #"{'a':1}"#, #"{"a":01}"#, #"{"a":"unterminated}"#, #"{"a":NaN}"#, "{} x", "{",
            #"{"a":"\udc00"}"#, #"{"a":"\ud800x"}"#, #"{"a":"\q"}"#, "{\"a\":\"tab\there\"}", #"{"a":1.}"#, "",
        ] {
            try expectRejected(rawFile(header), "header is not valid JSON")
        }
    }

    @Test func rejectsHeaderThatIsNotAnObject() throws {
        try expectRejected(rawFile("[]"), "header must be a JSON object")
        try expectRejected(rawFile(#""text""#), "header must be a JSON object")
    }

    @Test func rejectsDuplicateKeys() throws {
        try expectRejected(rawFile(#"{"a":\#(f32Entry),"a":\#(f32Entry)}"#, data: [0, 0, 0, 0]), #"duplicate key "a""#)
        try expectRejected(
            rawFile(#"{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            #"duplicate key "dtype""#)
        // Equal after unescaping is still a duplicate.
        try expectRejected(rawFile(#"{"a":\#(f32Entry),"\u0061":\#(f32Entry)}"#, data: [0, 0, 0, 0]), "duplicate key")
    }

    @Test func rejectsDeepNesting() throws {
        for depth in [65, 1000, 100_000] {
            let nested = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            try expectRejected(rawFile(#"{"__metadata__":\#(nested)}"#), "nesting deeper than 64 levels")
        }
        // Nesting within the limit parses; it then fails the schema instead.
        let shallow = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        try expectRejected(rawFile(#"{"__metadata__":\#(shallow)}"#), "__metadata__ must be an object of strings")
    }

    @Test func rejectsMetadataWithNonStringValue() throws {
        try expectRejected(rawFile(#"{"__metadata__":{"epoch":3}}"#), "__metadata__ value for 'epoch' must be a string")
        try expectRejected(rawFile(#"{"__metadata__":{"a":null}}"#), "must be a string")
    }

    @Test func rejectsEntriesThatBreakTheSchema() throws {
        let cases: [(String, String)] = [
            (#"{"t":[1]}"#, "tensor entry must be an object"),
            (#"{"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#, "unknown dtype 'Q4'"),
            (#"{"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}"#, "dtype must be a string"),
            (#"{"t":{"shape":[1],"data_offsets":[0,4]}}"#, "lacks 'dtype'"),
            (#"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#, "lacks 'shape'"),
            (#"{"t":{"dtype":"F32","shape":[1]}}"#, "lacks 'data_offsets'"),
            (#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#, "unexpected key 'x'"),
            (#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, "not a non-negative integer"),
            (#"{"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#, "not a non-negative integer"),
            (#"{"t":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}"#, "not a non-negative integer"),
            (#"{"t":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}"#, "shape must be an array of integers"),
            (#"{"t":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}"#, "shape must be an array of integers"),
            (#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#, "exactly 2 integers"),
            (#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, "exactly 2 integers"),
            (#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999]}}"#, "too large"),
        ]
        for (header, fragment) in cases {
            try expectRejected(rawFile(header, data: [0, 0, 0, 0]), fragment)
            try expectRejected(rawFile(header, data: [0, 0, 0, 0]), "tensor 't'")
        }
    }

    @Test func rejectsOffsetsNotStartingAtZero() throws {
        let header = #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        try expectRejected(rawFile(header, data: [UInt8](repeating: 0, count: 8)), "begins at offset 4, not 0")
    }

    @Test func rejectsGapBetweenTensors() throws {
        let header = #"{"a":\#(f32Entry),"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        try expectRejected(rawFile(header, data: [UInt8](repeating: 0, count: 12)), "gap in the data")
    }

    @Test func rejectsOverlappingTensors() throws {
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
            + #""b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        try expectRejected(rawFile(header, data: [UInt8](repeating: 0, count: 8)), "overlapping data")
    }

    @Test func rejectsOffsetsEndingBeforeTheyBegin() throws {
        let header = #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#
        try expectRejected(rawFile(header, data: [0, 0, 0, 0]), "end before they begin")
    }

    @Test func rejectsOverflowingSize() throws {
        let header = #"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#
        try expectRejected(rawFile(header), "overflows")
        let huge = #"{"t":{"dtype":"F64","shape":[9223372036854775807],"data_offsets":[0,0]}}"#
        try expectRejected(rawFile(huge), "overflows")
    }

    @Test func rejectsSizeThatDisagreesWithShape() throws {
        let header = #"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#
        try expectRejected(rawFile(header, data: [UInt8](repeating: 0, count: 8)), "span 8 bytes")
    }

    @Test func rejectsTrailingBytes() throws {
        try expectRejected(rawFile(#"{"t":\#(f32Entry)}"#, data: [0, 0, 0, 0, 9]), "1 trailing bytes")
        try expectRejected(rawFile("{}", data: [0]), "trailing bytes")
    }

    @Test func rejectsTruncatedData() throws {
        try expectRejected(rawFile(#"{"t":\#(f32Entry)}"#, data: [0, 0, 0]), "truncated")
        let far = #"{"t":{"dtype":"U8","shape":[9223372036854775807],"data_offsets":[0,9223372036854775807]}}"#
        try expectRejected(rawFile(far), "truncated")
    }

    @Test func writerRejectsInconsistentTensors() throws {
        try withScratch { scratch in
            let path = scratch.path + "/bad.safetensors"
            let one = SafeTensorOut(name: "w", shape: [1], floats: [1])
            let cases: [([SafeTensorOut], MambaKitError.Kind)] = [
                ([one, one], .format),
                ([SafeTensorOut(name: "__metadata__", shape: [1], floats: [1])], .format),
                ([SafeTensorOut(name: "w", shape: [2], floats: [1])], .shape),
                ([SafeTensorOut(name: "w", dtype: .F16, shape: [1], bytes: [0, 0, 0])], .shape),
                ([SafeTensorOut(name: "w", shape: [-1, -1], floats: [1])], .shape),
                ([SafeTensorOut(name: "w", dtype: .U8, shape: [Int.max, 2], bytes: [])], .shape),
            ]
            for (tensors, kind) in cases {
                do {
                    try SafeTensorsFile.write(tensors, to: path)
                    Issue.record("writer accepted \(tensors.map(\.name))")
                } catch let error as MambaKitError {
                    #expect(error.kind == kind, "\(error)")
                    #expect(error.description.contains(path))
                }
            }
            #expect(try scratch.contents().isEmpty)
        }
    }

    // MARK: AtomicFile

    @Test func atomicFileReplacesWholeFileAndLeavesNoTemporaries() throws {
        try withScratch { scratch in
            let path = scratch.path + "/target.bin"
            try AtomicFile.write([UInt8](repeating: 0x41, count: 100_000), to: path)
            try AtomicFile.write([1, 2, 3] as [UInt8], to: path)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([1, 2, 3]))
            try AtomicFile.writeText("héllo\n", to: path)
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "héllo\n")
            try AtomicFile.write(Data([9, 8]), to: path)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([9, 8]))
            #expect(try scratch.contents() == ["target.bin"])
        }
    }

    @Test func atomicFileStreamsChunksAndKeepsTargetWhenBodyFails() throws {
        struct Stop: Error {}
        try withScratch { scratch in
            let path = scratch.path + "/stream.bin"
            try AtomicFile.write(to: path) { handle in
                try handle.write([1, 2])
                try [UInt8]([3, 4, 5]).withUnsafeBytes { try handle.write($0) }
                try handle.write([])
            }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([1, 2, 3, 4, 5]))
            #expect(throws: Stop.self) {
                try AtomicFile.write(to: path) { handle in
                    try handle.write([UInt8](repeating: 7, count: 1000))
                    throw Stop()
                }
            }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([1, 2, 3, 4, 5]))
            #expect(try scratch.contents() == ["stream.bin"])
        }
    }

    @Test func atomicFileIntoMissingDirectoryThrowsIO() throws {
        try withScratch { scratch in
            let path = scratch.path + "/missing/dir/file.bin"
            do {
                try AtomicFile.write([1], to: path)
                Issue.record("write into a missing directory succeeded")
            } catch let error as MambaKitError {
                #expect(error.kind == .io)
                #expect(error.description.contains(path))
                #expect(error.description.contains("No such file or directory"))
            }
            #expect(throws: MambaKitError.self) { try AtomicFile.write([1], to: scratch.path + "/") }
        }
    }

    @Test func readerReportsMissingFileAsIO() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("absent-\(UUID()).safetensors").path
        do {
            _ = try SafeTensorsFile(path: path)
            Issue.record("opened a missing file")
        } catch let error as MambaKitError {
            #expect(error.kind == .io)
            #expect(error.description.contains(path))
        }
    }
}
