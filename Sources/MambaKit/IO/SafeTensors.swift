#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The safetensors format: a little-endian UInt64 header length N, N bytes of UTF-8 JSON describing each tensor
// (`dtype`, `shape`, `data_offsets` relative to the data buffer, optional string-to-string `__metadata__`), then the
// data buffer. The reader validates every structural rule before handing out a single tensor, so a hostile or
// damaged file fails with a precise error instead of yielding garbage or a crash.

/// Element types a safetensors file may declare.
public enum SafeTensorDType: String, CaseIterable, Sendable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .BOOL, .U8, .I8: return 1
        case .I16, .U16, .F16, .BF16: return 2
        case .I32, .U32, .F32: return 4
        case .F64, .I64, .U64: return 8
        }
    }
}

/// One tensor's entry in a validated header. `begin..<end` is its byte range relative to the data buffer.
public struct SafeTensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: SafeTensorDType
    public let shape: [Int]
    public let begin: Int
    public let end: Int

    /// Number of elements (1 for a 0-d scalar, 0 if any dimension is 0).
    public var elementCount: Int { (end - begin) / dtype.byteSize }
}

/// A safetensors file read fully into memory and validated.
///
/// Rules enforced, each with its own error naming the file and the byte offset or tensor:
/// the file holds at least the 8-byte length; the header length is at most 100 000 000 and lies inside the file; the
/// header is UTF-8, strict JSON without duplicate keys, and follows the schema; offsets sorted by begin start at 0 and
/// are contiguous; shape × dtype size does not overflow and equals each tensor's byte span; and the data buffer ends
/// exactly at the end of the file.
public final class SafeTensorsFile: Sendable {
    /// Largest header accepted; bigger ones are refused before any parsing, as a denial-of-service guard.
    public static let maxHeaderLength = 100_000_000

    public let path: String
    public let metadata: [String: String]
    /// All tensors, sorted by `begin`.
    public let tensors: [SafeTensorInfo]

    /// The open file: only the header is read at init; tensor data is read (`pread`) when asked for, so a model is
    /// checked against its config before its weights take memory.
    private let fd: Int32
    /// The file size at open, in bytes.
    public let fileSize: Int
    private let dataStart: Int
    private let positions: [String: Int]

    public init(path: String) throws {
        let (fd, size, header) = try readHeader(path)
        let layout: (metadata: [String: String], tensors: [SafeTensorInfo], dataStart: Int)
        do { layout = try parseLayout(header, fileSize: size, path: path) } catch { close(fd); throw error }
        self.fd = fd
        self.fileSize = size
        self.path = path
        self.dataStart = layout.dataStart
        self.metadata = layout.metadata
        self.tensors = layout.tensors
        var positions: [String: Int] = [:]
        for (i, info) in layout.tensors.enumerated() { positions[info.name] = i }
        self.positions = positions
    }

    deinit { close(fd) }

    /// Tensor names, in data order.
    public var names: [String] { tensors.map(\.name) }

    public func info(_ name: String) -> SafeTensorInfo? {
        positions[name].map { tensors[$0] }
    }

    /// The tensor's values as `Float`, converted like PyTorch's `.float()`: F16 and BF16 widen exactly, F64 rounds to
    /// nearest (ties to even). Integer dtypes are refused rather than silently converted.
    public func floats(_ name: String) throws -> [Float] {
        let info = try floatTensor(name)
        var out = [Float](repeating: 0, count: info.elementCount)
        try out.withUnsafeMutableBufferPointer { buffer in
            if let base = buffer.baseAddress, buffer.count > 0 { try convertFloats(info, into: base) }
        }
        return out
    }

    /// Converts the tensor like `floats(_:)` straight into `destination`, which must hold exactly its element count.
    public func copyFloats(_ name: String, into destination: UnsafeMutablePointer<Float>, count: Int) throws {
        let info = try floatTensor(name)
        guard count == info.elementCount else {
            throw MambaKitError(
                .shape, "tensor \(describe(info)) has \(info.elementCount) elements but the destination holds \(count)",
                at: location(info))
        }
        if count > 0 { try convertFloats(info, into: destination) }
    }

