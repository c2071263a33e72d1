import MambaKit
import Testing

#if canImport(Glibc)
import Glibc
#else
import Foundation
#endif

/// Tests of the chunked SSD kernel (`SSD.forward` / `backward` / `step`) against the plain recurrence
/// (`forwardReference` / `backwardReference`, Double inside), and of both backwards against central finite differences
/// of an independent Double implementation written here.
///
/// Inputs are laid out as the Mamba-2 block lays them out: x, B and C are columns of one xBC row
/// `[x (H·P) | B (G·N) | C (G·N) | 3 spare]`, and the gradients dx, dB, dC go to one buffer of the same layout, so a
/// kernel writing outside its columns would show in the spare ones. dt, y have spare columns too (odd strides).
/// Magnitudes as in a model: Δ log-uniform in (0.001, 0.3), A in (−16, −1), x, B, C, dy ~ N(0, 1).
@Suite(.serialized) struct SSDTests {
    // MARK: Cases

    static let forwardCases: [SSDCase] = [
        SSDCase(B: 2, L: 128, H: 4, P: 16, G: 2, N: 16, Q: 32),                     // L a multiple of Q, G > 1
        SSDCase(B: 2, L: 100, H: 4, P: 6, G: 1, N: 5, Q: 32, withH0: false),        // L % Q ≠ 0, P, N < 16
        SSDCase(B: 1, L: 20, H: 2, P: 64, G: 1, N: 64, Q: 64),                      // L < Q, model-sized P, N
        SSDCase(B: 3, L: 77, H: 6, P: 20, G: 3, N: 17, Q: 16, seed: 4),             // odd sizes everywhere
        SSDCase(B: 2, L: 3, H: 2, P: 3, G: 2, N: 2, Q: 8, seed: 5),                 // fewer than six rows anywhere
        SSDCase(B: 2, L: 200, H: 2, P: 32, G: 1, N: 32, Q: 64, seed: 6, dtMax: 3),  // decays far below e^−60 (→ 0)
    ]

    static let backwardCases: [SSDCase] = [
        SSDCase(B: 2, L: 100, H: 4, P: 16, G: 2, N: 16, Q: 32),
        SSDCase(B: 2, L: 45, H: 4, P: 6, G: 1, N: 5, Q: 16, withH0: false, seed: 2),
        SSDCase(B: 1, L: 20, H: 2, P: 64, G: 1, N: 64, Q: 64, seed: 3),
        SSDCase(B: 3, L: 77, H: 6, P: 20, G: 3, N: 17, Q: 16, seed: 4),
        SSDCase(B: 2, L: 3, H: 2, P: 3, G: 2, N: 2, Q: 8, seed: 5),
        // Δ·A down to −48: decays span e^0 … 0 inside a chunk, where dA is most sensitive to how the decay terms
        // are summed (a per-step Σ_s − Σ_t and cumulative sum lost 3e-5 of dA to cancellation here).
        SSDCase(B: 1, L: 512, H: 2, P: 64, G: 1, N: 64, Q: 64, seed: 77, dtMax: 3),
    ]

    // MARK: Forward

    /// Chunked forward (both product paths) vs the Double recurrence: y, hOut and every saved chunk-start state.
    /// Tolerance 2e-6 of the tensor's largest entry: the kernel sums in Float in another order, measured ≤ 2e-7 (a few
    /// Float ulps), so a 10× margin; a wrong decay, mask or missing term shows at 1e-2 or more.
    @Test(arguments: forwardCases, [false, true])
    func forwardMatchesRecurrence(_ c: SSDCase, blas: Bool) {
        let inp = c.inputs()
        let fast = SSDCase.withProducts(blas: blas) { c.forward(inp, chunked: true) }
        let ref = c.forward(inp, chunked: false)
        let (yFast, yRef) = (c.yColumns(fast.y), c.yColumns(ref.y))
        SSDCheck.close("y", yFast, yRef, atol: 2e-6 * SSDCheck.largest(yRef), rtol: 0)
        SSDCheck.close("hOut", fast.h, ref.h, atol: 2e-6 * SSDCheck.largest(ref.h), rtol: 0)
        SSDCheck.untouched("y spare columns", fast.y, c.ldy, from: c.H * c.P, sentinel: SSDCase.sentinel)
        // The saved chunk-start states are the recurrence's states after t0 = c·Q steps.
        let d = c.dims
        for k in 0..<d.chunks {
            let prefix = SSDCase(B: c.B, L: k * c.Q, H: c.H, P: c.P, G: c.G, N: c.N, Q: c.Q, withH0: c.withH0)
            let want = prefix.forward(c.truncated(inp, to: k * c.Q), chunked: false).h
            let block = c.H * c.P * c.N  // one (b, chunk) of states
            var got: [Float] = []
            for b in 0..<c.B {
                let at: Int = (b * d.chunks + k) * block
                got += fast.states[at..<(at + block)]
            }
            SSDCheck.close("chunk \(k) start state", got, want, atol: 2e-6 * max(1, SSDCheck.largest(want)), rtol: 0)
        }
    }

