/// bfloat16: the top 16 bits of a binary32 (8 exponent bits, 7 fraction bits). Checkpoints store it (SafeTensors
/// BF16) and generation can read its projection weights in it (`BF16Matrix`).
public enum BFloat16 {
    /// binary32 → bfloat16 bits, rounding to nearest with ties to even (as PyTorch does); NaN stays a quiet NaN.
    @inline(__always)
    public static func bits(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if x.isNaN { return UInt16(b >> 16) | 0x0040 }
        return UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }

    /// bfloat16 bits → binary32, exactly.
    @inline(__always)
    public static func float(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }
}
