/// Elementwise pieces of the Mamba mixer: SiLU after the conv, softplus for Δ, and the output gate `y ⊙ SiLU(z)`.
///
/// All loops run 16 lanes at a time with the polynomial `expSIMD` (the scalar `silu`, `softplus` in FastMath are
/// the reference). Rows may be strided so `z` is read in place from in_proj's `[x | z]` output.
public enum Activations {
    /// Calls `body(i, n)` for consecutive runs of `n ≤ 16` elements covering `0..<count`, threaded over blocks of
    /// 4096 elements.
    @inline(__always)
    static func forEachVector(_ count: Int, _ body: (_ i: Int, _ n: Int) -> Void) {
        Parallel.forRanges((count + 4095) / 4096) { _, lo, hi in
            var i = lo * 4096
            let end = min(count, hi * 4096)
            while i < end {
                let n = min(16, end - i)
                body(i, n)
                i += n
            }
        }
    }

    /// out `(M, C)` = SiLU(inp `(M, C)`), both contiguous.
    public static func siluForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, count: Int) {
        forEachVector(count) { i, n in storeF16x(siluSIMD(loadF16x(inp + i, n)), out + i, n) }
    }

    /// dinp += dout ⊙ SiLU′(inp).
    public static func siluBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                    inp: UnsafePointer<Float>, count: Int) {
        forEachVector(count) { i, n in
            let x = loadF16x(inp + i, n)
            let s = sigmoidSIMD(x)
            let g = loadF16x(dout + i, n) * s * (1 + x * (1 - s))
            storeF16x(loadF16x(dinp + i, n) + g, dinp + i, n)
        }
    }

    /// In place: x ← softplus(x), with PyTorch's threshold 20 (linear above it).
    public static func softplusInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        forEachVector(count) { i, n in storeF16x(softplusSIMD(loadF16x(x + i, n)), x + i, n) }
    }

    /// dpre += ddelta ⊙ sigmoid(pre), using sigmoid(pre) = −expm1(−softplus(pre)) from the saved Δ itself
    /// (expm1, not 1 − e^−Δ, so a tiny Δ keeps its relative precision). Above the threshold PyTorch's gradient is
    /// exactly 1; −expm1(−Δ) rounds to 1 there as well.
    public static func softplusBackward(dpre: UnsafeMutablePointer<Float>, ddelta: UnsafePointer<Float>,
                                        delta: UnsafePointer<Float>, count: Int) {
        forEachVector(count) { i, n in
            let s = -expm1SIMD(-loadF16x(delta + i, n))
            storeF16x(loadF16x(dpre + i, n) + loadF16x(ddelta + i, n) * s, dpre + i, n)
        }
    }

    /// out `(M, C)` = y `(M, C)` ⊙ SiLU(z) with z rows of stride `ldz`.
    public static func gateForward(out: UnsafeMutablePointer<Float>, y: UnsafePointer<Float>,
                                   z: UnsafePointer<Float>, ldz: Int, M: Int, C: Int) {
        Parallel.forRanges(M) { _, lo, hi in
            for m in lo..<hi {
                var c = 0
                while c < C {
                    let n = min(16, C - c)
                    let v = loadF16x(y + m * C + c, n) * siluSIMD(loadF16x(z + m * ldz + c, n))
                    storeF16x(v, out + m * C + c, n)
                    c += n
                }
            }
        }
    }

    /// dy += dout ⊙ SiLU(z); dz += dout ⊙ y ⊙ SiLU′(z) (dz rows of stride `lddz`).
    public static func gateBackward(dy: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>, lddz: Int,
                                    dout: UnsafePointer<Float>, y: UnsafePointer<Float>,
                                    z: UnsafePointer<Float>, ldz: Int, M: Int, C: Int) {
        Parallel.forRanges(M) { _, lo, hi in
            for m in lo..<hi {
                var c = 0
                while c < C {
                    let n = min(16, C - c)
                    let zv = loadF16x(z + m * ldz + c, n)
                    let s = sigmoidSIMD(zv)
                    let g = loadF16x(dout + m * C + c, n)
                    let yv = loadF16x(y + m * C + c, n)
                    storeF16x(loadF16x(dy + m * C + c, n) + g * zv * s, dy + m * C + c, n)
                    let dzv = g * yv * s * (1 + zv * (1 - s))
                    storeF16x(loadF16x(dz + m * lddz + c, n) + dzv, dz + m * lddz + c, n)
                    c += n
                }
            }
        }
    }
}
