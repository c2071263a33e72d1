import Foundation
import MambaKit
import Testing

/// The vector softplus and log against libm in Double, over the ranges the model feeds them.
@Suite struct FastMathTests {
    @Test func softplusMatchesLibm() {
        var worstRel = 0.0
        var x: Float = -40
        while x <= 40 {
            var v = F16x()
            for i in 0..<16 { v[i] = x + Float(i) * 0.0013 }
            let got = softplusSIMD(v)
            for i in 0..<16 {
                let xi = Double(v[i])
                let want = xi > 20 ? xi : log1p(exp(xi))
                let rel = abs(Double(got[i]) - want) / want
                worstRel = max(worstRel, rel)
            }
            x += 0.0173
        }
        // A few ulp of Float (2^-23 ≈ 1.2e-7); torch's own softplus is a float expression with similar error.
        #expect(worstRel < 6e-7, "worst relative error \(worstRel)")
    }

    @Test func logMatchesLibm() {
        var worstRel = 0.0
        var x: Float = 1
        while x <= 2 {
            var v = F16x()
            for i in 0..<16 { v[i] = x + Float(i) * 1e-5 }
            let got = logSIMD(v)
            for i in 0..<16 {
                let want = log(Double(v[i]))
                if want == 0 { #expect(got[i] == 0); continue }
                worstRel = max(worstRel, abs(Double(got[i]) - want) / abs(want))
            }
            x += 0.00037
        }
        #expect(worstRel < 6e-7, "worst relative error \(worstRel)")
    }

    @Test func expm1KeepsRelativePrecisionNearZero() {
        var worstRel = 0.0
        for e in stride(from: -30.0, through: 3.0, by: 0.05) {
            var v = F16x()
            for i in 0..<16 { v[i] = Float((i % 2 == 0 ? 1 : -1) * pow(2, e) * (1 + Double(i) / 37)) }
            let got = expm1SIMD(v)
            for i in 0..<16 where abs(v[i]) < 80 {
                let want = expm1(Double(v[i]))
                worstRel = max(worstRel, abs(Double(got[i]) - want) / abs(want))
            }
        }
        // sigmoid(pre) = −expm1(−Δ) for Δ down to 1e-9 must not cancel (1 − e^−Δ would lose every digit).
        #expect(worstRel < 6e-7, "worst relative error \(worstRel)")
    }
}