    /// The tensor's values as `Int`, from any integer dtype or BOOL. U64 values above `Int.max` are an error.
    public func int64s(_ name: String) throws -> [Int] {
        let info = try tensor(name)
        let n = info.elementCount
        return try withData(info) { src in
            switch info.dtype {
            case .BOOL, .U8: return (0..<n).map { Int(src[$0]) }
            case .I8: return (0..<n).map { Int(Int8(bitPattern: src[$0])) }
            case .I16: return (0..<n).map { Int(littleEndian(src, $0, as: Int16.self)) }
            case .U16: return (0..<n).map { Int(littleEndian(src, $0, as: UInt16.self)) }
            case .I32: return (0..<n).map { Int(littleEndian(src, $0, as: Int32.self)) }
            case .U32: return (0..<n).map { Int(littleEndian(src, $0, as: UInt32.self)) }
            case .I64: return (0..<n).map { Int(littleEndian(src, $0, as: Int64.self)) }
            case .U64:
                return try (0..<n).map { i in
                    let value = littleEndian(src, i, as: UInt64.self)
                    guard let exact = Int(exactly: value) else {
                        throw MambaKitError(.format, "element \(i) = \(value) does not fit in Int", at: location(info))
                    }
                    return exact
                }
            case .F16, .BF16, .F32, .F64:
                throw MambaKitError(.format, "tensor has dtype \(info.dtype.rawValue), not an integer type",
                                    at: location(info))
            }
        }
    }

    private func tensor(_ name: String) throws -> SafeTensorInfo {
        guard let info = info(name) else { throw MambaKitError(.format, "no tensor named '\(name)'", at: path) }
        return info
    }

    private func floatTensor(_ name: String) throws -> SafeTensorInfo {
        let info = try tensor(name)
        switch info.dtype {
        case .F16, .BF16, .F32, .F64: return info
        default:
            throw MambaKitError(.format, "tensor has dtype \(info.dtype.rawValue), not a floating-point type",
                                at: location(info))
        }
    }

    private func convertFloats(_ info: SafeTensorInfo, into dst: UnsafeMutablePointer<Float>) throws {
        let n = info.elementCount
        #if _endian(little)
        if info.dtype == .F32 {
            // Little-endian F32 is already the destination's layout: read it in place.
            try readData(info, into: UnsafeMutableRawPointer(dst))
            return
        }
        #endif
        try withData(info) { src in
            switch info.dtype {
            case .F32: for i in 0..<n { dst[i] = Float(bitPattern: littleEndian(src, i, as: UInt32.self)) }
            case .F16: for i in 0..<n { dst[i] = floatFromHalfBits(littleEndian(src, i, as: UInt16.self)) }
            case .BF16:
                for i in 0..<n { dst[i] = BFloat16.float(littleEndian(src, i, as: UInt16.self)) }
            case .F64: for i in 0..<n { dst[i] = Float(Double(bitPattern: littleEndian(src, i, as: UInt64.self))) }
            default: preconditionFailure("convertFloats called on \(info.dtype.rawValue)")
            }
        }
    }

    /// The tensor's bytes, read from the file into a temporary buffer for `body`.
    private func withData<R>(_ info: SafeTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(info.end - info.begin, 1), alignment: 64)
        defer { raw.deallocate() }
        try readData(info, into: raw)
        return try body(UnsafeRawBufferPointer(start: raw, count: info.end - info.begin))
    }

    /// Reads the tensor's byte span into `dst` (which holds at least that many bytes).
    private func readData(_ info: SafeTensorInfo, into dst: UnsafeMutableRawPointer) throws {
        var done = 0
        let total = info.end - info.begin
        while done < total {
            let n = pread(fd, dst + done, min(total - done, 1 << 30), off_t(dataStart + info.begin + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw AtomicFile.systemError(errno, "cannot read tensor data", path: location(info))
            }
            if n == 0 {
                throw MambaKitError(.io, "the file ended early: it shrank after it was opened", at: location(info))
            }
            done += n
        }
    }

    private func describe(_ info: SafeTensorInfo) -> String { "\(info.dtype.rawValue) \(info.shape)" }

    private func location(_ info: SafeTensorInfo) -> String { "\(path), tensor '\(info.name)'" }
}

