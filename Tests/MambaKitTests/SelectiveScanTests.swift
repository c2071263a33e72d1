import Foundation
import MambaKit
import Testing

/// Inputs of one selective scan, laid out as the model lays them out: B and C are columns of x_proj's
/// `[dt_low (R) | B (N) | C (N)]` rows (stride R + 2N), Δ = softplus(·) > 0, At = −exp(·) < 0.
struct ScanCase: Sendable, CustomTestStringConvertible {
    let B: Int, L: Int, ED: Int, N: Int
    var R = 2
    var withH0 = true
    var seed: UInt64 = 1

    var testDescription: String { "B\(B) L\(L) ED\(ED) N\(N)\(withH0 ? " h0" : "")" }
    var dims: ScanDims { ScanDims(B: B, L: L, ED: ED, N: N, ldbc: R + 2 * N) }
    var ldbc: Int { R + 2 * N }

    struct Inputs {
        var u, delta, At, xdbl, D, h0: [Float]
    }

    func inputs() -> Inputs {
        var rng = RNG(seed: seed)
        func normals(_ n: Int, _ s: Double = 1) -> [Float] { (0..<n).map { _ in Float(rng.normal() * s) } }
        let u = normals(B * L * ED)
        let delta = normals(B * L * ED).map { softplus($0 - 1) }                // ≈ 0.02 … 3
        let At = (0..<(N * ED)).map { _ in -Float(Foundation.exp(rng.uniform(-2.5, 1.5))) }  // −0.08 … −4.5
        let xdbl = normals(B * L * ldbc)
        let D = normals(ED)
        let h0 = withH0 ? normals(B * N * ED, 0.5) : [Float](repeating: 0, count: B * N * ED)
        return Inputs(u: u, delta: delta, At: At, xdbl: xdbl, D: D, h0: h0)
    }

    /// Where B and C sit in `xdbl`.
    var bcIndices: [Int] { blockIndices(rows: B * L, cols: 2 * N, ld: ldbc, offset: R) }
}

/// Runs a scan on `Inputs` with pointers, the fast or the reference forward.
func runScan(_ c: ScanCase, _ x: ScanCase.Inputs, simd: Bool,
             checkpoints: FloatBuffer? = nil) -> (y: [Float], h: [Float]) {
    let buf = Buffers()
    defer { withExtendedLifetime(buf) {} }
    let (u, dl, At, xd, D, h0) = (buf(x.u), buf(x.delta), buf(x.At), buf(x.xdbl), buf(x.D), buf(x.h0))
    let y = buf(count: c.B * c.L * c.ED), h = buf(count: c.B * c.N * c.ED)
    let h0p: UnsafePointer<Float>? = c.withH0 ? UnsafePointer(h0.ptr) : nil
    if simd {
        SelectiveScanSIMD.forward(y: y.ptr, hOut: h.ptr, u: u.ptr, delta: dl.ptr, At: At.ptr, Bm: xd.ptr + c.R,
                                  Cm: xd.ptr + c.R + c.N, D: D.ptr, h0: h0p, checkpoints: checkpoints?.ptr,
                                  dims: c.dims)
    } else {
        SelectiveScan.forwardReference(y: y.ptr, hOut: h.ptr, u: u.ptr, delta: dl.ptr, At: At.ptr, Bm: xd.ptr + c.R,
                                       Cm: xd.ptr + c.R + c.N, D: D.ptr, h0: h0p, dims: c.dims)
    }
    return (y.array, h.array)
}

/// Gradients of one backward (what it added to random initial values).
struct ScanGrads {
    var du, ddelta, dAt, dxdbl, dD: [Float]
    /// The SIMD backward's gradient into h0 (empty for the reference).
    var dh0: [Float] = []
}

