import Foundation
import MambaKit
import Testing

@Suite struct LayerGradientScratchProbe {
    @Test func probe() {
        let pres: [Float] = [-20, -17, -15, -12, -10, -9.2, -8, -6.9, -5, -3, -1, 0, 3]
        let n = pres.count
        let d = FloatBuffer(pres)
        Activations.softplusInPlace(d.ptr, count: n)
        let g = FloatBuffer(count: n)
        let ones = FloatBuffer([Float](repeating: 1, count: n))
        Activations.softplusBackward(dpre: g.ptr, ddelta: ones.ptr, delta: d.ptr, count: n)
        for i in 0..<n {
            let exact = 1 / (1 + Foundation.exp(-Double(pres[i])))
            print("PROBE pre \(pres[i]) delta \(d[i]) got \(g[i]) exact \(exact) rel \(abs(Double(g[i]) - exact) / exact)")
        }
        withExtendedLifetime((d, g, ones)) {}
    }
}