// MARK: - Writing

/// A tensor to write: raw little-endian element bytes plus the dtype and shape that describe them.
public struct SafeTensorOut: Sendable {
    public let name: String
    public let dtype: SafeTensorDType
    public let shape: [Int]
    public let bytes: [UInt8]

    /// Wraps already-encoded bytes; `SafeTensorsFile.write` checks that they match `shape` and `dtype`.
    public init(name: String, dtype: SafeTensorDType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// Encodes `floats` as F32, F64, F16 or BF16. Narrowing rounds to nearest, ties to even (as PyTorch does), values
    /// beyond the target's range become ±Inf, and NaN stays NaN.
    public init(name: String, shape: [Int], floats: [Float], dtype: SafeTensorDType = .F32) {
        switch dtype {
        case .F32: self.init(name: name, dtype: dtype, shape: shape, bytes: encode(floats) { $0.bitPattern })
        case .F64: self.init(name: name, dtype: dtype, shape: shape, bytes: encode(floats) { Double($0).bitPattern })
        case .F16: self.init(name: name, dtype: dtype, shape: shape, bytes: encode(floats, halfBits))
        case .BF16: self.init(name: name, dtype: dtype, shape: shape, bytes: encode(floats, BFloat16.bits))
        default: preconditionFailure("SafeTensorOut(floats:) needs a floating-point dtype, not \(dtype.rawValue)")
        }
    }

    /// Encodes `int64s` as I64.
    public init(name: String, shape: [Int], int64s: [Int]) {
        self.init(name: name, dtype: .I64, shape: shape, bytes: encode(int64s) { Int64($0) })
    }
}

extension SafeTensorsFile {
    /// Writes `tensors` atomically (via `AtomicFile`): data laid out contiguously in the given order, header keys in
    /// the same order after `__metadata__`, header padded with spaces to a multiple of 8 so the data stays aligned.
    /// Throws if a name repeats or is `__metadata__`, or if a tensor's bytes do not match its shape and dtype.
    public static func write(_ tensors: [SafeTensorOut], metadata: [String: String]? = nil, to path: String) throws {
        var header: [UInt8] = Array("{".utf8)
        if let metadata {
            appendJSONString("__metadata__", to: &header)
            header += Array(":{".utf8)
            for (i, entry) in metadata.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { header.append(UInt8(ascii: ",")) }
                appendJSONString(entry.key, to: &header)
                header.append(UInt8(ascii: ":"))
                appendJSONString(entry.value, to: &header)
            }
            header.append(UInt8(ascii: "}"))
        }
        var seen = Set<String>()
        var offset = 0
        for tensor in tensors {
            let location = "\(path), tensor '\(tensor.name)'"
            guard tensor.name != "__metadata__" else {
                throw MambaKitError(.format, "the tensor name '__metadata__' is reserved", at: location)
            }
            guard seen.insert(tensor.name).inserted else {
                throw MambaKitError(.format, "duplicate tensor name", at: location)
            }
            guard tensor.shape.allSatisfy({ $0 >= 0 }) else {
                throw MambaKitError(.shape, "negative dimension in shape \(tensor.shape)", at: location)
            }
            guard let size = byteCount(tensor.shape, tensor.dtype), size == tensor.bytes.count else {
                let declared = "shape \(tensor.shape) of \(tensor.dtype.rawValue)"
                throw MambaKitError(.shape, "\(declared) does not match \(tensor.bytes.count) bytes", at: location)
            }
            if header.count > 1 { header.append(UInt8(ascii: ",")) }
            appendJSONString(tensor.name, to: &header)
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            let entry = "{\"dtype\":\"\(tensor.dtype.rawValue)\",\"shape\":[\(shape)],"
                + "\"data_offsets\":[\(offset),\(offset + size)]}"
            header += Array((":" + entry).utf8)
            offset += size
        }
        header.append(UInt8(ascii: "}"))
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        guard header.count <= maxHeaderLength else {
            throw MambaKitError(.format, "header of \(header.count) bytes exceeds the \(maxHeaderLength)-byte limit",
                                at: path)
        }
        try AtomicFile.write(to: path) { file in
            try file.write(encode([header.count]) { UInt64($0) })
            try file.write(header)
            for tensor in tensors { try file.write(tensor.bytes) }
        }
    }
}

