import Foundation
import MambaKit
import Testing

// MARK: - Finite-difference support

/// Owns the buffers a test hands to kernels as raw pointers. An optimised build may release an object right after its
/// last use — for `FloatBuffer(x).ptr` that is before the call reading through the pointer — so each scope keeps its
/// buffers in one `Buffers` held to the end (`defer { withExtendedLifetime(buf) {} }`).
final class Buffers {
    private var held: [FloatBuffer] = []
    func callAsFunction(_ values: [Float]) -> FloatBuffer {
        let b = FloatBuffer(values)
        held.append(b)
        return b
    }
    func callAsFunction(count: Int) -> FloatBuffer {
        let b = FloatBuffer(count: count)
        held.append(b)
        return b
    }
}

/// Σ w[r, c] · v[r·ld + c] over a `(rows, cols)` block of rows with stride `ld`, accumulated in Double: a random
/// linear functional of a layer's output, so that its gradient (the upstream `dout`) is the random matrix `w`.
func linearFunctional(_ v: UnsafePointer<Float>, ld: Int, rows: Int, cols: Int, _ w: [Float]) -> Double {
    precondition(w.count == rows * cols)
    var s = 0.0
    for r in 0..<rows { for c in 0..<cols { s += Double(w[r * cols + c]) * Double(v[r * ld + c]) } }
    return s
}

/// `w` `(rows, cols)` spread over rows of stride `ld`; the padding columns hold large values a correct kernel never
/// reads.
func stridedUpstream(_ w: [Float], rows: Int, cols: Int, ld: Int, in buf: Buffers) -> FloatBuffer {
    let out = buf(count: rows * ld)
    for i in 0..<(rows * ld) { out[i] = 1e3 }
    for r in 0..<rows { for c in 0..<cols { out[r * ld + c] = w[r * cols + c] } }
    return out
}

/// The indices of the `(rows, cols)` block inside rows of stride `ld`.
func blockIndices(rows: Int, cols: Int, ld: Int, offset: Int = 0) -> [Int] {
    (0..<rows).flatMap { r in (0..<cols).map { r * ld + offset + $0 } }
}

/// Up to `count` distinct indices of `candidates` drawn with a seeded generator, plus the one where |analytic| is
/// largest (so that every check compares at least one large gradient).
func sampleIndices(_ candidates: [Int], count: Int, analytic: [Float], seed: UInt64) -> [Int] {
    if candidates.count <= count { return candidates }
    var rng = RNG(seed: seed)
    var pool = candidates
    for i in 0..<count { pool.swapAt(i, i + rng.int(below: pool.count - i)) }
    var picked = Array(pool[0..<count])
    if let top = candidates.max(by: { abs(analytic[$0]) < abs(analytic[$1]) }), !picked.contains(top) {
        picked.append(top)
    }
    return picked
}

/// Central differences of `loss` with respect to `x[i]` for `i` in `indices`, compared with `analytic[i]`:
/// expects |fd − analytic| ≤ atol + rtol·|analytic|. `x` is restored afterwards. The step actually taken is
/// `Float(x + h) − Float(x − h)`, so rounding of the perturbed value does not bias the quotient.
func checkGradient(_ label: String, _ x: inout [Float], analytic: [Float], indices: [Int], h: Float,
                   atol: Double, rtol: Double, sourceLocation: SourceLocation = #_sourceLocation,
                   loss: ([Float]) -> Double) {
    precondition(x.count == analytic.count, "\(label): \(x.count) values vs \(analytic.count) gradients")
    var bad: [String] = []
    for i in indices {
        let x0 = x[i]
        let xp = x0 + h, xm = x0 - h
        x[i] = xp
        let lp = loss(x)
        x[i] = xm
        let lm = loss(x)
        x[i] = x0
        let fd = (lp - lm) / (Double(xp) - Double(xm))
        let an = Double(analytic[i])
        let err = abs(fd - an)
        if !(err <= atol + rtol * abs(an)), bad.count < 5 { bad.append("[\(i)] fd \(fd) vs analytic \(an)") }
    }
    #expect(bad.isEmpty, "\(label): \(bad.joined(separator: "; "))", sourceLocation: sourceLocation)
}

/// Expects |got − want| ≤ terms·u·magnitude elementwise (u = 2⁻²⁴): the worst-case rounding of a Float sum of
/// `terms` terms whose absolute values sum to `magnitude` (Higham's bound for recursive summation; a blocked or
/// pairwise order only lowers it).
func expectWithinRounding(_ label: String, _ got: [Float], _ want: [Float], magnitude: [Float], terms: Int,
                          sourceLocation: SourceLocation = #_sourceLocation) {
    let u = Double(Float.ulpOfOne) / 2
    var bad: [String] = []
    for i in 0..<got.count {
        let d = abs(Double(got[i]) - Double(want[i]))
        if !(d <= Double(terms) * u * Double(magnitude[i]) + 1e-30), bad.count < 3 {
            bad.append("[\(i)] \(got[i]) vs \(want[i]) (bound \(Double(terms) * u * Double(magnitude[i])))")
        }
    }
    #expect(bad.isEmpty, "\(label): \(bad.joined(separator: "; "))", sourceLocation: sourceLocation)
}

/// Largest |v|.
func largestMagnitude(_ v: [Float]) -> Float { v.reduce(0) { max($0, abs($1)) } }

/// `after − before`: what a backward that accumulates added.
func increment(_ after: [Float], _ before: [Float]) -> [Float] { zip(after, before).map { $0 - $1 } }