func scanBackward(_ c: ScanCase, _ x: ScanCase.Inputs, dy: [Float], simd: Bool) -> ScanGrads {
    let buf = Buffers()
    defer { withExtendedLifetime(buf) {} }
    let (u, dl, At, xd, D, h0) = (buf(x.u), buf(x.delta), buf(x.At), buf(x.xdbl), buf(x.D), buf(x.h0))
    let s = c.dims
    // Non-zero starting values: backward accumulates. The dt_low columns of dxdbl are the caller's.
    let start = ScanGrads(du: randomFloats(s.B * s.L * s.ED, seed: 901),
                          ddelta: randomFloats(s.B * s.L * s.ED, seed: 902),
                          dAt: randomFloats(s.N * s.ED, seed: 903),
                          dxdbl: randomFloats(s.B * s.L * c.ldbc, seed: 904),
                          dD: randomFloats(s.ED, seed: 905))
    let (du, ddl, dAt, dxd, dD) = (buf(start.du), buf(start.ddelta), buf(start.dAt), buf(start.dxdbl),
                                   buf(start.dD))
    let g = buf(dy)
    let dh0Start = randomFloats(s.B * s.N * s.ED, seed: 906)
    let dh0 = buf(dh0Start)
    if simd {
        let chk = buf(count: SelectiveScanSIMD.checkpointCount(dims: s))
        SelectiveScanSIMD.forward(y: buf(count: s.B * s.L * s.ED).ptr, hOut: nil, u: u.ptr, delta: dl.ptr, At: At.ptr,
                                  Bm: xd.ptr + c.R, Cm: xd.ptr + c.R + c.N, D: D.ptr,
                                  h0: c.withH0 ? UnsafePointer(h0.ptr) : nil, checkpoints: chk.ptr, dims: s)
        SelectiveScanSIMD.backward(du: du.ptr, ddelta: ddl.ptr, dAt: dAt.ptr, dBm: dxd.ptr + c.R,
                                   dCm: dxd.ptr + c.R + c.N, dD: dD.ptr, dy: g.ptr, u: u.ptr, delta: dl.ptr,
                                   At: At.ptr, Bm: xd.ptr + c.R, Cm: xd.ptr + c.R + c.N, D: D.ptr,
                                   checkpoints: chk.ptr, dims: s, dh0: dh0.ptr)
    } else {
        SelectiveScan.backwardReference(du: du.ptr, ddelta: ddl.ptr, dAt: dAt.ptr, dBm: dxd.ptr + c.R,
                                        dCm: dxd.ptr + c.R + c.N, dD: dD.ptr, dy: g.ptr, u: u.ptr, delta: dl.ptr,
                                        At: At.ptr, Bm: xd.ptr + c.R, Cm: xd.ptr + c.R + c.N, D: D.ptr,
                                        h0: c.withH0 ? UnsafePointer(h0.ptr) : nil, dims: s)
    }
    let dxdbl = dxd.array
    expectUntouched("\(c) \(simd ? "simd" : "reference") dt_low columns of dxdbl", dxdbl, start.dxdbl,
                    inside: c.bcIndices)
    var grads = ScanGrads(du: increment(du.array, start.du), ddelta: increment(ddl.array, start.ddelta),
                     dAt: increment(dAt.array, start.dAt), dxdbl: increment(dxdbl, start.dxdbl),
                     dD: increment(dD.array, start.dD))
    if simd { grads.dh0 = increment(dh0.array, dh0Start) }
    return grads
}