/// Appends `text` as a JSON string: quotes, backslashes and control characters escaped, everything else raw UTF-8.
private func appendJSONString(_ text: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), byte]
        case 0x0A: out += Array("\\n".utf8)
        case 0x0D: out += Array("\\r".utf8)
        case 0x09: out += Array("\\t".utf8)
        case 0..<0x20:
            let hex = String(byte, radix: 16)
            out += Array(("\\u00" + (hex.count == 1 ? "0" : "") + hex).utf8)
        default: out.append(byte)
        }
    }
    out.append(UInt8(ascii: "\""))
}

// MARK: - Number formats

/// Little-endian bytes of `values` mapped through `bits`.
private func encode<T, B: FixedWidthInteger>(_ values: [T], _ bits: (T) -> B) -> [UInt8] {
    let width = MemoryLayout<B>.size
    return [UInt8](unsafeUninitializedCapacity: values.count * width) { buffer, initialized in
        let raw = UnsafeMutableRawBufferPointer(buffer)
        for (i, value) in values.enumerated() {
            raw.storeBytes(of: bits(value).littleEndian, toByteOffset: i * width, as: B.self)
        }
        initialized = values.count * width
    }
}

/// Element `index` of a little-endian array of `T` (the data buffer has no alignment guarantee).
private func littleEndian<T: FixedWidthInteger>(_ src: UnsafeRawBufferPointer, _ index: Int, as: T.Type) -> T {
    T(littleEndian: src.loadUnaligned(fromByteOffset: index * MemoryLayout<T>.size, as: T.self))
}

/// IEEE binary16 → binary32. Every half value, subnormals included, is exactly representable as a Float.
private func floatFromHalfBits(_ h: UInt16) -> Float {
    let sign: UInt32 = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    switch exponent {
    case 0:
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    case 0x1F:
        return Float(bitPattern: sign | 0x7F80_0000 | mantissa << 13)
    default:
        return Float(bitPattern: sign | (exponent + 112) << 23 | mantissa << 13)
    }
}

/// binary32 → IEEE binary16 bits, rounding to nearest with ties to even; overflow gives ±Inf, NaN stays a quiet NaN.
private func halfBits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    let sign = UInt16(truncatingIfNeeded: bits >> 16) & 0x8000
    let exponent = Int((bits >> 23) & 0xFF)
    let mantissa = bits & 0x7F_FFFF
    if exponent == 0xFF {
        return sign | 0x7C00 | (mantissa == 0 ? 0 : 0x0200 | UInt16(mantissa >> 13))
    }
    let halfExponent = exponent - 127 + 15
    if halfExponent >= 0x1F { return sign | 0x7C00 }
    if halfExponent <= 0 {
        // Subnormal result (or zero): shift the full significand down; values below 2^-25 round to zero.
        guard halfExponent >= -10 else { return sign }
        let significand = mantissa | 0x80_0000
        let shift = UInt32(14 - halfExponent)
        return sign | UInt16(roundShiftingRight(significand, by: shift))
    }
    // Rounding may carry into the exponent, which correctly yields the next power of two or Inf.
    return sign | UInt16(roundShiftingRight(UInt32(halfExponent) << 23 | mantissa, by: 13))
}

/// `value >> shift`, rounded to nearest with ties to even.
private func roundShiftingRight(_ value: UInt32, by shift: UInt32) -> UInt32 {
    let kept = value >> shift
    let rest = value & ((1 << shift) - 1)
    let half: UInt32 = 1 << (shift - 1)
    return rest > half || (rest == half && kept & 1 == 1) ? kept + 1 : kept
}

/// shape product × element size, or nil if it overflows `Int`.
private func byteCount(_ shape: [Int], _ dtype: SafeTensorDType) -> Int? {
    var total = dtype.byteSize
    for dimension in shape {
        let (product, overflow) = total.multipliedReportingOverflow(by: dimension)
        if overflow { return nil }
        total = product
    }
    return total
}

// MARK: - Reading and validation