/// Expects the entries outside `inside` to be bit-identical to `before` (padding columns a kernel must not touch).
func expectUntouched(_ label: String, _ after: [Float], _ before: [Float], inside: [Int],
                     sourceLocation: SourceLocation = #_sourceLocation) {
    let keep = Set(inside)
    let changed = (0..<after.count).filter { !keep.contains($0) && after[$0].bitPattern != before[$0].bitPattern }
    #expect(changed.isEmpty, "\(label): padding entries \(changed.prefix(5)) were written",
            sourceLocation: sourceLocation)
}

// MARK: - Layers

/// Finite-difference checks of every layer backward, with a random upstream gradient (the loss is a random linear
/// functional of the output, summed in Double). Gradient buffers start non-zero, so each check also verifies that
/// backward accumulates; strided layouts carry sentinel padding that must be neither read nor written.
@Suite struct LayerGradientTests {
    @Test(arguments: [false, true])
    func linear(bias: Bool) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (M, I, O) = (7, 5, 6)
        let (ldi, ldo) = (I + 3, O + 2)  // column slices of wider matrices, as in_proj/x_proj use them
        var inp = randomFloats(M * ldi, seed: 1)
        var weight = randomFloats(O * I, seed: 2)
        var b = randomFloats(O, seed: 3)
        let w = randomFloats(M * O, seed: 4)
        func loss(_ inp: [Float], _ weight: [Float], _ b: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: M * ldo)
            let (xi, wt, bb) = (buf(inp), buf(weight), buf(b))
            Linear.forward(out: out.ptr, ldo: ldo, inp: xi.ptr, ldi: ldi, weight: wt.ptr, bias: bias ? bb.ptr : nil,
                           M: M, I: I, O: O)
            return linearFunctional(out.ptr, ld: ldo, rows: M, cols: O, w)
        }
        let dout = stridedUpstream(w, rows: M, cols: O, ld: ldo, in: buf)
        let (dinp0, dW0, db0) = (randomFloats(M * ldi, seed: 5), randomFloats(O * I, seed: 6), randomFloats(O, seed: 7))
        let (dinp, dW, db) = (buf(dinp0), buf(dW0), buf(db0))
        let (xi, wt) = (buf(inp), buf(weight))
        Linear.backward(dinp: dinp.ptr, lddi: ldi, dweight: dW.ptr, dbias: bias ? db.ptr : nil, dout: dout.ptr,
                        lddo: ldo, inp: xi.ptr, ldi: ldi, weight: wt.ptr, M: M, I: I, O: O)
        let valid = blockIndices(rows: M, cols: I, ld: ldi)
        expectUntouched("linear dinp", dinp.array, dinp0, inside: valid)
        if !bias { #expect(db.array == db0, "dbias written although nil was passed") }
        // Linear in every argument: the central difference is exact up to the Float rounding of the outputs
        // (~1e-7·Σ|w·out| / 2h); gradients are O(1). Measured ≤ 5e-5.
        checkGradient("linear dinp", &inp, analytic: increment(dinp.array, dinp0), indices: valid, h: 1e-2,
                      atol: 2e-4, rtol: 1e-4) { loss($0, weight, b) }
        checkGradient("linear dweight", &weight, analytic: increment(dW.array, dW0), indices: Array(0..<(O * I)),
                      h: 1e-2, atol: 2e-4, rtol: 1e-4) { loss(inp, $0, b) }
        if bias {
            checkGradient("linear dbias", &b, analytic: increment(db.array, db0), indices: Array(0..<O), h: 1e-2,
                          atol: 2e-4, rtol: 1e-4) { loss(inp, weight, $0) }
        }
    }

    @Test func embedding() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (V, D, M) = (10, 4, 12)
        var weight = randomFloats(V * D, seed: 11)
        let ids: [Int32] = [3, 1, 3, 7, 0, 9, 3, 1, 5, 5, 2, 7]  // repeats, and rows 4, 6, 8 unused
        precondition(ids.count == M)
        let w = randomFloats(M * D, seed: 12)
        func loss(_ weight: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: M * D)
            let wt = buf(weight)
            ids.withUnsafeBufferPointer {
                Embedding.forward(out: out.ptr, ids: $0.baseAddress!, weight: wt.ptr, M: M, D: D, V: V)
            }
            return linearFunctional(out.ptr, ld: D, rows: M, cols: D, w)
        }
        let dW0 = randomFloats(V * D, seed: 13)
        let dW = buf(dW0)
        let dout = buf(w)
        ids.withUnsafeBufferPointer {
            Embedding.backward(dweight: dW.ptr, dout: dout.ptr, ids: $0.baseAddress!, M: M, D: D)
        }
        let g = increment(dW.array, dW0)
        for row in [4, 6, 8] { #expect(g[(row * D)..<(row * D + D)].allSatisfy { $0 == 0 }, "unused row \(row)") }
        // A gather: the loss is exactly linear in the weights, so only the Double sum rounds (measured 2e-7).
        checkGradient("embedding dweight", &weight, analytic: g, indices: Array(0..<(V * D)), h: 1e-2,
                      atol: 1e-5, rtol: 1e-5) { loss($0) }
    }

    @Test func rmsNorm() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (M, D) = (5, 12)
        let eps: Float = 1e-5
        var inp = randomFloats(M * D, seed: 21)
        for j in 0..<D { inp[3 * D + j] *= 0.05 }  // one row of small norm: rstd large, eps visible
        var weight = randomFloats(D, seed: 22).map { 1 + 0.3 * $0 }
        let w = randomFloats(M * D, seed: 23)
        func loss(_ inp: [Float], _ weight: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: M * D)
            let (xi, wt) = (buf(inp), buf(weight))
            RMSNorm.forward(out: out.ptr, rstd: nil, inp: xi.ptr, weight: wt.ptr, M: M, D: D, eps: eps)
            return linearFunctional(out.ptr, ld: D, rows: M, cols: D, w)
        }
        let (xi, wt) = (buf(inp), buf(weight))
        let out = buf(count: M * D), rstd = buf(count: M)
        RMSNorm.forward(out: out.ptr, rstd: rstd.ptr, inp: xi.ptr, weight: wt.ptr, M: M, D: D, eps: eps)
        let (dx0, dW0) = (randomFloats(M * D, seed: 24), randomFloats(D, seed: 25))
        let (dx, dW) = (buf(dx0), buf(dW0))
        RMSNorm.backward(dinp: dx.ptr, dweight: dW.ptr, dout: buf(w).ptr, inp: xi.ptr, rstd: rstd.ptr,
                         weight: wt.ptr, M: M, D: D)
        // The small row (rms ≈ 0.05, rstd ≈ 20) has gradients up to ~40 and curvature ∝ rstd²: h = 1e-3 keeps the
        // truncation (h·rstd)²/6 below 1e-4 relative. Measured: 4e-4 absolute on gradients up to 44.
        checkGradient("rmsnorm dinp", &inp, analytic: increment(dx.array, dx0), indices: Array(0..<(M * D)), h: 1e-3,
                      atol: 2e-3, rtol: 1e-3) { loss($0, weight) }
        checkGradient("rmsnorm dweight", &weight, analytic: increment(dW.array, dW0), indices: Array(0..<D), h: 1e-2,
                      atol: 2e-4, rtol: 1e-4) { loss(inp, $0) }
    }

    @Test(arguments: [1, 2, 3, 4])
    func causalConv1d(K: Int) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (B, L, ED) = (2, 6, 5)
        let ldx = 2 * ED + 1  // x is the first half of in_proj's [x | z] rows, plus one more column
        var x = randomFloats(B * L * ldx, seed: 31)
        var weight = randomFloats(ED * K, seed: 32)
        var bias = randomFloats(ED, seed: 33)
        let w = randomFloats(B * L * ED, seed: 34)
        func loss(_ x: [Float], _ weight: [Float], _ bias: [Float], withBias: Bool) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: B * L * ED)
            let (xb, wt, bb) = (buf(x), buf(weight), buf(bias))
            CausalConv1d.forward(out: out.ptr, x: xb.ptr, ldx: ldx, weight: wt.ptr, bias: withBias ? bb.ptr : nil,
                                 context: nil, B: B, L: L, ED: ED, K: K)
            return linearFunctional(out.ptr, ld: ED, rows: B * L, cols: ED, w)
        }
        let valid = blockIndices(rows: B * L, cols: ED, ld: ldx)
        for withBias in [true, false] {
            let (dx0, dW0, db0) = (randomFloats(B * L * ldx, seed: 35), randomFloats(ED * K, seed: 36),
                                   randomFloats(ED, seed: 37))
            let (dx, dW, db) = (buf(dx0), buf(dW0), buf(db0))
            CausalConv1d.backward(dx: dx.ptr, lddx: ldx, dweight: dW.ptr, dbias: withBias ? db.ptr : nil,
                                  dout: buf(w).ptr, x: buf(x).ptr, ldx: ldx,
                                  weight: buf(weight).ptr, B: B, L: L, ED: ED, K: K)
            expectUntouched("conv K=\(K) dx", dx.array, dx0, inside: valid)
            if !withBias { #expect(db.array == db0, "conv dbias written although nil was passed") }
            // Bilinear in (x, weight): exact up to output rounding (measured ≤ 5e-5 on gradients up to ~8).
            checkGradient("conv K=\(K) bias=\(withBias) dx", &x, analytic: increment(dx.array, dx0), indices: valid,
                          h: 1e-2, atol: 2e-4, rtol: 1e-4) { loss($0, weight, bias, withBias: withBias) }
            checkGradient("conv K=\(K) bias=\(withBias) dweight", &weight, analytic: increment(dW.array, dW0),
                          indices: Array(0..<(ED * K)), h: 1e-2, atol: 2e-4, rtol: 1e-4) {
                loss(x, $0, bias, withBias: withBias)
            }
            if withBias {
                checkGradient("conv K=\(K) dbias", &bias, analytic: increment(db.array, db0), indices: Array(0..<ED),
                              h: 1e-2, atol: 2e-4, rtol: 1e-4) { loss(x, weight, $0, withBias: true) }
            }
        }
    }

    /// A window that continues a carried state: the conv reads K−1 inputs of context before the sequence; its
    /// backward adds their taps to dweight and, asked, the gradient into the context.
    @Test(arguments: [2, 4])
    func causalConv1dFromContext(K: Int) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (B, L, ED) = (2, 5, 19)   // ED not a multiple of 16; L > K − 1
        let ldx = ED + 3
        var x = randomFloats(B * L * ldx, seed: 41)
        var weight = randomFloats(ED * K, seed: 42)
        let bias = randomFloats(ED, seed: 43)
        var context = randomFloats(B * (K - 1) * ED, seed: 44)
        let w = randomFloats(B * L * ED, seed: 45)
        for silu in [false, true] {
            func loss(_ x: [Float], _ weight: [Float], _ context: [Float]) -> Double {
                let buf = Buffers()
                defer { withExtendedLifetime(buf) {} }
                let out = buf(count: B * L * ED), act = buf(count: B * L * ED)
                CausalConv1d.forward(out: out.ptr, x: buf(x).ptr, ldx: ldx, weight: buf(weight).ptr, bias: buf(bias).ptr,
                                     context: buf(context).ptr, B: B, L: L, ED: ED, K: K, silu: silu ? act.ptr : nil)
                return linearFunctional(silu ? act.ptr : out.ptr, ld: ED, rows: B * L, cols: ED, w)
            }
            let pre = buf(count: B * L * ED), act = buf(count: B * L * ED)
            CausalConv1d.forward(out: pre.ptr, x: buf(x).ptr, ldx: ldx, weight: buf(weight).ptr, bias: buf(bias).ptr,
                                 context: buf(context).ptr, B: B, L: L, ED: ED, K: K, silu: act.ptr)
            let (dx0, dW0, dc0) = (randomFloats(B * L * ldx, seed: 46), randomFloats(ED * K, seed: 47),
                                   randomFloats(context.count, seed: 48))
            let (dx, dW, dc) = (buf(dx0), buf(dW0), buf(dc0))
            CausalConv1d.backward(dx: dx.ptr, lddx: ldx, dweight: dW.ptr, dbias: nil, dout: buf(w).ptr, x: buf(x).ptr,
                                  ldx: ldx, weight: buf(weight).ptr, B: B, L: L, ED: ED, K: K,
                                  siluPre: silu ? UnsafePointer(pre.ptr) : nil, context: buf(context).ptr,
                                  dcontext: dc.ptr)
            let tag = "conv from context K=\(K) silu=\(silu)"
            // Bilinear without SiLU (exact up to rounding); with SiLU smooth, h = 1e-2 truncation ~1e-5 relative.
            checkGradient("\(tag) dx", &x, analytic: increment(dx.array, dx0), indices: blockIndices(rows: B * L, cols: ED, ld: ldx),
                          h: 1e-2, atol: 2e-4, rtol: 1e-3) { loss($0, weight, context) }
            checkGradient("\(tag) dweight", &weight, analytic: increment(dW.array, dW0), indices: Array(0..<(ED * K)),
                          h: 1e-2, atol: 2e-4, rtol: 1e-3) { loss(x, $0, context) }
            checkGradient("\(tag) dcontext", &context, analytic: increment(dc.array, dc0), indices: Array(context.indices),
                          h: 1e-2, atol: 2e-4, rtol: 1e-3) { loss(x, weight, $0) }
            #expect(largestMagnitude(increment(dc.array, dc0)) > 0)
        }
    }

    @Test func silu() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let n = 37  // two full SIMD vectors and a tail of 5
        var x = randomFloats(n, seed: 41, scale: 4)
        x[0] = 0; x[1] = -30; x[2] = 30
        let w = randomFloats(n, seed: 42)
        func loss(_ x: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: n)
            Activations.siluForward(out: out.ptr, inp: buf(x).ptr, count: n)
            return linearFunctional(out.ptr, ld: n, rows: 1, cols: n, w)
        }
        let d0 = randomFloats(n, seed: 43)
        let d = buf(d0)
        Activations.siluBackward(dinp: d.ptr, dout: buf(w).ptr, inp: buf(x).ptr, count: n)
        let g = increment(d.array, d0)
        // Elementwise: one output moves per perturbation; rounding ≈ 1e-7·|x|/2h ≈ 1e-5, truncation h²·f‴/6 ≈ 2e-6.
        checkGradient("silu", &x, analytic: g, indices: Array(0..<n), h: 1e-2, atol: 1e-4, rtol: 1e-4) { loss($0) }
        // Against the scalar derivative over several parallel ranges (count > 4096, with a tail).
        let m = 9000
        let xs = (0..<m).map { Float($0 - m / 2) * 0.005 }
        let ones = [Float](repeating: 1, count: m)
        let dm = buf(count: m)
        Activations.siluBackward(dinp: dm.ptr, dout: buf(ones).ptr, inp: buf(xs).ptr, count: m)
        // The vector derivative uses the polynomial exp (≈2 ulp): a few ulp of |SiLU′| ≤ 1.1.
        expectClose("siluBackward vs siluGrad", dm.array, xs.map { siluGrad($0) }, atol: 1e-6, rtol: 1e-6)
    }

    @Test func softplus() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let n = 45
        // Typical Δ pre-activations (dt bias ≈ softplus⁻¹(1e-3 … 1e-1) ≈ −7 … −2) up to the linear region above 20;
        // no point within h of the threshold, where PyTorch's softplus has a 2e-9 jump.
        var pre = (0..<n).map { Float(-7 + 28 * Double($0) / Double(n - 1)) }
        for i in 0..<n where abs(pre[i] - 20) < 0.1 { pre[i] = 20.5 }
        let w = randomFloats(n, seed: 51)
        func loss(_ pre: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let v = buf(pre)
            Activations.softplusInPlace(v.ptr, count: n)
            return linearFunctional(v.ptr, ld: n, rows: 1, cols: n, w)
        }
        let delta = buf(pre)
        Activations.softplusInPlace(delta.ptr, count: n)
        let d0 = randomFloats(n, seed: 52)
        let d = buf(d0)
        Activations.softplusBackward(dpre: d.ptr, ddelta: buf(w).ptr, delta: delta.ptr, count: n)
        // Elementwise; in the linear region the outputs are ~25, so rounding ≈ 25·6e-8/2h ≈ 8e-5 with h = 1e-2.
        checkGradient("softplus", &pre, analytic: increment(d.array, d0), indices: Array(0..<n), h: 1e-2,
                      atol: 2e-4, rtol: 1e-3) { loss($0) }
        // Far below the init band the derivative sigmoid(pre) ≈ Δ is tiny; recovering it as 1 − e^(−Δ) loses relative
        // accuracy but must stay within a rounding of 1 in absolute terms (≤ 2⁻²³·|ddelta|).
        let deep = (0..<32).map { Float(-20 + 12 * Double($0) / 31) }
        let dd = buf(deep)
        Activations.softplusInPlace(dd.ptr, count: deep.count)
        let gd = buf(count: deep.count)
        Activations.softplusBackward(dpre: gd.ptr, ddelta: buf([Float](repeating: 1, count: deep.count)).ptr,
                                     delta: dd.ptr, count: deep.count)
        for i in 0..<deep.count {
            let exact = 1 / (1 + Foundation.exp(-Double(deep[i])))
            #expect(abs(Double(gd[i]) - exact) <= Double(Float.ulpOfOne),
                    "softplus′(\(deep[i])) = \(gd[i]) vs \(exact)")
        }
    }

    @Test func gate() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (M, C) = (5, 20)  // C: one full vector and a tail of 4
        let ldz = 2 * C + 3, lddz = 2 * C + 5
        var y = randomFloats(M * C, seed: 61)
        var z = randomFloats(M * ldz, seed: 62, scale: 3)
        let w = randomFloats(M * C, seed: 63)
        func loss(_ y: [Float], _ z: [Float]) -> Double {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            let out = buf(count: M * C)
            Activations.gateForward(out: out.ptr, y: buf(y).ptr, z: buf(z).ptr, ldz: ldz, M: M, C: C)
            return linearFunctional(out.ptr, ld: C, rows: M, cols: C, w)
        }
        let (dy0, dz0) = (randomFloats(M * C, seed: 64), randomFloats(M * lddz, seed: 65))
        let (dy, dz) = (buf(dy0), buf(dz0))
        Activations.gateBackward(dy: dy.ptr, dz: dz.ptr, lddz: lddz, dout: buf(w).ptr, y: buf(y).ptr,
                                 z: buf(z).ptr, ldz: ldz, M: M, C: C)
        expectUntouched("gate dz", dz.array, dz0, inside: blockIndices(rows: M, cols: C, ld: lddz))
        // dz is scattered with stride lddz, z read with stride ldz: map dz's rows onto z's layout.
        let gdz = increment(dz.array, dz0)
        var gz = [Float](repeating: 0, count: M * ldz)
        for m in 0..<M { for c in 0..<C { gz[m * ldz + c] = gdz[m * lddz + c] } }
        // Elementwise; rounding ≈ 1e-7·|out|/2h plus truncation h²·f‴/6: measured ≤ 5e-5.
        checkGradient("gate dy", &y, analytic: increment(dy.array, dy0), indices: Array(0..<(M * C)), h: 1e-2,
                      atol: 2e-4, rtol: 1e-4) { loss($0, z) }
        checkGradient("gate dz", &z, analytic: gz, indices: blockIndices(rows: M, cols: C, ld: ldz), h: 1e-2,
                      atol: 2e-4, rtol: 1e-4) { loss(y, $0) }
    }

    @Test func crossEntropy() {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (M, V) = (6, 7)
        var logits = randomFloats(M * V, seed: 71, scale: 2)
        let targets: [Int32] = [3, CrossEntropy.ignoreIndex, 0, 6, CrossEntropy.ignoreIndex, 2]
        let scale: Float = 0.37
        func run(_ logits: [Float], dlogits: FloatBuffer?) -> (sum: Double, count: Int) {
            let buf = Buffers()
            defer { withExtendedLifetime(buf) {} }
            return targets.withUnsafeBufferPointer {
                CrossEntropy.forwardBackward(logits: buf(logits).ptr, targets: $0.baseAddress!, M: M, V: V,
                                             dlogits: dlogits?.ptr, scale: scale)
            }
        }
        let dl = buf(randomFloats(M * V, seed: 72))  // overwritten, not accumulated
        let (sum, count) = run(logits, dlogits: dl)
        #expect(count == 4)
        // The NLL from its definition, in Double.
        var want = 0.0
        for m in 0..<M where targets[m] != CrossEntropy.ignoreIndex {
            let row = (0..<V).map { Double(logits[m * V + $0]) }
            want += log(row.map { exp($0) }.reduce(0, +)) - row[Int(targets[m])]
        }
        #expect(abs(sum - want) < 1e-9 * max(1, abs(want)), "NLL \(sum) vs \(want)")
        for m in [1, 4] { #expect((0..<V).allSatisfy { dl[m * V + $0] == 0 }, "ignored row \(m) has a gradient") }
        // Smooth, logits O(2): rounding of the Double sum is negligible, truncation h²·f‴ ≈ 1e-6.
        checkGradient("cross-entropy dlogits", &logits, analytic: dl.array, indices: Array(0..<(M * V)), h: 1e-2,
                      atol: 1e-5, rtol: 1e-4) { Double(scale) * run($0, dlogits: nil).sum }
        // In place (the model writes dlogits over its logits): the same loss and gradient.
        let inPlace = buf(logits)
        let (sum2, count2) = targets.withUnsafeBufferPointer {
            CrossEntropy.forwardBackward(logits: inPlace.ptr, targets: $0.baseAddress!, M: M, V: V,
                                         dlogits: inPlace.ptr, scale: scale)
        }
        #expect(sum2 == sum && count2 == count)
        #expect(inPlace.array == dl.array, "in-place gradient differs")
    }

    // MARK: Reference vs fast

    struct MatVecShape: Sendable, CustomTestStringConvertible {
        let B, I, O, padI, padO: Int
        var testDescription: String { "B\(B) I\(I) O\(O) pad\(padI),\(padO)" }
    }

    /// The step's matrix × few vectors: full and part 16-lane chunks (I = 3, 33, 256), full and part row quads
    /// (O = 1, 6, 1027), strided rows, and calls big enough to be split over threads (I·B·O ≈ 1.1 M); for B = 1
    /// (rows one at a time) 64-float steps with 16-float ones and a tail after them (I = 100, 1100).
    @Test(arguments: [MatVecShape(B: 1, I: 3, O: 1, padI: 0, padO: 0), MatVecShape(B: 1, I: 256, O: 6, padI: 0, padO: 0),
                      MatVecShape(B: 3, I: 33, O: 17, padI: 5, padO: 2), MatVecShape(B: 5, I: 16, O: 8, padI: 16, padO: 3),
                      MatVecShape(B: 3, I: 300, O: 1027, padI: 1, padO: 1), MatVecShape(B: 1, I: 100, O: 7, padI: 0, padO: 0),
                      MatVecShape(B: 1, I: 1100, O: 1030, padI: 0, padO: 0)])
    func matVecAgainstReference(shape: MatVecShape) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (B, I, O) = (shape.B, shape.I, shape.O)
        let (ldx, ldo) = (I + shape.padI, O + shape.padO)
        let x = buf(randomFloats(B * ldx, seed: 91)), weight = buf(randomFloats(O * I, seed: 92))
        let bias = buf(randomFloats(O, seed: 93))
        let absX = buf(x.array.map(abs)), absW = buf(weight.array.map(abs)), absB = buf(bias.array.map(abs))
        for withBias in [false, true] {
            let fast = buf(randomFloats(B * ldo, seed: 94)), ref = buf(fast.array)
            MatVec.forward(out: fast.ptr, ldo: ldo, x: x.ptr, ldx: ldx, weight: weight.ptr,
                           bias: withBias ? bias.ptr : nil, B: B, I: I, O: O)
            MatVec.reference(out: ref.ptr, ldo: ldo, x: x.ptr, ldx: ldx, weight: weight.ptr,
                             bias: withBias ? bias.ptr : nil, B: B, I: I, O: O)
            let mag = buf(count: B * ldo)
            MatVec.reference(out: mag.ptr, ldo: ldo, x: absX.ptr, ldx: ldx, weight: absW.ptr,
                             bias: withBias ? absB.ptr : nil, B: B, I: I, O: O)
            let outIdx = blockIndices(rows: B, cols: O, ld: ldo)
            expectWithinRounding("\(shape) bias=\(withBias)", outIdx.map { fast[$0] }, outIdx.map { ref[$0] },
                                 magnitude: outIdx.map { mag[$0] }, terms: I + 1)
            expectUntouched("\(shape) padding", fast.array, ref.array, inside: outIdx)
        }
    }

    /// The bfloat16 projection computes Σ bf16(W)·x in Float32: the reference on the decoded weights, to rounding.
    /// (`BFloat16.bits`' rounding itself is pinned by `SafeTensorsTests.bfloat16Conversion`.)
    @Test(arguments: [MatVecShape(B: 1, I: 3, O: 1, padI: 0, padO: 0), MatVecShape(B: 1, I: 256, O: 6, padI: 0, padO: 0),
                      MatVecShape(B: 3, I: 33, O: 17, padI: 5, padO: 2), MatVecShape(B: 2, I: 64, O: 9, padI: 0, padO: 1),
                      MatVecShape(B: 1, I: 100, O: 5, padI: 0, padO: 0), MatVecShape(B: 1, I: 160, O: 3, padI: 2, padO: 0)])
    func matVecBF16AgainstReference(shape: MatVecShape) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (B, I, O) = (shape.B, shape.I, shape.O)
        let (ldx, ldo) = (I + shape.padI, O + shape.padO)
        let x = buf(randomFloats(B * ldx, seed: 95)), weight = buf(randomFloats(O * I, seed: 96))
        let bias = buf(randomFloats(O, seed: 97))
        let half = BF16Matrix(weight.ptr, rows: O, cols: I)
        let decoded = buf(half.decoded())
        // Rounding moved the weights, by at most half a bfloat16 ulp (≤ 2⁻⁸ relative).
        #expect(zip(decoded.array, weight.array).allSatisfy { abs($0 - $1) <= abs($1) / 256 })
        #expect(zip(decoded.array, weight.array).contains { $0 != $1 })
        let absX = buf(x.array.map(abs)), absW = buf(decoded.array.map(abs)), absB = buf(bias.array.map(abs))
        let fast = buf(randomFloats(B * ldo, seed: 98)), ref = buf(fast.array), mag = buf(count: B * ldo)
        MatVec.forwardBF16(out: fast.ptr, ldo: ldo, x: x.ptr, ldx: ldx, weight: half, bias: bias.ptr, B: B)
        MatVec.reference(out: ref.ptr, ldo: ldo, x: x.ptr, ldx: ldx, weight: decoded.ptr, bias: bias.ptr, B: B, I: I, O: O)
        MatVec.reference(out: mag.ptr, ldo: ldo, x: absX.ptr, ldx: ldx, weight: absW.ptr, bias: absB.ptr, B: B, I: I, O: O)
        let outIdx = blockIndices(rows: B, cols: O, ld: ldo)
        expectWithinRounding("\(shape) bf16", outIdx.map { fast[$0] }, outIdx.map { ref[$0] },
                             magnitude: outIdx.map { mag[$0] }, terms: I + 1)
        expectUntouched("\(shape) bf16 padding", fast.array, ref.array, inside: outIdx)
    }

    struct LinearShape: Sendable, CustomTestStringConvertible {
        let M, I, O, padI, padO: Int
        var testDescription: String { "M\(M) I\(I) O\(O) pad\(padI),\(padO)" }
    }

    @Test(arguments: [LinearShape(M: 1, I: 3, O: 5, padI: 0, padO: 0), LinearShape(M: 1, I: 33, O: 17, padI: 5, padO: 2),
                      LinearShape(M: 37, I: 16, O: 64, padI: 0, padO: 0),
                      LinearShape(M: 50, I: 33, O: 17, padI: 7, padO: 3),
                      LinearShape(M: 128, I: 64, O: 40, padI: 24, padO: 64)])
    func linearAgainstReference(shape: LinearShape) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let (M, I, O) = (shape.M, shape.I, shape.O)
        let (ldi, ldo) = (I + shape.padI, O + shape.padO)
        let inp = buf(randomFloats(M * ldi, seed: 81)), weight = buf(randomFloats(O * I, seed: 82))
        let bias = buf(randomFloats(O, seed: 83))
        let dout = buf(randomFloats(M * ldo, seed: 84))
        let absIn = buf(inp.array.map(abs)), absW = buf(weight.array.map(abs))
        let absB = buf(bias.array.map(abs)), absDout = buf(dout.array.map(abs))
        for withBias in [false, true] {
            let fast = buf(randomFloats(M * ldo, seed: 85)), ref = buf(fast.array)
            Linear.forward(out: fast.ptr, ldo: ldo, inp: inp.ptr, ldi: ldi, weight: weight.ptr,
                           bias: withBias ? bias.ptr : nil, M: M, I: I, O: O)
            Linear.forwardReference(out: ref.ptr, ldo: ldo, inp: inp.ptr, ldi: ldi, weight: weight.ptr,
                                    bias: withBias ? bias.ptr : nil, M: M, I: I, O: O)
            // Σ|x·w| + |b| per output: the magnitude the rounding bound scales with.
            let mag = buf(count: M * ldo)
            Linear.forwardReference(out: mag.ptr, ldo: ldo, inp: absIn.ptr, ldi: ldi, weight: absW.ptr,
                                    bias: withBias ? absB.ptr : nil, M: M, I: I, O: O)
            let outIdx = blockIndices(rows: M, cols: O, ld: ldo)
            expectWithinRounding("\(shape) bias=\(withBias) forward", outIdx.map { fast[$0] },
                                 outIdx.map { ref[$0] }, magnitude: outIdx.map { mag[$0] }, terms: I + 1)
            expectUntouched("\(shape) forward padding", fast.array, ref.array, inside: outIdx)

            let (dx1, dW1, db1) = (buf(randomFloats(M * ldi, seed: 86)), buf(randomFloats(O * I, seed: 87)),
                                   buf(randomFloats(O, seed: 88)))
            let (dx2, dW2, db2) = (buf(dx1.array), buf(dW1.array), buf(db1.array))
            Linear.backward(dinp: dx1.ptr, lddi: ldi, dweight: dW1.ptr, dbias: withBias ? db1.ptr : nil,
                            dout: dout.ptr, lddo: ldo, inp: inp.ptr, ldi: ldi, weight: weight.ptr, M: M, I: I, O: O)
            Linear.backwardReference(dinp: dx2.ptr, lddi: ldi, dweight: dW2.ptr, dbias: withBias ? db2.ptr : nil,
                                     dout: dout.ptr, lddo: ldo, inp: inp.ptr, ldi: ldi, weight: weight.ptr,
                                     M: M, I: I, O: O)
            // Magnitudes: the reference backward on absolute values, plus the |initial value| accumulated onto.
            let (mx, mW, mb) = (buf(randomFloats(M * ldi, seed: 86).map(abs)),
                                buf(randomFloats(O * I, seed: 87).map(abs)), buf(randomFloats(O, seed: 88).map(abs)))
            Linear.backwardReference(dinp: mx.ptr, lddi: ldi, dweight: mW.ptr, dbias: mb.ptr, dout: absDout.ptr,
                                     lddo: ldo, inp: absIn.ptr, ldi: ldi, weight: absW.ptr, M: M, I: I, O: O)
            let inIdx = blockIndices(rows: M, cols: I, ld: ldi)
            expectWithinRounding("\(shape) dinp", inIdx.map { dx1[$0] }, inIdx.map { dx2[$0] },
                                 magnitude: inIdx.map { mx[$0] }, terms: O + 2)
            expectUntouched("\(shape) dinp padding", dx1.array, dx2.array, inside: inIdx)
            expectWithinRounding("\(shape) dweight", dW1.array, dW2.array, magnitude: mW.array, terms: M + 2)
            expectWithinRounding("\(shape) dbias", db1.array, db2.array, magnitude: mb.array, terms: M + 2)
        }
    }

    @Test(arguments: [1, 2, 3, 4])
    func causalConv1dAgainstReference(K: Int) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let ED = 21
        let ldx = 2 * ED
        for (B, L) in [(1, 1), (2, 2), (3, 9), (2, 40)] {
            let x = buf(randomFloats(B * L * ldx, seed: 91))
            let weight = buf(randomFloats(ED * K, seed: 92)), bias = buf(randomFloats(ED, seed: 93))
            let context = buf(randomFloats(B * max(K - 1, 1) * ED, seed: 94))
            for withContext in [false, true] {
                for withBias in [false, true] {
                    let fast = buf(count: B * L * ED), ref = buf(count: B * L * ED)
                    let ctx: UnsafePointer<Float>? = withContext ? UnsafePointer(context.ptr) : nil
                    CausalConv1d.forward(out: fast.ptr, x: x.ptr, ldx: ldx, weight: weight.ptr,
                                         bias: withBias ? bias.ptr : nil, context: ctx, B: B, L: L, ED: ED, K: K)
                    CausalConv1d.forwardReference(out: ref.ptr, x: x.ptr, ldx: ldx, weight: weight.ptr,
                                                  bias: withBias ? bias.ptr : nil, context: ctx,
                                                  B: B, L: L, ED: ED, K: K)
                    // K + 1 Float terms of magnitude ≲ 3 (N(0,1) products): a few ulp of ~10.
                    expectClose("conv K=\(K) B=\(B) L=\(L) ctx=\(withContext) bias=\(withBias)", fast.array, ref.array,
                                atol: 4e-6, rtol: 1e-6)
                }
            }
            // Chunked: with the context `nextContext` builds from the first s steps, forward on the rest reproduces
            // the whole sequence's outputs.
            if K > 1, L >= 2 {
                let s = L / 2
                let whole = buf(count: B * L * ED)
                CausalConv1d.forward(out: whole.ptr, x: x.ptr, ldx: ldx, weight: weight.ptr, bias: bias.ptr,
                                     context: nil, B: B, L: L, ED: ED, K: K)
                let zero = buf(count: B * (K - 1) * ED)
                let ctx = buf(count: B * (K - 1) * ED)
                // the first chunk: x[:, 0..<s]
                let x1 = buf(count: B * s * ldx), x2 = buf(count: B * (L - s) * ldx)
                for b in 0..<B {
                    (x1.ptr + b * s * ldx).update(from: x.ptr + b * L * ldx, count: s * ldx)
                    (x2.ptr + b * (L - s) * ldx).update(from: x.ptr + (b * L + s) * ldx, count: (L - s) * ldx)
                }
                CausalConv1d.nextContext(into: ctx.ptr, x: x1.ptr, ldx: ldx, context: zero.ptr,
                                         B: B, L: s, ED: ED, K: K)
                let out2 = buf(count: B * (L - s) * ED)
                CausalConv1d.forward(out: out2.ptr, x: x2.ptr, ldx: ldx, weight: weight.ptr, bias: bias.ptr,
                                     context: ctx.ptr, B: B, L: L - s, ED: ED, K: K)
                var want: [Float] = []
                for b in 0..<B { want += Array(whole.array[((b * L + s) * ED)..<((b * L + L) * ED)]) }
                // The same Float operations in the same order: bit-identical.
                #expect(out2.array == want, "conv K=\(K) B=\(B) L=\(L): context continuation differs")
            }
        }
    }

    // MARK: Vector math

    @Test func expSIMDAgainstLibm() {
        // A dense grid over [−100, 10]: 2²⁰ + points, 16 lanes at a time, against exp in Double.
        let n = 1 << 20
        var worstRel = 0.0
        var worstAt: Float = 0
        var nonZeroBelow = 0
        var i = 0
        while i < n {
            var v = F16x()
            for l in 0..<16 { v[l] = Float(-100 + 110 * Double(i + l) / Double(n - 1)) }
            let e = expSIMD(v)
            for l in 0..<16 {
                let x = v[l]
                if x < -87.4 {
                    if e[l] != 0 { nonZeroBelow += 1 }
                    continue
                }
                let want = Foundation.exp(Double(x))
                if want < Double(Float.leastNormalMagnitude) {
                    // Results in the subnormal range (x ∈ [−87.4, −87.34]) or flushed to 0: absolute error only.
                    #expect(abs(Double(e[l]) - want) <= Double(Float.leastNormalMagnitude), "exp(\(x)) = \(e[l])")
                    continue
                }
                let rel = abs(Double(e[l]) - want) / want
                if rel > worstRel { worstRel = rel; worstAt = x }
            }
            i += 16
        }
        #expect(nonZeroBelow == 0, "\(nonZeroBelow) inputs below −87.4 gave a non-zero exp")
        // The doc promises ~2 ulp (2⁻²³ ≈ 1.19e-7 relative each); measured 0.7 ulp against the Double exp.
        #expect(worstRel <= 2 * Double(Float.ulpOfOne), "worst relative error \(worstRel) at \(worstAt)")
        // Against Foundation's Float exp as well, at the same points.
        var worstF: Float = 0
        var j = 0
        while j < n {
            var v = F16x()
            for l in 0..<16 { v[l] = Float(-87 + 97 * Double(j + l) / Double(n - 1)) }
            let e = expSIMD(v)
            for l in 0..<16 {
                let want = Foundation.exp(v[l])
                worstF = max(worstF, abs(e[l] - want) / want)
            }
            j += 64
        }
        // Measured 1 ulp (both round).
        #expect(worstF <= 2 * Float.ulpOfOne, "vs Foundation exp(Float): \(worstF)")
    }

    @Test func siluSIMDAgainstScalar() {
        let n = 1 << 18
        var (worst, worstAt, worstSig, worstSigAt): (Float, Float, Float, Float) = (0, 0, 0, 0)
        var i = 0
        while i < n {
            var v = F16x()
            for l in 0..<16 { v[l] = Float(-80 + 160 * Double(i + l) / Double(n - 1)) }
            let s = siluSIMD(v), g = sigmoidSIMD(v)
            for l in 0..<16 {
                let x = v[l]
                let want = MambaKit.silu(x), wantSig = MambaKit.sigmoid(x)
                let e = abs(s[l] - want) / max(abs(want), Float.leastNormalMagnitude)
                if e > worst { (worst, worstAt) = (e, x) }
                let es = abs(g[l] - wantSig) / max(wantSig, Float.leastNormalMagnitude)
                if es > worstSig { (worstSig, worstSigAt) = (es, x) }
            }
            i += 16
        }
        // A few ulp: exp (≈1 ulp), the add and the division, against libm's own rounding; measured 2 ulp.
        #expect(worst <= 4 * Float.ulpOfOne, "siluSIMD worst relative error \(worst) at \(worstAt)")
        #expect(worstSig <= 4 * Float.ulpOfOne, "sigmoidSIMD worst relative error \(worstSig) at \(worstSigAt)")
    }
}
