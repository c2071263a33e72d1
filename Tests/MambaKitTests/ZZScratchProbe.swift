import Foundation
import MambaKit
import Testing

@Suite struct LayerGradientScratchProbe {
    @Test func probe() {
        let c = ScanCase(B: 1, L: 9, ED: 7, N: 8, seed: 5)
        let x = c.inputs()
        let w = randomFloats(c.B * c.L * c.ED, seed: c.seed &+ 77)
        let gs = scanBackward(c, x, dy: w, simd: true)
        let gr = scanBackward(c, x, dy: w, simd: false)
        let i = 30
        let d = i % c.ED
        print("PROBE At \(x.At[i]) an simd \(gs.dAt[i]) ref \(gr.dAt[i]) deltas \((0..<c.L).map { x.delta[$0 * c.ED + d] })")
        for simd in [true, false] {
            for h: Float in [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4] {
                var a = x
                a.At[i] = x.At[i] + h
                let yp = runScan(c, a, simd: simd).y
                a.At[i] = x.At[i] - h
                let ym = runScan(c, a, simd: simd).y
                var lp = 0.0, lm = 0.0
                for j in 0..<w.count { lp += Double(w[j]) * Double(yp[j]); lm += Double(w[j]) * Double(ym[j]) }
                print("PROBE simd \(simd) h \(h) fd \((lp - lm) / (Double(x.At[i] + h) - Double(x.At[i] - h)))")
            }
        }
        // Double-precision forward for this channel
        func yD(_ A: Double) -> Double {
            var s = 0.0
            for b in 0..<c.B {
                var hst = [Double](repeating: 0, count: c.N)
                for n in 0..<c.N { hst[n] = Double(x.h0[(b * c.N + n) * c.ED + d]) }
                for t in 0..<c.L {
                    let row = b * c.L + t
                    let dl = Double(x.delta[row * c.ED + d]), uv = Double(x.u[row * c.ED + d])
                    var acc = Double(x.D[d]) * uv
                    for n in 0..<c.N {
                        let an = n * c.ED + d == i ? A : Double(x.At[n * c.ED + d])
                        hst[n] = Foundation.exp(dl * an) * hst[n] + dl * uv * Double(x.xdbl[row * c.ldbc + c.R + n])
                        acc += hst[n] * Double(x.xdbl[row * c.ldbc + c.R + c.N + n])
                    }
                    s += Double(w[row * c.ED + d]) * acc
                }
            }
            return s
        }
        let A0 = Double(x.At[i])
        for h in [1e-3, 1e-4, 1e-5] { print("PROBE double h \(h) fd \((yD(A0 + h) - yD(A0 - h)) / (2 * h))") }
    }
}
