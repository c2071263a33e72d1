/// RMSNorm (HF `MambaRMSNorm`, mamba_ssm `RMSNorm`): `out = w ⊙ x · rstd`, `rstd = 1/√(mean(x²) + eps)`.
///
/// Saves `rstd` per row for backward; the input itself is the residual stream the model keeps anyway.
/// Mean of squares is accumulated in Double. Backward:
/// `dx = rstd·(w⊙dy) − x·rstd³·⟨w⊙dy, x⟩/D`, `dw += Σ_rows dy ⊙ x·rstd`.
public enum RMSNorm {
    /// out `(M, D)`, rstd `(M)`.
    public static func forward(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?,
                               inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                               M: Int, D: Int, eps: Float) {
        for m in 0..<M {
            let x = inp + m * D
            var ss = 0.0
            for j in 0..<D { ss += Double(x[j]) * Double(x[j]) }
            let r = Float(1 / (ss / Double(D) + Double(eps)).squareRoot())
            rstd?[m] = r
            let o = out + m * D
            for j in 0..<D { o[j] = weight[j] * (x[j] * r) }
        }
    }

    /// dinp += ∂L/∂x; dweight += ∂L/∂w.
    public static func backward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                weight: UnsafePointer<Float>, M: Int, D: Int) {
        for m in 0..<M {
            let x = inp + m * D
            let dy = dout + m * D
            let r = rstd[m]
            var dot = 0.0
            for j in 0..<D { dot += Double(weight[j] * dy[j]) * Double(x[j]) }
            let c = Float(dot / Double(D)) * r * r * r
            let dx = dinp + m * D
            for j in 0..<D {
                dx[j] += r * weight[j] * dy[j] - c * x[j]
                dweight[j] += dy[j] * x[j] * r
            }
        }
    }
}