/// The selective scan: finite differences of both backwards (reference and SIMD) with respect to every input, and the
/// SIMD kernel against the reference, forward (y and final state) and backward.
@Suite struct SelectiveScanTests {
    /// Finite differences of Σ w·y with respect to u, Δ, At, B, C and D; `sample` caps the checked entries per tensor.
    func finiteDifferences(_ c: ScanCase, simd: Bool, sample: Int) {
        let x = c.inputs()
        var (u, delta, At, xdbl, D) = (x.u, x.delta, x.At, x.xdbl, x.D)
        let w = randomFloats(c.B * c.L * c.ED, seed: c.seed &+ 77)
        let g = scanBackward(c, x, dy: w, simd: simd)
        func loss(_ x: ScanCase.Inputs) -> Double {
            let y = runScan(c, x, simd: simd).y
            return y.withUnsafeBufferPointer {
                linearFunctional($0.baseAddress!, ld: c.ED, rows: c.B * c.L, cols: c.ED, w)
            }
        }
        let tag = "\(simd ? "simd" : "reference") \(c)"
        let all = { (n: Int) in Array(0..<n) }
        // The scan is smooth in every input; with h = 1e-2 on O(1) inputs the truncation h²·f‴/6 is ~1e-5 of the
        // gradient, and the Float rounding of y (a perturbation moves up to L·ED outputs, ~1e-7 relative each) adds
        // ~1e-5 of the largest gradient at these sizes. Measured: ≤ 1.2e-4 of the tensor's largest gradient (dAt,
        // whose step is smaller, see below), ≤ 3e-5 for the others. Tolerance: 2e-4 of the largest plus 1e-3 relative.
        func tol(_ gr: [Float]) -> Double { 2e-4 * Double(largestMagnitude(gr)) }
        let nBL = c.B * c.L * c.ED
        checkGradient("\(tag) du", &u, analytic: g.du,
                      indices: sampleIndices(all(nBL), count: sample, analytic: g.du, seed: 1), h: 1e-2,
                      atol: tol(g.du), rtol: 1e-3) { u in var y = x; y.u = u; return loss(y) }
        // Δ ≥ 0.02: a smaller step keeps it positive and inside the region where exp(Δ·A) is smooth on the scale h.
        checkGradient("\(tag) ddelta", &delta, analytic: g.ddelta,
                      indices: sampleIndices(all(nBL), count: sample, analytic: g.ddelta, seed: 2), h: 3e-3,
                      atol: tol(g.ddelta), rtol: 1e-3) { d in var y = x; y.delta = d; return loss(y) }
        // y depends on A through exp(A·ΣΔ) with ΣΔ ≈ 0.6·t: the truncation error of the central difference grows
        // with L (7e-3 relative already at L = 9 with h = 1e-2, checked against a Double-precision difference), so
        // the step is 3e-3 and shrinks as 0.1/L; below ~1e-3 the Float rounding of y takes over.
        checkGradient("\(tag) dAt", &At, analytic: g.dAt,
                      indices: sampleIndices(all(c.N * c.ED), count: sample, analytic: g.dAt, seed: 3),
                      h: min(3e-3, 0.1 / Float(c.L)),
                      atol: tol(g.dAt), rtol: 1e-3) { a in var y = x; y.At = a; return loss(y) }
        checkGradient("\(tag) dB,dC", &xdbl, analytic: g.dxdbl,
                      indices: sampleIndices(c.bcIndices, count: 2 * sample, analytic: g.dxdbl, seed: 4), h: 1e-2,
                      atol: tol(g.dxdbl), rtol: 1e-3) { b in var y = x; y.xdbl = b; return loss(y) }
        checkGradient("\(tag) dD", &D, analytic: g.dD, indices: all(c.ED), h: 1e-2,
                      atol: tol(g.dD), rtol: 1e-3) { d in var y = x; y.D = d; return loss(y) }
        // The gradient into the initial state (training from a carried state): y is linear in h0.
        if simd && c.withH0 {
            var h0 = x.h0
            checkGradient("\(tag) dh0", &h0, analytic: g.dh0,
                          indices: sampleIndices(all(c.B * c.N * c.ED), count: sample, analytic: g.dh0, seed: 5), h: 1e-2,
                          atol: tol(g.dh0), rtol: 1e-3) { h in var y = x; y.h0 = h; return loss(y) }
            #expect(largestMagnitude(g.dh0) > 0, "\(tag) dh0 is all zero")
        }
        for (name, grad) in [("du", g.du), ("ddelta", g.ddelta), ("dAt", g.dAt), ("dxdbl", g.dxdbl), ("dD", g.dD)] {
            #expect(largestMagnitude(grad) > 0, "\(tag) \(name) is all zero")
        }
    }

    @Test(arguments: [ScanCase(B: 2, L: 5, ED: 3, N: 4), ScanCase(B: 1, L: 7, ED: 5, N: 2, withH0: false, seed: 2)])
    func referenceBackwardFiniteDifferences(c: ScanCase) {
        finiteDifferences(c, simd: false, sample: 1000)
    }

    // L > chunk and not a multiple of it (37, 70, 33, 150), ED not a multiple of 16 (20, 36, 7), N = 3 … 16; the
    // last case is large enough for the kernel to split its three channel blocks over two threads.
    @Test(arguments: [ScanCase(B: 2, L: 37, ED: 20, N: 3), ScanCase(B: 1, L: 70, ED: 36, N: 16, withH0: false, seed: 3),
                      ScanCase(B: 3, L: 33, ED: 16, N: 5, R: 1, seed: 4), ScanCase(B: 1, L: 9, ED: 7, N: 8, seed: 5),
                      ScanCase(B: 2, L: 150, ED: 36, N: 16, seed: 6)])
    func simdBackwardFiniteDifferences(c: ScanCase) {
        finiteDifferences(c, simd: true, sample: c.L > 100 ? 30 : 60)
    }

    static let shapes = [ScanCase(B: 1, L: 1, ED: 1, N: 1), ScanCase(B: 2, L: 31, ED: 16, N: 4, withH0: false),
                         ScanCase(B: 2, L: 32, ED: 20, N: 3), ScanCase(B: 3, L: 65, ED: 36, N: 16, seed: 7),
                         ScanCase(B: 1, L: 100, ED: 50, N: 7, withH0: false, seed: 8),
                         ScanCase(B: 2, L: 200, ED: 64, N: 16, seed: 9),
                         ScanCase(B: 2, L: 170, ED: 36, N: 16, seed: 10)]