    /// L = 0 keeps the state (hOut = h0) and writes nothing else.
    @Test func emptySequenceKeepsState() {
        let c = SSDCase(B: 2, L: 0, H: 2, P: 6, G: 1, N: 5, Q: 8)
        let inp = c.inputs()
        #expect(c.forward(inp, chunked: true).h == inp.h0)
    }

    // MARK: Backward

    /// Chunked backward vs the reference backward, from the same non-zero starting gradients (both accumulate), with
    /// dhOut and dh0. Tolerance: each tensor within 5e-6 of its largest entry; measured ≤ 7e-7.
    @Test(arguments: backwardCases, [false, true])
    func backwardMatchesReference(_ c: SSDCase, blas: Bool) {
        let inp = c.inputs()
        let up = c.upstream(seed: c.seed + 100)
        let start = c.startGradients(seed: c.seed + 200)
        let fast = SSDCase.withProducts(blas: blas) { c.backward(inp, up, start: start, chunked: true) }
        let ref = c.backward(inp, up, start: start, chunked: false)
        for (name, g, r) in c.named(fast, ref) {
            SSDCheck.close("d\(name)", g, r, atol: 5e-6 * SSDCheck.largest(r), rtol: 0)
        }
        // Spare columns keep their starting values: nothing is written outside dx, dB, dC and ddt's columns.
        SSDCheck.untouched("dxBC spare columns", fast.dxbc, c.ld, from: c.ld - 3, equalTo: start.dxbc)
        SSDCheck.untouched("ddt spare column", fast.ddt, c.H + 1, from: c.H, equalTo: start.ddt)
    }

