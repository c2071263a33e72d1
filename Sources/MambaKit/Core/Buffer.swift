/// An owned, zero-initialised, 64-byte aligned block of `Float`s.
///
/// The numerical core works on raw pointers (llm.c style) so that kernels see plain memory; `FloatBuffer` only owns
/// it. Not copy-on-write: a buffer is a workspace, shared by reference.
public final class FloatBuffer {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>

    public init(count: Int) {
        precondition(count >= 0, "negative buffer size")
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        ptr = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        ptr.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { ptr.update(from: base, count: values.count) }
        }
    }

    deinit { UnsafeMutableRawPointer(ptr).deallocate() }

    public func zero() { ptr.update(repeating: 0, count: count) }

    public var array: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }

    public subscript(i: Int) -> Float {
        get { ptr[i] }
        set { ptr[i] = newValue }
    }
}

/// A reusable scratch area that grows on demand and keeps its pages between calls (hot loops that need a large
/// temporary every step would otherwise pay the kernel's page zeroing each time). Not thread-safe: one owner.
public final class Scratch {
    private var buffer: FloatBuffer?

    public init() {}

    /// At least `count` floats; contents are unspecified.
    public func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        if let b = buffer, b.count >= count { return b.ptr }
        let b = FloatBuffer(count: count)
        buffer = b
        return b.ptr
    }
}