    @Test(arguments: shapes)
    func simdForwardMatchesReference(c: ScanCase) {
        let buf = Buffers()
        defer { withExtendedLifetime(buf) {} }
        let x = c.inputs()
        let ref = runScan(c, x, simd: false)
        let chk = buf(count: SelectiveScanSIMD.checkpointCount(dims: c.dims))
        let fast = runScan(c, x, simd: true, checkpoints: chk)
        // y: the polynomial exp (≈2 ulp) and Float accumulation of N + 1 terms, against Double accumulation;
        // errors carried along the recurrence decay with exp(Δ·A). Relative to the largest |y| (and |h|); measured
        // ≤ 1.2e-7 of it.
        let (ys, hs) = (largestMagnitude(ref.y), largestMagnitude(ref.h))
        expectClose("\(c) y", fast.y, ref.y, atol: 2e-6 * ys, rtol: 1e-5)
        expectClose("\(c) hOut", fast.h, ref.h, atol: 2e-6 * hs, rtol: 1e-5)
        // Without checkpoints: the same bits.
        let plain = runScan(c, x, simd: true)
        #expect(plain.y == fast.y && plain.h == fast.h, "\(c): checkpointing changed the forward")
        // hOut may alias h0 (the model advances its recurrent state in place).
        if c.withH0 {
            let (u, dl, At, xd, D) = (buf(x.u), buf(x.delta), buf(x.At), buf(x.xdbl), buf(x.D))
            let h = buf(x.h0), y = buf(count: c.B * c.L * c.ED)
            SelectiveScanSIMD.forward(y: y.ptr, hOut: h.ptr, u: u.ptr, delta: dl.ptr, At: At.ptr, Bm: xd.ptr + c.R,
                                      Cm: xd.ptr + c.R + c.N, D: D.ptr, h0: h.ptr, checkpoints: nil, dims: c.dims)
            #expect(y.array == fast.y && h.array == fast.h, "\(c): hOut aliasing h0 changed the result")
        }
    }

    @Test func chunkedScanCarriesTheState() {
        // Two halves with the state carried in between equal one scan over the whole (per sequence, so u etc. of
        // each half are sliced per batch row).
        let c = ScanCase(B: 2, L: 50, ED: 20, N: 6, seed: 11)
        let x = c.inputs()
        let whole = runScan(c, x, simd: true)
        let s = 19
        func slice(_ a: [Float], _ width: Int, _ t0: Int, _ t1: Int) -> [Float] {
            (0..<c.B).flatMap { b in a[((b * c.L + t0) * width)..<((b * c.L + t1) * width)] }
        }
        let c1 = ScanCase(B: c.B, L: s, ED: c.ED, N: c.N, R: c.R, withH0: true, seed: c.seed)
        let c2 = ScanCase(B: c.B, L: c.L - s, ED: c.ED, N: c.N, R: c.R, withH0: true, seed: c.seed)
        let part = { (t0: Int, t1: Int, h0: [Float]) in
            ScanCase.Inputs(u: slice(x.u, c.ED, t0, t1), delta: slice(x.delta, c.ED, t0, t1), At: x.At,
                            xdbl: slice(x.xdbl, c.ldbc, t0, t1), D: x.D, h0: h0)
        }
        let first = runScan(c1, part(0, s, x.h0), simd: true)
        let second = runScan(c2, part(s, c.L, first.h), simd: true)
        // The same Float operations in the same order: bit-identical.
        var y = [Float]()
        for b in 0..<c.B {
            y += first.y[(b * s * c.ED)..<((b + 1) * s * c.ED)]
            y += second.y[(b * (c.L - s) * c.ED)..<((b + 1) * (c.L - s) * c.ED)]
        }
        #expect(y == whole.y && second.h == whole.h, "chunked scan differs from the whole")
    }

    @Test(arguments: shapes)
    func simdBackwardMatchesReference(c: ScanCase) {
        let x = c.inputs()
        let dy = randomFloats(c.B * c.L * c.ED, seed: c.seed &+ 5)
        let ref = scanBackward(c, x, dy: dy, simd: false)
        let fast = scanBackward(c, x, dy: dy, simd: true)
        // Float sums over N (du, Δ), ED (dB, dC), B·L (dAt, dD) in other orders than the reference, plus the
        // polynomial exp: relative to each tensor's largest entry.
        // Measured ≤ 4e-7 of the largest entry.
        let pairs = [("du", fast.du, ref.du), ("ddelta", fast.ddelta, ref.ddelta), ("dAt", fast.dAt, ref.dAt),
                     ("dB,dC", fast.dxdbl, ref.dxdbl), ("dD", fast.dD, ref.dD)]
        for (name, f, r) in pairs {
            expectClose("\(c) \(name)", f, r, atol: 3e-6 * largestMagnitude(r), rtol: 3e-5)
        }
    }
}
