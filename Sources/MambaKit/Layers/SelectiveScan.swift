/// The selective scan of Mamba-1 (arXiv 2312.00752 §3.2, Algorithm 2; state-spaces/mamba `selective_scan_ref`,
/// HF `MambaMixer.slow_forward`), discretised with zero-order hold for A and Euler for B:
///
///     h_t = exp(Δ_t ⊙ A) ⊙ h_{t−1} + (Δ_t ⊙ u_t) ⊗ B_t        h: (N, ED) per sequence
///     y_t = Σ_n C_t[n] · h_t[n, :] + D ⊙ u_t
///
/// Shapes: u, Δ, y `(B, L, ED)`; B_t and C_t rows of stride `ldbc` (they are columns of x_proj's output);
/// A is passed transposed, `At (N, ED)` = −exp(A_log)ᵀ, so that every state row is contiguous over channels;
/// the state is `(B, N, ED)` (the transpose of HF's `(B, ED, N)`). D `(ED)`.
///
/// This file is the reference: plain loops, Double accumulation of y, backward from the full state history
/// (memory B·L·N·ED). `SelectiveScanSIMD` is the fast kernel with the same contract and chunked recomputation.
public struct ScanDims: Sendable, Equatable {
    public var B: Int, L: Int, ED: Int, N: Int
    /// Row stride of the B and C matrices.
    public var ldbc: Int
    public init(B: Int, L: Int, ED: Int, N: Int, ldbc: Int) {
        self.B = B; self.L = L; self.ED = ED; self.N = N; self.ldbc = ldbc
    }
}

public enum SelectiveScan {
    /// y = scan(u, Δ); `h0` (B, N, ED) or nil for zeros; `hOut` (B, N, ED) receives the final state (may alias h0).
    public static func forwardReference(
        y: UnsafeMutablePointer<Float>, hOut: UnsafeMutablePointer<Float>?,
        u: UnsafePointer<Float>, delta: UnsafePointer<Float>, At: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, dims s: ScanDims
    ) {
        let (L, ED, N) = (s.L, s.ED, s.N)
        var h = [Float](repeating: 0, count: N * ED)
        for b in 0..<s.B {
            for i in 0..<(N * ED) { h[i] = h0?[b * N * ED + i] ?? 0 }
            for t in 0..<L {
                let row = b * L + t
                for d in 0..<ED {
                    let dl = delta[row * ED + d], uv = u[row * ED + d]
                    var acc = Double(D[d]) * Double(uv)
                    for n in 0..<N {
                        let a = expf(dl * At[n * ED + d])
                        let hn = a * h[n * ED + d] + dl * uv * Bm[row * s.ldbc + n]
                        h[n * ED + d] = hn
                        acc += Double(hn) * Double(Cm[row * s.ldbc + n])
                    }
                    y[row * ED + d] = Float(acc)
                }
            }
            if let hOut { for i in 0..<(N * ED) { hOut[b * N * ED + i] = h[i] } }
        }
    }

    /// Accumulates the gradients of a loss with upstream `dy` into du, dΔ `(B, L, ED)`, dAt `(N, ED)`,
    /// dB and dC (rows of stride `ldbc`), dD `(ED)`. Keeps the whole state history.
    public static func backwardReference(
        du: UnsafeMutablePointer<Float>, ddelta: UnsafeMutablePointer<Float>, dAt: UnsafeMutablePointer<Float>,
        dBm: UnsafeMutablePointer<Float>, dCm: UnsafeMutablePointer<Float>, dD: UnsafeMutablePointer<Float>,
        dy: UnsafePointer<Float>,
        u: UnsafePointer<Float>, delta: UnsafePointer<Float>, At: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, dims s: ScanDims
    ) {
        let (L, ED, N) = (s.L, s.ED, s.N)
        let NE = N * ED
        var hs = [Float](repeating: 0, count: (L + 1) * NE)
        var g = [Float](repeating: 0, count: NE)
        for b in 0..<s.B {
            for i in 0..<NE { hs[i] = h0?[b * NE + i] ?? 0 }
            for t in 0..<L {
                let row = b * L + t
                for n in 0..<N {
                    for d in 0..<ED {
                        let dl = delta[row * ED + d]
                        let a = expf(dl * At[n * ED + d])
                        hs[(t + 1) * NE + n * ED + d] = a * hs[t * NE + n * ED + d]
                            + dl * u[row * ED + d] * Bm[row * s.ldbc + n]
                    }
                }
            }
            for i in 0..<NE { g[i] = 0 }  // g holds exp(Δ_{t+1}A) ⊙ ∂L/∂h_{t+1}
            for t in stride(from: L - 1, through: 0, by: -1) {
                let row = b * L + t
                for d in 0..<ED {
                    let dl = delta[row * ED + d], uv = u[row * ED + d], gy = dy[row * ED + d]
                    dD[d] += gy * uv
                    var duAcc = D[d] * gy
                    var ddl: Float = 0
                    for n in 0..<N {
                        let i = n * ED + d
                        let a = expf(dl * At[i])
                        let bn = Bm[row * s.ldbc + n], cn = Cm[row * s.ldbc + n]
                        let gh = g[i] + gy * cn            // ∂L/∂h_t
                        dCm[row * s.ldbc + n] += gy * hs[(t + 1) * NE + i]
                        dBm[row * s.ldbc + n] += gh * dl * uv
                        duAcc += gh * dl * bn
                        let gah = gh * a * hs[t * NE + i]
                        ddl += gah * At[i] + gh * bn * uv
                        dAt[i] += gah * dl
                        g[i] = gh * a
                    }
                    du[row * ED + d] += duAcc
                    ddelta[row * ED + d] += ddl
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
