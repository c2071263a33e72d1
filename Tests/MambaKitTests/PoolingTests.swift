import Foundation
import MambaKit
import Testing

/// SaShiMi's down- and up-pool (Layers/Pooling.swift): the fast paths against the plain references, finite
/// differences of both backwards, the recurrent steppers against the parallel forward at every position, chunked
/// against whole, and causality.
@Suite struct PoolingTests {
    /// Row `t` of each sequence of `(B, T, width)`, concatenated: `(B, width)`.
    static func rowAt(_ v: [Float], _ t: Int, T: Int, width: Int) -> [Float] {
        var out: [Float] = []
        for b in 0..<B {
            let start: Int = (b * T + t) * width
            out += v[start..<(start + width)]
        }
        return out
    }

    /// Rows `lo..<hi` of each sequence of `(B, T, width)`, concatenated.
    static func rows(_ v: [Float], _ lo: Int, _ hi: Int, T: Int, width: Int) -> [Float] {
        var out: [Float] = []
        for b in 0..<B {
            let start: Int = (b * T + lo) * width, end: Int = (b * T + hi) * width
            out += v[start..<end]
        }
        return out
    }

    static let (B, H, p, E, Lp) = (2, 3, 4, 5, 3)
    static var L: Int { Lp * p }

    static func down(_ inp: [Float], _ w: [Float], _ b: [Float]) -> [Float] {
        var out = [Float](repeating: 0, count: B * Lp * E)
        inp.withUnsafeBufferPointer { x in w.withUnsafeBufferPointer { wp in b.withUnsafeBufferPointer { bp in
            out.withUnsafeMutableBufferPointer {
                DownPool.forward(out: $0.baseAddress!, inp: x.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!,
                                 N: B * Lp, H: H, p: p, E: E)
            }
        } } }
        return out
    }

    static func up(_ inp: [Float], _ w: [Float], _ b: [Float], carry: inout [Float]?, Lp: Int = Lp) -> [Float] {
        var out = [Float](repeating: 0, count: B * Lp * p * H)
        var y = [Float](repeating: 0, count: B * Lp * p * H)
        inp.withUnsafeBufferPointer { x in w.withUnsafeBufferPointer { wp in b.withUnsafeBufferPointer { bp in
            out.withUnsafeMutableBufferPointer { o in y.withUnsafeMutableBufferPointer { yb in
                if carry != nil {
                    carry!.withUnsafeMutableBufferPointer { c in
                        UpPool.forward(out: o.baseAddress!, inp: x.baseAddress!, y: yb.baseAddress!, weight: wp.baseAddress!,
                                       bias: bp.baseAddress!, carry: c.baseAddress!, B: B, Lp: Lp, H: H, p: p, E: E)
                    }
                } else {
                    UpPool.forward(out: o.baseAddress!, inp: x.baseAddress!, y: yb.baseAddress!, weight: wp.baseAddress!,
                                   bias: bp.baseAddress!, carry: nil, B: B, Lp: Lp, H: H, p: p, E: E)
                }
            } }
        } } }
        return out
    }

    @Test func forwardMatchesTheReference() {
        let (x, w, b) = (randomFloats(Self.B * Self.L * Self.H, seed: 1), randomFloats(Self.E * Self.p * Self.H, seed: 2),
                         randomFloats(Self.E, seed: 3))
        var ref = [Double](repeating: 0, count: Self.B * Self.Lp * Self.E)
        ref.withUnsafeMutableBufferPointer {
            DownPool.forwardReference(out: $0.baseAddress!, inp: x, weight: w, bias: b, B: Self.B, L: Self.L, H: Self.H,
                                      p: Self.p, E: Self.E)
        }
        let fast = Self.down(x, w, b)
        let worst = zip(fast, ref).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "down-pool: \(worst)")