    /// Both backwards against central differences (step 1e-5) of ℓ = ⟨dy, y⟩ + ⟨dhOut, hOut⟩ computed by the Double
    /// recurrence below, for every input of a tiny case with L not a multiple of Q and G > 1. The differences are good
    /// to ~1e-9 (Double, step 1e-5); relative to each tensor's largest entry the reference backward (Double inside,
    /// rounded to Float) must agree to 1e-6 (measured 2e-8), the chunked one (Float) to 5e-6 (measured 1.7e-7).
    @Test(arguments: [false, true])
    func gradientsMatchFiniteDifferences(blas: Bool) {
        let c = SSDCase(B: 2, L: 7, H: 4, P: 3, G: 2, N: 2, Q: 3, seed: 11, dtMax: 0.5)
        let inp = c.inputs()
        let up = c.upstream(seed: 12)
        let zero = c.zeroGradients()
        let fast = SSDCase.withProducts(blas: blas) { c.backward(inp, up, start: zero, chunked: true) }
        let ref = c.backward(inp, up, start: zero, chunked: false)
        let fd = c.finiteDifferences(inp, up, step: 1e-5)
        for (name, r, f) in c.named(ref, fd) {
            SSDCheck.close("reference d\(name) vs differences", r, f, atol: 1e-6 * SSDCheck.largest(f), rtol: 0)
        }
        for (name, g, f) in c.named(fast, fd) {
            SSDCheck.close("chunked d\(name) vs differences", g, f, atol: 5e-6 * SSDCheck.largest(f), rtol: 0)
        }
        // The case is not degenerate: every gradient tensor has weight.
        for (name, _, f) in c.named(fast, fd) { #expect(SSDCheck.largest(f) > 1e-3, "d\(name) is ~0") }
    }

    // MARK: Equivalences

    /// `step` applied L times reproduces the forward's y and final state (tolerance as `forwardMatchesRecurrence`).
    @Test func stepReproducesForward() {
        let c = SSDCase(B: 3, L: 40, H: 4, P: 16, G: 2, N: 20, Q: 16, seed: 21)
        let inp = c.inputs()
        let whole = c.forward(inp, chunked: true)
        var state = inp.h0
        var y = [Float](repeating: 0, count: c.B * c.L * c.H * c.P)
        let (A, D) = (FloatBuffer(inp.A), FloatBuffer(inp.D))
        for t in 0..<c.L {
            // Gather token t of every sequence into (B, ·) rows, as generation does.
            let rows = (0..<c.B).map { $0 * c.L + t }
            let xbc = FloatBuffer(rows.flatMap { Array(inp.xbc[$0 * c.ld..<($0 + 1) * c.ld]) })
            let dt = FloatBuffer(rows.flatMap { Array(inp.dt[$0 * (c.H + 1)..<($0 + 1) * (c.H + 1)]) })
            let yt = FloatBuffer(count: c.B * c.H * c.P)
            let s = FloatBuffer(state)
            SSD.step(y: yt.ptr, ldy: c.H * c.P, x: xbc.ptr, ldx: c.ld, dt: dt.ptr, lddt: c.H + 1, A: A.ptr,
                     Bm: xbc.ptr + c.H * c.P, Cm: xbc.ptr + c.H * c.P + c.G * c.N, ldbc: c.ld, D: D.ptr,
                     state: s.ptr, B: c.B, H: c.H, P: c.P, G: c.G, N: c.N)
            state = s.array
            for b in 0..<c.B { for i in 0..<(c.H * c.P) { y[(b * c.L + t) * c.H * c.P + i] = yt[b * c.H * c.P + i] } }
        }
        let yWhole = c.yColumns(whole.y)
        SSDCheck.close("step y", y, yWhole, atol: 2e-6 * SSDCheck.largest(yWhole), rtol: 0)
        SSDCheck.close("step state", state, whole.h, atol: 2e-6 * SSDCheck.largest(whole.h), rtol: 0)
    }

    /// Running [0, L1) and then [L1, L) from the carried state equals running [0, L) — forward (y, hOut) and backward
    /// (the second half's dh0 is the first half's dhOut; every gradient matches the whole run's). L1 is not a
    /// multiple of Q, so the chunk boundaries differ and only rounding may change (tolerances as above).
    @Test func chunkedEqualsWhole() {
        let c = SSDCase(B: 2, L: 90, H: 4, P: 16, G: 2, N: 16, Q: 32, seed: 31)
        let L1 = 37
        let inp = c.inputs()
        let up = c.upstream(seed: 32)
        let first = SSDCase(B: c.B, L: L1, H: c.H, P: c.P, G: c.G, N: c.N, Q: c.Q, withH0: true)
        let second = SSDCase(B: c.B, L: c.L - L1, H: c.H, P: c.P, G: c.G, N: c.N, Q: c.Q, withH0: true)
        let in1 = c.truncated(inp, to: L1)
        var in2 = c.suffix(inp, from: L1)
        let f1 = first.forward(in1, chunked: true)
        in2.h0 = f1.h
        let f2 = second.forward(in2, chunked: true)
        let whole = c.forward(inp, chunked: true)
        let (ySplit, yWhole) = (c.yColumns(c.joined(f1.y, f2.y, L1: L1, ld: c.ldy)), c.yColumns(whole.y))
        SSDCheck.close("split y", ySplit, yWhole, atol: 2e-6 * SSDCheck.largest(yWhole), rtol: 0)
        SSDCheck.close("split hOut", f2.h, whole.h, atol: 2e-6 * SSDCheck.largest(whole.h), rtol: 0)

        let zero = c.zeroGradients()
        let gWhole = c.backward(inp, up, start: zero, chunked: true)
        var up2 = SSDUpstream(dy: c.suffixRows(up.dy, from: L1, ld: c.ldy), dhOut: up.dhOut)
        let g2 = second.backward(in2, up2, start: second.zeroGradients(), chunked: true)
        up2 = SSDUpstream(dy: Array(c.prefixRows(up.dy, to: L1, ld: c.ldy)), dhOut: g2.dh0)
        let g1 = first.backward(in1, up2, start: first.zeroGradients(), chunked: true)
        let joined = SSDGradients(
            dxbc: c.joined(g1.dxbc, g2.dxbc, L1: L1, ld: c.ld), ddt: c.joined(g1.ddt, g2.ddt, L1: L1, ld: c.H + 1),
            dA: zip(g1.dA, g2.dA).map { $0 + $1 }, dD: zip(g1.dD, g2.dD).map { $0 + $1 }, dh0: g1.dh0)
        for (name, g, w) in c.named(joined, gWhole) {
            SSDCheck.close("split d\(name)", g, w, atol: 5e-6 * SSDCheck.largest(w), rtol: 0)
        }
    }

    // MARK: Threads and determinism

    /// Every output element and partial sum is computed by the same operations whatever the split over threads, and
    /// dA, dD add (b, chunk) partials in a fixed order: 1, 2 and 3 threads give the same bits (both product paths).
    @Test(arguments: [false, true])
    func threadCountGivesIdenticalBits(blas: Bool) {
        withThreadSettingsLock {
            let saved = (Parallel.threads, SSD.blasProducts)
            defer { Parallel.setThreads(saved.0); SSD.blasProducts = saved.1 }
            SSD.blasProducts = blas
            let c = SSDCase(B: 3, L: 70, H: 4, P: 16, G: 2, N: 16, Q: 32, seed: 41)
            let inp = c.inputs(), up = c.upstream(seed: 42), start = c.startGradients(seed: 43)
            Parallel.setThreads(1)
            let f1 = c.forward(inp, chunked: true), g1 = c.backward(inp, up, start: start, chunked: true)
            for t in [2, 3] {
                Parallel.setThreads(t)
                let f = c.forward(inp, chunked: true), g = c.backward(inp, up, start: start, chunked: true)
                #expect(f.y == f1.y && f.h == f1.h && f.states == f1.states, "forward, \(t) threads vs 1")
                for (name, a, b) in c.named(g, g1) { #expect(a == b, "d\(name), \(t) threads vs 1") }
            }
        }
    }

    /// Two runs on the same inputs give the same bits (forward and backward, at the model's P = N = Q = 64).
    @Test func repeatedRunsGiveIdenticalBits() {
        withThreadSettingsLock {
            let c = SSDCase(B: 2, L: 100, H: 4, P: 64, G: 1, N: 64, Q: 64, seed: 51)
            let inp = c.inputs(), up = c.upstream(seed: 52), start = c.startGradients(seed: 53)
            let (f1, f2) = (c.forward(inp, chunked: true), c.forward(inp, chunked: true))
            #expect(f1.y == f2.y && f1.h == f2.h && f1.states == f2.states)
            let (g1, g2) = (c.backward(inp, up, start: start, chunked: true),
                            c.backward(inp, up, start: start, chunked: true))
            for (name, a, b) in c.named(g1, g2) { #expect(a == b, "d\(name) differs between runs") }
        }
    }
}

// MARK: - Test support (namespaced so as not to clash with the suite's shared helpers)

struct SSDInputs {
    /// (B, L, ld) rows [x | B | C | spare]; dt (B, L, H + 1); A, D (H); h0 (B, H, P, N) (zeros when unused).
    var xbc: [Float], dt: [Float], A: [Float], D: [Float], h0: [Float]
}

struct SSDUpstream {
    /// dy (B, L, ldy); dhOut (B, H, P, N).
    var dy: [Float], dhOut: [Float]
}

struct SSDGradients {
    /// dxbc in the xBC layout (dx | dB | dC | spare), ddt (B, L, H + 1), dA, dD (H), dh0 (B, H, P, N).
    var dxbc: [Float], ddt: [Float], dA: [Float], dD: [Float], dh0: [Float]

}

struct SSDCase: Sendable, CustomTestStringConvertible {
    var B: Int, L: Int, H: Int, P: Int, G: Int, N: Int, Q: Int
    var withH0 = true
    var seed: UInt64 = 1
    /// Δ is log-uniform in (0.001, dtMax).
    var dtMax = 0.3

    static let sentinel: Float = 12345

    var testDescription: String { "B\(B) L\(L) H\(H) P\(P) G\(G) N\(N) Q\(Q)\(withH0 ? " h0" : "")" }
    var dims: SSDDims { SSDDims(B: B, L: L, H: H, P: P, G: G, N: N, chunk: Q) }
    /// xBC row stride (3 spare columns), y row stride (2 spare columns).
    var ld: Int { H * P + 2 * G * N + 3 }
    var ldy: Int { H * P + 2 }
    var stateSize: Int { B * H * P * N }

    func inputs() -> SSDInputs {
        var rng = RNG(seed: seed)
        var xbc = [Float](repeating: Self.sentinel, count: B * L * ld)
        for r in 0..<(B * L) { for i in 0..<(H * P + 2 * G * N) { xbc[r * ld + i] = Float(rng.normal()) } }
        var dt = [Float](repeating: Self.sentinel, count: B * L * (H + 1))
        for r in 0..<(B * L) {
            for h in 0..<H { dt[r * (H + 1) + h] = Float(exp(rng.uniform(log(0.001), log(dtMax)))) }
        }
        let A = (0..<H).map { _ in -Float(rng.uniform(1, 16)) }
        let D = (0..<H).map { _ in Float(rng.normal()) }
        let h0 = withH0 ? (0..<stateSize).map { _ in Float(rng.normal()) } : [Float](repeating: 0, count: stateSize)
        return SSDInputs(xbc: xbc, dt: dt, A: A, D: D, h0: h0)
    }

    func upstream(seed: UInt64) -> SSDUpstream {
        var rng = RNG(seed: seed)
        var dy = [Float](repeating: Self.sentinel, count: B * L * ldy)
        for r in 0..<(B * L) { for i in 0..<(H * P) { dy[r * ldy + i] = Float(rng.normal()) } }
        return SSDUpstream(dy: dy, dhOut: (0..<stateSize).map { _ in Float(rng.normal()) })
    }

    func zeroGradients() -> SSDGradients {
        SSDGradients(dxbc: [Float](repeating: 0, count: B * L * ld), ddt: [Float](repeating: 0, count: B * L * (H + 1)),
                     dA: [Float](repeating: 0, count: H), dD: [Float](repeating: 0, count: H),
                     dh0: [Float](repeating: 0, count: stateSize))
    }

    /// Non-zero starting gradients (the kernels accumulate).
    func startGradients(seed: UInt64) -> SSDGradients {
        var rng = RNG(seed: seed)
        func r(_ n: Int) -> [Float] { (0..<n).map { _ in Float(rng.normal()) } }
        return SSDGradients(dxbc: r(B * L * ld), ddt: r(B * L * (H + 1)), dA: r(H), dD: r(H), dh0: r(stateSize))
    }

    /// y (B, L, ldy; spare columns keep the sentinel), hOut, and the saved chunk states (chunked only).
    func forward(_ inp: SSDInputs, chunked: Bool) -> (y: [Float], h: [Float], states: [Float]) {
        let xbc = FloatBuffer(inp.xbc), dt = FloatBuffer(inp.dt), A = FloatBuffer(inp.A), D = FloatBuffer(inp.D)
        let h0 = FloatBuffer(inp.h0)
        let y = FloatBuffer([Float](repeating: Self.sentinel, count: B * L * ldy))
        let h = FloatBuffer(count: stateSize)
        let states = FloatBuffer(count: SSD.stateCount(dims: dims))
        let h0p: UnsafePointer<Float>? = withH0 ? UnsafePointer(h0.ptr) : nil
        let (Bm, Cm) = (xbc.ptr + H * P, xbc.ptr + H * P + G * N)
        if chunked {
            SSD.forward(y: y.ptr, ldy: ldy, hOut: h.ptr, x: xbc.ptr, ldx: ld, dt: dt.ptr, lddt: H + 1, A: A.ptr,
                        Bm: Bm, Cm: Cm, ldbc: ld, D: D.ptr, h0: h0p, chunkStates: states.ptr, dims: dims,
                        scratch: Scratch())
        } else {
            SSD.forwardReference(y: y.ptr, ldy: ldy, hOut: h.ptr, x: xbc.ptr, ldx: ld, dt: dt.ptr, lddt: H + 1,
                                 A: A.ptr, Bm: Bm, Cm: Cm, ldbc: ld, D: D.ptr, h0: h0p, dims: dims)
        }
        return (y.array, h.array, states.array)
    }

    /// Gradients after adding one backward to `start`.
    func backward(_ inp: SSDInputs, _ up: SSDUpstream, start: SSDGradients, chunked: Bool) -> SSDGradients {
        let xbc = FloatBuffer(inp.xbc), dt = FloatBuffer(inp.dt), A = FloatBuffer(inp.A), D = FloatBuffer(inp.D)
        let h0 = FloatBuffer(inp.h0)
        let dy = FloatBuffer(up.dy), dhOut = FloatBuffer(up.dhOut)
        let g = (xbc: FloatBuffer(start.dxbc), dt: FloatBuffer(start.ddt), A: FloatBuffer(start.dA),
                 D: FloatBuffer(start.dD), h0: FloatBuffer(start.dh0))
        let h0p: UnsafePointer<Float>? = withH0 ? UnsafePointer(h0.ptr) : nil
        let (Bm, Cm) = (xbc.ptr + H * P, xbc.ptr + H * P + G * N)
        let (dBm, dCm) = (g.xbc.ptr + H * P, g.xbc.ptr + H * P + G * N)
        if chunked {
            let scratch = Scratch()
            let states = FloatBuffer(count: SSD.stateCount(dims: dims))
            let y = FloatBuffer(count: B * L * ldy)
            SSD.forward(y: y.ptr, ldy: ldy, hOut: nil, x: xbc.ptr, ldx: ld, dt: dt.ptr, lddt: H + 1, A: A.ptr,
                        Bm: Bm, Cm: Cm, ldbc: ld, D: D.ptr, h0: h0p, chunkStates: states.ptr, dims: dims,
                        scratch: scratch)
            SSD.backward(dx: g.xbc.ptr, lddx: ld, ddt: g.dt.ptr, ldddt: H + 1, dA: g.A.ptr, dBm: dBm, dCm: dCm,
                         lddbc: ld, dD: g.D.ptr, dh0: g.h0.ptr, dy: dy.ptr, ldy: ldy, dhOut: dhOut.ptr,
                         x: xbc.ptr, ldx: ld, dt: dt.ptr, lddt: H + 1, A: A.ptr, Bm: Bm, Cm: Cm, ldbc: ld, D: D.ptr,
                         chunkStates: states.ptr, dims: dims, scratch: scratch)
        } else {
            SSD.backwardReference(dx: g.xbc.ptr, lddx: ld, ddt: g.dt.ptr, ldddt: H + 1, dA: g.A.ptr, dBm: dBm,
                                  dCm: dCm, lddbc: ld, dD: g.D.ptr, dh0: g.h0.ptr, dy: dy.ptr, ldy: ldy,
                                  dhOut: dhOut.ptr, x: xbc.ptr, ldx: ld, dt: dt.ptr, lddt: H + 1, A: A.ptr, Bm: Bm,
                                  Cm: Cm, ldbc: ld, D: D.ptr, h0: h0p, dims: dims)
        }
        return SSDGradients(dxbc: g.xbc.array, ddt: g.dt.array, dA: g.A.array, dD: g.D.array, dh0: g.h0.array)
    }

    /// (name, a's tensor, b's tensor) for every gradient, dx, dB, dC and dΔ cut out of their strided buffers (each
    /// compared against its own largest entry).
    func named(_ a: SSDGradients, _ b: SSDGradients) -> [(String, [Float], [Float])] {
        let (HP, GN) = (H * P, G * N)
        func cut(_ v: [Float], _ ld: Int, _ lo: Int, _ n: Int) -> [Float] {
            SSDCheck.columns(v, ld: ld, from: lo, count: n)
        }
        return [("x", cut(a.dxbc, ld, 0, HP), cut(b.dxbc, ld, 0, HP)),
                ("B", cut(a.dxbc, ld, HP, GN), cut(b.dxbc, ld, HP, GN)),
                ("C", cut(a.dxbc, ld, HP + GN, GN), cut(b.dxbc, ld, HP + GN, GN)),
                ("dt", cut(a.ddt, H + 1, 0, H), cut(b.ddt, H + 1, 0, H)),
                ("A", a.dA, b.dA), ("D", a.dD, b.dD), ("h0", a.dh0, b.dh0)]
    }

    /// The H·P columns of y rows (stride ldy).
    func yColumns(_ y: [Float]) -> [Float] { SSDCheck.columns(y, ld: ldy, from: 0, count: H * P) }

    /// Runs `body` with the chunk products on OpenBLAS or on the tile kernel (`SSD.blasProducts`), under the suite's
    /// thread-settings lock (the setting is global; another test's two runs must not straddle a change).
    static func withProducts<T>(blas: Bool, _ body: () -> T) -> T {
        withThreadSettingsLock {
            let saved = SSD.blasProducts
            defer { SSD.blasProducts = saved }
            SSD.blasProducts = blas
            return body()
        }
    }

    // MARK: Independent Double implementation for finite differences

    /// ℓ = ⟨dy, y⟩ + ⟨dhOut, hOut⟩ by the recurrence, all in Double.
    func loss(xbc: [Double], dt: [Double], A: [Double], D: [Double], h0: [Double], _ up: SSDUpstream) -> Double {
        var total = 0.0
        var S = [Double](repeating: 0, count: P * N)
        for b in 0..<B {
            for h in 0..<H {
                let g = h / (H / G)
                for i in 0..<(P * N) { S[i] = withH0 ? h0[(b * H + h) * P * N + i] : 0 }
                for t in 0..<L {
                    let r = b * L + t
                    let delta = dt[r * (H + 1) + h]
                    let a = exp(delta * A[h])
                    for p in 0..<P {
                        let xv = xbc[r * ld + h * P + p]
                        var y = D[h] * xv
                        for n in 0..<N {
                            S[p * N + n] = a * S[p * N + n] + delta * xv * xbc[r * ld + H * P + g * N + n]
                            y += S[p * N + n] * xbc[r * ld + H * P + G * N + g * N + n]
                        }
                        total += Double(up.dy[r * ldy + h * P + p]) * y
                    }
                }
                for i in 0..<(P * N) { total += Double(up.dhOut[(b * H + h) * P * N + i]) * S[i] }
            }
        }
        return total
    }

    /// Central differences of `loss` for every input (spare columns get 0; dh0 is 0 without h0).
    func finiteDifferences(_ inp: SSDInputs, _ up: SSDUpstream, step: Double) -> SSDGradients {
        var v = (xbc: inp.xbc.map(Double.init), dt: inp.dt.map(Double.init), A: inp.A.map(Double.init),
                 D: inp.D.map(Double.init), h0: inp.h0.map(Double.init))
        func f() -> Double { loss(xbc: v.xbc, dt: v.dt, A: v.A, D: v.D, h0: v.h0, up) }
        typealias Values = (xbc: [Double], dt: [Double], A: [Double], D: [Double], h0: [Double])
        func diff(_ kp: WritableKeyPath<Values, [Double]>, _ used: (Int) -> Bool) -> [Float] {
            (0..<v[keyPath: kp].count).map { i in
                guard used(i) else { return 0 }
                let x0 = v[keyPath: kp][i]
                v[keyPath: kp][i] = x0 + step
                let fp = f()
                v[keyPath: kp][i] = x0 - step
                let fm = f()
                v[keyPath: kp][i] = x0
                return Float((fp - fm) / (2 * step))
            }
        }
        return SSDGradients(dxbc: diff(\.xbc) { $0 % ld < ld - 3 }, ddt: diff(\.dt) { $0 % (H + 1) < H },
                            dA: diff(\.A) { _ in true }, dD: diff(\.D) { _ in true }, dh0: diff(\.h0) { _ in withH0 })
    }

    // MARK: Splitting a case in time

    func truncated(_ inp: SSDInputs, to L1: Int) -> SSDInputs {
        SSDInputs(xbc: prefixRows(inp.xbc, to: L1, ld: ld), dt: prefixRows(inp.dt, to: L1, ld: H + 1), A: inp.A,
                  D: inp.D, h0: inp.h0)
    }

    func suffix(_ inp: SSDInputs, from L1: Int) -> SSDInputs {
        SSDInputs(xbc: suffixRows(inp.xbc, from: L1, ld: ld), dt: suffixRows(inp.dt, from: L1, ld: H + 1), A: inp.A,
                  D: inp.D, h0: inp.h0)
    }

    func prefixRows(_ v: [Float], to L1: Int, ld: Int) -> [Float] {
        (0..<B).flatMap { b in v[(b * L) * ld..<(b * L + L1) * ld] }
    }

    func suffixRows(_ v: [Float], from L1: Int, ld: Int) -> [Float] {
        (0..<B).flatMap { b in v[(b * L + L1) * ld..<(b * L + L) * ld] }
    }

    /// Rows of the first part (L1 per sequence) and the second (L − L1) interleaved back into (B, L, ld).
    func joined(_ a: [Float], _ b: [Float], L1: Int, ld: Int) -> [Float] {
        let L2 = L - L1
        var out: [Float] = []
        for s in 0..<B {
            out += a[(s * L1 * ld)..<((s + 1) * L1 * ld)]
            out += b[(s * L2 * ld)..<((s + 1) * L2 * ld)]
        }
        return out
    }
}

enum SSDCheck {
    static func largest(_ v: [Float]) -> Float { v.reduce(0) { max($0, abs($1)) } }

    /// The first `count` columns of rows of stride ld.
    static func columns(_ v: [Float], ld: Int, from lo: Int = 0, count: Int) -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(v.count / ld * count)
        for r in 0..<(v.count / ld) { out += v[(r * ld + lo)..<(r * ld + lo + count)] }
        return out
    }

    /// |got − want| ≤ atol + rtol·|want| everywhere; on failure names the worst index and the max difference.
    static func close(_ label: String, _ got: [Float], _ want: [Float], atol: Float, rtol: Float,
                      sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(got.count == want.count, "\(label): \(got.count) values vs \(want.count)",
                sourceLocation: sourceLocation)
        var worst = -1, worstExcess: Float = 0, maxAbs: Float = 0
        for i in 0..<min(got.count, want.count) {
            let d = abs(got[i] - want[i])
            if d.isNaN { worst = i; maxAbs = .infinity; break }
            maxAbs = max(maxAbs, d)
            let excess = d - (atol + rtol * abs(want[i]))
            if excess > worstExcess { worstExcess = excess; worst = i }
        }
        let message = worst < 0 ? "" : "\(label): max |diff| \(maxAbs) (atol \(atol), rtol \(rtol)); "
            + "worst at \(worst): got \(got[worst]), want \(want[worst])"
        #expect(worst < 0, "\(message)", sourceLocation: sourceLocation)
    }

    /// Columns from..<ld of every row still hold the sentinel.
    static func untouched(_ label: String, _ v: [Float], _ ld: Int, from: Int, sentinel: Float,
                          sourceLocation: SourceLocation = #_sourceLocation) {
        let bad = (0..<(v.count / ld)).contains { r in (from..<ld).contains { v[r * ld + $0] != sentinel } }
        #expect(!bad, "\(label) were written", sourceLocation: sourceLocation)
    }

    /// Columns from..<ld of every row equal those of `start`.
    static func untouched(_ label: String, _ v: [Float], _ ld: Int, from: Int, equalTo start: [Float],
                          sourceLocation: SourceLocation = #_sourceLocation) {
        let bad = (0..<(v.count / ld)).contains { r in (from..<ld).contains { v[r * ld + $0] != start[r * ld + $0] } }
        #expect(!bad, "\(label) were written", sourceLocation: sourceLocation)
    }
}
