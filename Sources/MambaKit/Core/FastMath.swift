/// Vector math for the kernels.
///
/// `expSIMD` is a Cody–Waite range reduction (x = k·ln2 + r, |r| ≤ ln2/2) with a degree-6 polynomial for e^r
/// (the classic single-precision minimax coefficients), then scaling by 2^k through the exponent bits. Relative error
/// is within ~2 ulp over the whole range; inputs below −87.3 give exactly 0 (the selective scan feeds it δ·A ≤ 0,
/// where underflow to 0 is the right answer). Foundation's scalar `exp` costs ~5× more per element.
public typealias F16x = SIMD16<Float>

@inline(__always)
public func expSIMD(_ x: F16x) -> F16x {
    let lo: Float = -87.33654
    let hi: Float = 88.37626
    // Outside [lo, hi] the exponent bits would wrap: underflow is exactly 0, overflow +inf.
    return expSIMDInRange(x).replacing(with: 0, where: x .< lo).replacing(with: .infinity, where: x .> hi)
}

/// e^x for lanes already known to lie in [−87.3, 88.3] (no range masks, which Swift lowers lane by lane).
@inline(__always)
public func expSIMDInRange(_ x: F16x) -> F16x {
    // k = round(x·log2 e) by the 1.5·2^23 trick: adding it rounds to nearest-even in the FPU and leaves k in the
    // low mantissa bits, so both the float k and the integer k come without (slow, per-lane) conversions.
    let magic: Float = 12_582_912
    let t = x * 1.442695040888963 + magic
    let k = t - magic
    var r = x - k * 0.693359375
    r = r - k * (-2.12194440e-4)
    var p = F16x(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1
    let ki = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
    let scale = unsafeBitCast((ki &+ 127) &<< 23, to: F16x.self)
    return p * scale
}

/// Natural log of 16 positive lanes (the classic single-precision scheme: x = m·2^e with m in [√½, √2), a degree-8
/// polynomial in m − 1, and e·ln 2 added in two parts); within a few ulp for positive normal inputs. Zero,
/// subnormals, infinities and NaN are not handled: the only caller (softplus) passes values in [1, 2].
@inline(__always)
public func logSIMD(_ x: F16x) -> F16x {
    // x = (1 + m)·2^e with 1 + m in [√½, √2): offsetting the bits by those of √½ before splitting them puts the
    // mantissa in that range directly (integer operations only; lane masks would run lane by lane).
    let ix = unsafeBitCast(x, to: SIMD16<Int32>.self) &- 0x3F35_04F3
    let e = ix &>> 23
    let m = unsafeBitCast((ix & 0x007F_FFFF) &+ 0x3F35_04F3, to: F16x.self) - 1
    // float(e) without a per-lane conversion: the 1.5·2^23 trick in reverse.
    let ef = unsafeBitCast(e &+ 0x4B40_0000, to: F16x.self) - 12_582_912
    let z = m * m
    var p = F16x(repeating: 7.0376836292e-2)
    p = p * m - 1.1514610310e-1
    p = p * m + 1.1676998740e-1
    p = p * m - 1.2420140846e-1
    p = p * m + 1.4249322787e-1
    p = p * m - 1.6668057665e-1
    p = p * m + 2.0000714765e-1
    p = p * m - 2.4999993993e-1
    p = p * m + 3.3333331174e-1
    var y = m * z * p
    y = y + ef * -2.12194440e-4
    y = y - 0.5 * z
    return m + y + ef * 0.693359375
}

/// softplus of 16 lanes, max(x, 0) + log1p(e^−|x|), with log1p(t) = log(u) + (t − (u − 1))/u for u = 1 + t (the
/// correction restores what rounding 1 + t lost, so small t keep full relative precision). PyTorch's threshold
/// (x > 20 → x) needs no mask: there e^−x < 2.1e-9 is below half an ulp of x, so the sum rounds to x exactly.
/// Written with integer bit operations instead of lane masks or pointwise min/max (which Swift lowers lane by lane):
/// |x| clears the sign bit, max(x, 0) = (x + |x|)/2 exactly, and e^−|x| is taken at min(|x|, 87) (an integer min on
/// the bits of non-negative floats), so for x < −87 the result is e^−87 ≈ 1.6e-38 instead of e^x (error < 2e-38).
@inline(__always)
public func softplusSIMD(_ x: F16x) -> F16x {
    let absBits = unsafeBitCast(x, to: SIMD16<Int32>.self) & 0x7FFF_FFFF
    let cap: Int32 = 0x42AE_0000  // 87.0
    let diff = absBits &- cap
    let capped = unsafeBitCast(cap &+ (diff & (diff &>> 31)), to: F16x.self)
    let t = expSIMDInRange(-capped)
    let u = 1 + t
    let relu = (x + unsafeBitCast(absBits, to: F16x.self)) * 0.5
    return relu + (logSIMD(u) + (t - (u - 1)) / u)
}

/// e^x − 1 of 16 lanes, accurate for small |x| (where e^x − 1 would cancel): a degree-8 Taylor polynomial for
/// |x| < 0.5 (truncation below 2^−24 relative), `expSIMD(x) − 1` elsewhere.
@inline(__always)
public func expm1SIMD(_ x: F16x) -> F16x {
    var p = F16x(repeating: 1.0 / 40320)
    p = p * x + 1.0 / 5040
    p = p * x + 1.0 / 720
    p = p * x + 1.0 / 120
    p = p * x + 1.0 / 24
    p = p * x + 1.0 / 6
    p = p * x + 0.5
    p = p * x + 1
    let small = p * x
    let ax = x.replacing(with: -x, where: x .< 0)
    return (expSIMD(x) - 1).replacing(with: small, where: ax .< 0.5)
}

/// SiLU of 16 lanes: x·sigmoid(x) = x / (1 + e^−x).
@inline(__always)
public func siluSIMD(_ x: F16x) -> F16x { x / (1 + expSIMD(-x)) }

/// sigmoid of 16 lanes.
@inline(__always)
public func sigmoidSIMD(_ x: F16x) -> F16x { 1 / (1 + expSIMD(-x)) }

/// Loads `n` ≤ 16 floats into the low lanes (the rest zero); `n == 16` is one unaligned vector load.
@inline(__always)
public func loadF16x(_ p: UnsafePointer<Float>, _ n: Int) -> F16x {
    if n == 16 { return UnsafeRawPointer(p).loadUnaligned(as: F16x.self) }
    var v = F16x()
    for i in 0..<n { v[i] = p[i] }
    return v
}

/// Stores the low `n` ≤ 16 lanes.
@inline(__always)
public func storeF16x(_ v: F16x, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    if n == 16 { UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16x.self); return }
    for i in 0..<n { p[i] = v[i] }
}

/// Scalar helpers with PyTorch's exact conventions.
@inline(__always)
public func softplus(_ x: Float) -> Float {
    // torch.nn.functional.softplus(beta=1, threshold=20): linear above the threshold.
    x > 20 ? x : log1pf(expf(x))
}

@inline(__always)
public func sigmoid(_ x: Float) -> Float {
    if x >= 0 { return 1 / (1 + expf(-x)) }
    let e = expf(x)
    return e / (1 + e)
}

@inline(__always)
public func silu(_ x: Float) -> Float { x * sigmoid(x) }

/// d/dx silu(x) = s(1 + x(1 − s)), s = sigmoid(x).
@inline(__always)
public func siluGrad(_ x: Float) -> Float {
    let s = sigmoid(x)
    return s * (1 + x * (1 - s))
}

#if canImport(Glibc)
import Glibc
#else
import Foundation
#endif
