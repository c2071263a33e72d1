/// Parameters, gradients and AdamW moments live in arenas with one layout: one buffer each, and named views whose
/// names are the HF checkpoint keys. AdamW is then one loop over the buffer, `zeroGradients()` one memset, and saving
/// a checkpoint "write every named view". Each view says whether AdamW decays it: the block that owns a tensor decides
/// (mamba_ssm and HF exclude norms, biases, A_log, D and Mamba-2's dt_bias), never a guess from its name.
public struct TensorView: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    /// Whether AdamW's decoupled weight decay applies to this tensor.
    public let decay: Bool
    public var count: Int { shape.reduce(1, *) }
}

/// The ordered list of named views over one flat buffer.
public struct ArenaLayout: Sendable, Equatable {
    public private(set) var views: [TensorView] = []
    public private(set) var total: Int = 0
    private var index: [String: Int] = [:]

    public init() {}

    /// Appends a view; offsets are rounded up to 16 floats so every view starts 64-byte aligned.
    @discardableResult
    public mutating func add(_ name: String, _ shape: [Int], decay: Bool) -> TensorView {
        precondition(index[name] == nil, "duplicate parameter \(name)")
        let start = (total + 15) / 16 * 16
        let v = TensorView(name: name, shape: shape, offset: start, decay: decay)
        index[name] = views.count
        views.append(v)
        total = start + v.count
        return v
    }

    public func view(_ name: String) -> TensorView? { index[name].map { views[$0] } }
    public func contains(_ name: String) -> Bool { index[name] != nil }
}

/// One flat buffer laid out by an `ArenaLayout`.
public final class Arena {
    public let layout: ArenaLayout
    public let buffer: FloatBuffer

    public init(layout: ArenaLayout) {
        self.layout = layout
        buffer = FloatBuffer(count: layout.total)
    }

    public var base: UnsafeMutablePointer<Float> { buffer.ptr }

    public func ptr(_ name: String) -> UnsafeMutablePointer<Float> {
        guard let v = layout.view(name) else { preconditionFailure("no parameter named \(name)") }
        return buffer.ptr + v.offset
    }

    public func ptr(_ v: TensorView) -> UnsafeMutablePointer<Float> { buffer.ptr + v.offset }

    public func values(_ name: String) -> [Float] {
        let v = layout.view(name)!
        return Array(UnsafeBufferPointer(start: ptr(v), count: v.count))
    }

    public func set(_ name: String, _ values: [Float]) {
        let v = layout.view(name)!
        precondition(values.count == v.count, "\(name): \(values.count) values for \(v.count)")
        values.withUnsafeBufferPointer { ptr(v).update(from: $0.baseAddress!, count: v.count) }
    }

    public func zero() { buffer.zero() }

    /// Initialisers: every element of `v` from N(0, std), from U(−bound, bound), or `x` (draws in element order).
    public func fillNormal(_ v: TensorView, std: Double, rng: inout RNG) {
        let p = ptr(v)
        for i in 0..<v.count { p[i] = Float(rng.normal() * std) }
    }

    public func fillUniform(_ v: TensorView, bound: Double, rng: inout RNG) {
        let p = ptr(v)
        for i in 0..<v.count { p[i] = Float(rng.uniform(-bound, bound)) }
    }

    public func fill(_ v: TensorView, _ x: Float) { ptr(v).update(repeating: x, count: v.count) }

    public func copy(from other: Arena) {
        precondition(other.layout == layout)
        buffer.ptr.update(from: other.buffer.ptr, count: layout.total)
    }
}