/// Opens a regular file and reads its 8-byte header length and the header (at most `maxHeaderLength` bytes, and
/// never past the end of the file). Returns the open descriptor, the file size and the bytes read.
private func readHeader(_ path: String) throws -> (fd: Int32, size: Int, header: [UInt8]) {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw AtomicFile.systemError(errno, "cannot open the file", path: path) }
    var ok = false
    defer { if !ok { close(fd) } }
    var status = stat()
    guard fstat(fd, &status) == 0 else { throw AtomicFile.systemError(errno, "cannot stat the file", path: path) }
    guard (status.st_mode & S_IFMT) == S_IFREG else {
        throw MambaKitError(.io, "not a regular file", at: path)
    }
    let size = Int(status.st_size)
    var lengthBytes = [UInt8](repeating: 0, count: 8)
    let prefix = min(size, 8)
    try readFully(fd, &lengthBytes, count: prefix, offset: 0, path: path)
    var want = prefix
    if size >= 8 {
        let declared = (0..<8).reduce(UInt64(0)) { $0 | UInt64(lengthBytes[$1]) << (8 * UInt64($1)) }
        // The limit and the file's end are checked by parseLayout; read no more than either allows.
        want = 8 + Int(min(declared, UInt64(SafeTensorsFile.maxHeaderLength), UInt64(size - 8)))
    }
    var header = [UInt8](repeating: 0, count: want)
    try readFully(fd, &header, count: want, offset: 0, path: path)
    ok = true
    return (fd, size, header)
}

private func readFully(_ fd: Int32, _ buffer: inout [UInt8], count: Int, offset: Int, path: String) throws {
    var done = 0
    try buffer.withUnsafeMutableBytes { raw in
        guard let base = raw.baseAddress else { return }
        while done < count {
            let n = pread(fd, base + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw AtomicFile.systemError(errno, "cannot read the file", path: path)
            }
            if n == 0 { throw MambaKitError(.io, "the file ended early: it shrank after it was opened", at: path) }
            done += n
        }
    }
}

/// Applies every format rule to a whole file and returns its metadata and tensor table (sorted by begin).
private func parseLayout(_ bytes: [UInt8], fileSize: Int, path: String)
    throws -> (metadata: [String: String], tensors: [SafeTensorInfo], dataStart: Int)
{
    // Rule 1: the 8-byte header length must be present.
    guard fileSize >= 8, bytes.count >= 8 else {
        throw MambaKitError(.format, "file is \(fileSize) bytes, too short to hold the 8-byte header length",
                            at: path)
    }
    // Rule 2: bounded header length, compared as UInt64 before any conversion so huge values cannot trap.
    let declared = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[$1]) << (8 * UInt64($1)) }
    guard declared <= UInt64(SafeTensorsFile.maxHeaderLength) else {
        throw MambaKitError(
            .format, "header length \(declared) exceeds the \(SafeTensorsFile.maxHeaderLength)-byte limit",
            at: "\(path), byte 0")
    }
    let headerLength = Int(declared)
    let dataStart = 8 + headerLength
    // Rule 3: the header must fit in the file.
    guard dataStart <= fileSize, dataStart <= bytes.count else {
        throw MambaKitError(
            .format, "header length \(headerLength) runs past the end of the \(fileSize)-byte file",
            at: "\(path), byte 0")
    }
    // Rule 4: UTF-8, strict JSON, schema.
    if let bad = firstInvalidUTF8(bytes, 8..<dataStart) {
        throw MambaKitError(.format, "header is not valid UTF-8", at: "\(path), byte \(bad)")
    }
    var parser = StrictJSONParser(bytes: bytes, range: 8..<dataStart, path: path)
    let root = try parser.parseDocument()
    guard case .object(let members) = root.value else {
        throw MambaKitError(.format, "header must be a JSON object", at: "\(path), byte \(root.offset)")
    }
    var metadata: [String: String] = [:]
    var tensors: [SafeTensorInfo] = []
    for member in members {
        if member.key == "__metadata__" {
            metadata = try parseMetadata(member.node, path: path)
        } else {
            tensors.append(try parseEntry(member.key, member.node, path: path))
        }
    }
    // Rules 5-7, tensor by tensor in data order. The name breaks ties so the order never depends on the header's.
    tensors.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
    var expected = 0
    for info in tensors {
        let location = "\(path), tensor '\(info.name)'"
        guard info.end >= info.begin else {
            throw MambaKitError(.format, "data_offsets [\(info.begin), \(info.end)] end before they begin",
                                at: location)
        }
        guard info.begin == expected else {
            let message: String
            if expected == 0 {
                message = "the first tensor's data begins at offset \(info.begin), not 0"
            } else if info.begin > expected {
                message = "gap in the data: offsets begin at \(info.begin) but the previous tensor ends at \(expected)"
            } else {
                message = "overlapping data: offsets begin at \(info.begin) but the previous tensor ends at \(expected)"
            }
            throw MambaKitError(.format, message, at: location)
        }
        guard let size = byteCount(info.shape, info.dtype) else {
            throw MambaKitError(.format, "size of shape \(info.shape) × \(info.dtype.rawValue) overflows",
                                at: location)
        }
        guard info.end - info.begin == size else {
            throw MambaKitError(
                .format,
                "data_offsets span \(info.end - info.begin) bytes but shape \(info.shape) of \(info.dtype.rawValue) "
                    + "needs \(size)",
                at: location)
        }
        expected = info.end
    }
    // Rule 8: the data buffer ends exactly at the end of the file (subtraction avoids overflow on huge offsets).
    let available = fileSize - dataStart
    if expected < available {
        throw MambaKitError(.format, "\(available - expected) trailing bytes after the last tensor's data",
                            at: "\(path), byte \(dataStart + expected)")
    }
    if expected > available {
        throw MambaKitError(
            .format,
            "file is truncated: the tensor data needs \(expected) bytes but only \(available) follow the header",
            at: "\(path), byte \(fileSize)")
    }
    return (metadata, tensors, dataStart)
}