        let (u, uw, ub) = (randomFloats(Self.B * Self.Lp * Self.E, seed: 4), randomFloats(Self.p * Self.H * Self.E, seed: 5),
                           randomFloats(Self.p * Self.H, seed: 6))
        var uref = [Double](repeating: 0, count: Self.B * Self.L * Self.H)
        uref.withUnsafeMutableBufferPointer {
            UpPool.forwardReference(out: $0.baseAddress!, inp: u, weight: uw, bias: ub, B: Self.B, Lp: Self.Lp, H: Self.H,
                                    p: Self.p, E: Self.E)
        }
        var none: [Float]? = nil
        let ufast = Self.up(u, uw, ub, carry: &none)
        let uworst = zip(ufast, uref).map { abs(Double($0) - $1) }.max()!
        #expect(uworst < 1e-5, "up-pool: \(uworst)")
        // The first block of every sequence is zero, bias included: nothing is known before it.
        for b in 0..<Self.B { #expect(ufast[(b * Self.L) * Self.H ..< (b * Self.L + Self.p) * Self.H].allSatisfy { $0 == 0 }) }
    }

    /// The composition up(down(x)) is strictly causal by blocks: changing x at time t changes no output before the
    /// start of the next block after t.
    @Test func downThenUpIsCausal() {
        let (w, b) = (randomFloats(Self.E * Self.p * Self.H, seed: 2), randomFloats(Self.E, seed: 3))
        let (uw, ub) = (randomFloats(Self.p * Self.H * Self.E, seed: 5), randomFloats(Self.p * Self.H, seed: 6))
        let x = randomFloats(Self.B * Self.L * Self.H, seed: 1)
        var none: [Float]? = nil
        let base = Self.up(Self.down(x, w, b), uw, ub, carry: &none)
        for t in [0, 3, 5, 11] {
            var x2 = x
            x2[t * Self.H] += 1
            let out = Self.up(Self.down(x2, w, b), uw, ub, carry: &none)
            let firstChanged = (0..<Self.L).first { s in (0..<Self.H).contains { out[s * Self.H + $0] != base[s * Self.H + $0] } }
            let nextBlock = (t / Self.p + 1) * Self.p
            if nextBlock < Self.L { #expect(firstChanged == nextBlock, "t = \(t): first change at \(String(describing: firstChanged))") }
            else { #expect(firstChanged == nil) }
        }
    }

    @Test func backwardsMatchFiniteDifferences() {
        let (B, H, p, E, Lp, L) = (Self.B, Self.H, Self.p, Self.E, Self.Lp, Self.L)
        var x = randomFloats(B * L * H, seed: 1), w = randomFloats(E * p * H, seed: 2), b = randomFloats(E, seed: 3)
        let g = randomFloats(B * Lp * E, seed: 7)
        func dloss(_ x: [Float], _ w: [Float], _ b: [Float]) -> Double {
            zip(Self.down(x, w, b), g).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        var dx = [Float](repeating: 0.5, count: x.count), dw = [Float](repeating: -0.25, count: w.count)
        var db = [Float](repeating: 0.125, count: b.count)
        let (dx0, dw0, db0) = (dx, dw, db)
        DownPool.backward(dinp: &dx, dweight: &dw, dbias: &db, dout: g, inp: x, weight: w, N: B * Lp, H: H, p: p, E: E)
        checkGradient("down dinp", &x, analytic: increment(dx, dx0), indices: Array(x.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { dloss($0, w, b) }
        checkGradient("down dweight", &w, analytic: increment(dw, dw0), indices: Array(w.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { dloss(x, $0, b) }
        checkGradient("down dbias", &b, analytic: increment(db, db0), indices: Array(b.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { dloss(x, w, $0) }

        var u = randomFloats(B * Lp * E, seed: 4), uw = randomFloats(p * H * E, seed: 5), ub = randomFloats(p * H, seed: 6)
        let ug = randomFloats(B * L * H, seed: 8)
        func uloss(_ u: [Float], _ uw: [Float], _ ub: [Float]) -> Double {
            var none: [Float]? = nil
            return zip(Self.up(u, uw, ub, carry: &none), ug).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        var du = [Float](repeating: 0.5, count: u.count), duw = [Float](repeating: -0.25, count: uw.count)
        var dub = [Float](repeating: 0.125, count: ub.count)
        let (du0, duw0, dub0) = (du, duw, dub)
        var dy = [Float](repeating: .nan, count: B * Lp * p * H)
        UpPool.backward(dinp: &du, dweight: &duw, dbias: &dub, dout: ug, inp: u, dy: &dy, weight: uw, B: B, Lp: Lp, H: H,
                        p: p, E: E)
        checkGradient("up dinp", &u, analytic: increment(du, du0), indices: Array(u.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { uloss($0, uw, ub) }
        checkGradient("up dweight", &uw, analytic: increment(duw, duw0), indices: Array(uw.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { uloss(u, $0, ub) }
        checkGradient("up dbias", &ub, analytic: increment(dub, dub0), indices: Array(ub.indices), h: 1e-2, atol: 2e-4,
                      rtol: 1e-4) { uloss(u, uw, $0) }
    }

    /// Steppers, one time step at a time: the down-pool fires on the last step of every block with the forward's
    /// pooled row; the up-pool, fed those rows, hands out the forward's output at every position.
    @Test func stepsEqualTheParallelForward() {
        let (B, H, p, E, Lp, L) = (Self.B, Self.H, Self.p, Self.E, Self.Lp, Self.L)
        let x = randomFloats(B * L * H, seed: 1), w = randomFloats(E * p * H, seed: 2), b = randomFloats(E, seed: 3)
        let uw = randomFloats(p * H * E, seed: 5), ub = randomFloats(p * H, seed: 6)
        let pooled = Self.down(x, w, b)
        var none: [Float]? = nil
        let whole = Self.up(pooled, uw, ub, carry: &none)
        let down = DownPoolStepper(batch: B, H: H, p: p, E: E)
        let up = UpPoolStepper(batch: B, H: H, p: p, E: E)
        var fired = 0
        for t in 0..<L {
            let xt = Self.rowAt(x, t, T: L, width: H)
            var d = [Float](repeating: 0, count: B * E)
            let didFire = down.step(out: &d, inp: xt, weight: w, bias: b)
            #expect(didFire == ((t + 1) % p == 0), "t = \(t)")
            if didFire {
                let l = t / p
                let want = Self.rowAt(pooled, l, T: Lp, width: E)
                #expect(zip(d, want).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) }, "pooled step \(l)")
                fired += 1
            }
            var o = [Float](repeating: 0, count: B * H)
            let blockEnded = up.step(out: &o)
            #expect(blockEnded == didFire)
            if blockEnded { up.refill(inp: d, weight: uw, bias: ub) }
            let want = Self.rowAt(whole, t, T: L, width: H)
            #expect(zip(o, want).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) }, "t = \(t)")
        }
        #expect(fired == Lp)
    }

    /// Two chunks with the up-pool's carry equal one whole pass.
    @Test func chunkedEqualsWhole() {
        let (B, H, p, E, Lp) = (Self.B, Self.H, Self.p, Self.E, Self.Lp)
        let u = randomFloats(B * Lp * E, seed: 4), uw = randomFloats(p * H * E, seed: 5), ub = randomFloats(p * H, seed: 6)
        var none: [Float]? = nil
        let whole = Self.up(u, uw, ub, carry: &none)
        var carry: [Float]? = [Float](repeating: 0, count: B * p * H)
        let split = 2
        let first = Self.rows(u, 0, split, T: Lp, width: E)
        let second = Self.rows(u, split, Lp, T: Lp, width: E)
        let a = Self.up(first, uw, ub, carry: &carry, Lp: split)
        let c = Self.up(second, uw, ub, carry: &carry, Lp: Lp - split)
        let W = p * H
        // a and c are (B, split·p, H) and (B, (Lp − split)·p, H): per sequence, a's rows then c's are whole's.
        var joined: [Float] = []
        for b in 0..<B {
            let na: Int = split * W, nc: Int = (Lp - split) * W
            joined += a[(b * na)..<((b + 1) * na)]
            joined += c[(b * nc)..<((b + 1) * nc)]
        }
        #expect(joined == whole)
    }
}