/// `__metadata__` must be an object whose values are all strings.
private func parseMetadata(_ node: JSONNode, path: String) throws -> [String: String] {
    guard case .object(let members) = node.value else {
        throw MambaKitError(.format, "__metadata__ must be an object of strings", at: "\(path), byte \(node.offset)")
    }
    var metadata: [String: String] = [:]
    for member in members {
        guard case .string(let value) = member.node.value else {
            throw MambaKitError(.format, "__metadata__ value for '\(member.key)' must be a string",
                                at: "\(path), byte \(member.node.offset)")
        }
        metadata[member.key] = value
    }
    return metadata
}

/// A tensor entry must be an object with exactly `dtype`, `shape` and `data_offsets`.
private func parseEntry(_ name: String, _ node: JSONNode, path: String) throws -> SafeTensorInfo {
    let location = "\(path), tensor '\(name)'"
    func fail(_ message: String) -> MambaKitError { MambaKitError(.format, message, at: location) }
    guard case .object(let members) = node.value else {
        throw fail("tensor entry must be an object with dtype, shape and data_offsets")
    }
    var dtype: SafeTensorDType?
    var shape: [Int]?
    var offsets: [Int]?
    for member in members {
        switch member.key {
        case "dtype":
            guard case .string(let text) = member.node.value else { throw fail("dtype must be a string") }
            guard let known = SafeTensorDType(rawValue: text) else { throw fail("unknown dtype '\(text)'") }
            dtype = known
        case "shape":
            shape = try integers(member.node, field: "shape", fail)
        case "data_offsets":
            let pair = try integers(member.node, field: "data_offsets", fail)
            guard pair.count == 2 else { throw fail("data_offsets must hold exactly 2 integers, not \(pair.count)") }
            offsets = pair
        default:
            throw fail("unexpected key '\(member.key)' in tensor entry (allowed: dtype, shape, data_offsets)")
        }
    }
    guard let dtype else { throw fail("tensor entry lacks 'dtype'") }
    guard let shape else { throw fail("tensor entry lacks 'shape'") }
    guard let offsets else { throw fail("tensor entry lacks 'data_offsets'") }
    return SafeTensorInfo(name: name, dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
}

/// An array of non-negative integers that fit in `Int` (fractions, exponents and signs are refused).
private func integers(_ node: JSONNode, field: String, _ fail: (String) -> MambaKitError) throws -> [Int] {
    guard case .array(let elements) = node.value else { throw fail("\(field) must be an array of integers") }
    return try elements.map { element in
        guard case .number(let text) = element.value else { throw fail("\(field) must be an array of integers") }
        guard text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
            throw fail("\(field) element \(text) is not a non-negative integer")
        }
        guard let value = Int(text) else { throw fail("\(field) element \(text) is too large") }
        return value
    }
}

/// Offset of the first byte in `range` that does not begin a well-formed UTF-8 sequence (no overlong forms, no
/// surrogates, nothing above U+10FFFF), or nil if the whole range is valid.
private func firstInvalidUTF8(_ bytes: [UInt8], _ range: Range<Int>) -> Int? {
    var i = range.lowerBound
    while i < range.upperBound {
        let lead = bytes[i]
        if lead < 0x80 {
            i += 1
            continue
        }
        let length: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF  // allowed range of the second byte
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; high = 0x9F
        case 0xF0: length = 4; low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; high = 0x8F
        default: return i
        }
        guard i + length <= range.upperBound, (low...high).contains(bytes[i + 1]) else { return i }
        for k in 2..<length where bytes[i + k] & 0xC0 != 0x80 { return i }
        i += length
    }
    return nil
}

// MARK: - Strict JSON

/// A parsed JSON value and the file offset where it starts. Objects keep their members in document order.
private struct JSONNode {
    enum Value {
        case object([(key: String, node: JSONNode)])
        case array([JSONNode])
        case string(String)
        case number(String)
        case bool(Bool)
        case null
    }

    let value: Value
    let offset: Int
}

/// RFC 8259 JSON, parsed strictly: duplicate object keys are an error (a lenient parser would silently keep one of
/// them, letting two readers disagree about a file), nesting is capped so hostile input cannot exhaust the stack,
/// and every error names the file byte offset where parsing stopped. Input must already be valid UTF-8.
///
/// Keys count as duplicates when Swift `String`s compare equal (Unicode canonical equivalence), since such names
/// could not be told apart by lookups anyway.
private struct StrictJSONParser {
    static let maxDepth = 64

    let bytes: [UInt8]
    let end: Int
    let path: String
    var position: Int

    init(bytes: [UInt8], range: Range<Int>, path: String) {
        self.bytes = bytes
        self.end = range.upperBound
        self.path = path
        self.position = range.lowerBound
    }

    mutating func parseDocument() throws -> JSONNode {
        skipWhitespace()
        let node = try parseValue(depth: 0)
        skipWhitespace()
        guard position == end else { throw error("unexpected \(describe(bytes[position])) after the JSON value") }
        return node
    }

    private func error(_ message: String, at offset: Int? = nil) -> MambaKitError {
        MambaKitError(.format, "header is not valid JSON: \(message)", at: "\(path), byte \(offset ?? position)")
    }

    private func describe(_ byte: UInt8) -> String {
        (0x21...0x7E).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
    }

    private mutating func skipWhitespace() {
        while position < end, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) { position += 1 }
    }

    private mutating func parseValue(depth: Int) throws -> JSONNode {
        guard position < end else { throw error("unexpected end of header, expected a value") }
        let start = position
        let value: JSONNode.Value
        switch bytes[position] {
        case UInt8(ascii: "{"): value = try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): value = try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): value = .string(try parseString())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): value = .number(try parseNumber())
        case UInt8(ascii: "t"): try expectLiteral("true"); value = .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); value = .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); value = .null
        default: throw error("unexpected \(describe(bytes[position])), expected a value")
        }
        return JSONNode(value: value, offset: start)
    }

    private mutating func parseObject(depth: Int) throws -> JSONNode.Value {
        guard depth <= Self.maxDepth else { throw error("nesting deeper than \(Self.maxDepth) levels") }
        position += 1
        var members: [(key: String, node: JSONNode)] = []
        var seen = Set<String>()
        skipWhitespace()
        if position < end, bytes[position] == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < end, bytes[position] == UInt8(ascii: "\"") else {
                throw error("expected a string key")
            }
            let keyOffset = position
            let key = try parseString()
            guard seen.insert(key).inserted else { throw error("duplicate key \"\(key)\"", at: keyOffset) }
            skipWhitespace()
            guard position < end, bytes[position] == UInt8(ascii: ":") else { throw error("expected ':' after a key") }
            position += 1
            skipWhitespace()
            members.append((key, try parseValue(depth: depth)))
            skipWhitespace()
            guard position < end else { throw error("unexpected end of header inside an object") }
            switch bytes[position] {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "}"): position += 1; return .object(members)
            default: throw error("expected ',' or '}' in an object, found \(describe(bytes[position]))")
            }
        }
    }

    private mutating func parseArray(depth: Int) throws -> JSONNode.Value {
        guard depth <= Self.maxDepth else { throw error("nesting deeper than \(Self.maxDepth) levels") }
        position += 1
        var elements: [JSONNode] = []
        skipWhitespace()
        if position < end, bytes[position] == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue(depth: depth))
            skipWhitespace()
            guard position < end else { throw error("unexpected end of header inside an array") }
            switch bytes[position] {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "]"): position += 1; return .array(elements)
            default: throw error("expected ',' or ']' in an array, found \(describe(bytes[position]))")
            }
        }
    }

    /// A string starting at the opening quote; escapes are decoded, including UTF-16 surrogate pairs.
    private mutating func parseString() throws -> String {
        let start = position
        position += 1
        var utf8: [UInt8] = []
        while true {
            guard position < end else { throw error("unterminated string", at: start) }
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "\""):
                position += 1
                return String(decoding: utf8, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try parseEscape(into: &utf8)
            case 0..<0x20:
                throw error("unescaped control character \(describe(byte)) in a string")
            default:
                utf8.append(byte)
                position += 1
            }
        }
    }

    private mutating func parseEscape(into utf8: inout [UInt8]) throws {
        let start = position
        position += 1
        guard position < end else { throw error("unterminated escape sequence", at: start) }
        let letter = bytes[position]
        position += 1
        switch letter {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(letter)
        case UInt8(ascii: "b"): utf8.append(0x08)
        case UInt8(ascii: "f"): utf8.append(0x0C)
        case UInt8(ascii: "n"): utf8.append(0x0A)
        case UInt8(ascii: "r"): utf8.append(0x0D)
        case UInt8(ascii: "t"): utf8.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = try parseHex4()
            if (0xD800...0xDBFF).contains(scalar) {
                guard position + 1 < end, bytes[position] == UInt8(ascii: "\\"),
                      bytes[position + 1] == UInt8(ascii: "u")
                else { throw error("high surrogate escape not followed by a low surrogate", at: start) }
                position += 2
                let low = try parseHex4()
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw error("high surrogate escape not followed by a low surrogate", at: start)
                }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if (0xDC00...0xDFFF).contains(scalar) {
                throw error("lone low surrogate escape", at: start)
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw error("invalid \\u escape", at: start) }
            UTF8.encode(unicode) { utf8.append($0) }
        default:
            throw error("invalid escape \\\(describe(letter))", at: start)
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard position + 4 <= end else { throw error("\\u escape needs 4 hex digits") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = Character(Unicode.Scalar(bytes[position])).hexDigitValue else {
                throw error("\\u escape needs 4 hex digits, found \(describe(bytes[position]))")
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// A number's text: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    private mutating func parseNumber() throws -> String {
        let start = position
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        guard position < end, isDigit(bytes[position]) else { throw error("expected a digit in a number") }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
        } else {
            skipDigits()
        }
        if position < end, bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard position < end, isDigit(bytes[position]) else { throw error("expected a digit after '.'") }
            skipDigits()
        }
        if position < end, bytes[position] | 0x20 == UInt8(ascii: "e") {
            position += 1
            if position < end, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
                position += 1
            }
            guard position < end, isDigit(bytes[position]) else { throw error("expected a digit in an exponent") }
            skipDigits()
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    private func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }

    private mutating func skipDigits() {
        while position < end, isDigit(bytes[position]) { position += 1 }
    }

    private mutating func expectLiteral(_ literal: String) throws {
        for expected in literal.utf8 {
            guard position < end, bytes[position] == expected else {
                throw error("invalid literal, expected \(literal)")
            }
            position += 1
        }
    }
}
