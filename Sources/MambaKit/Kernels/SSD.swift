import COpenBLAS

/// The state-space dual (SSD) scan of Mamba-2 (arXiv 2405.21060 §6–7; state-spaces/mamba `ssd_minimal.py`,
/// `mamba2.py`; HF `Mamba2Mixer.torch_forward`, whose cache path is the recurrence). Per sequence b and head h of group
/// g = h / (H/G), with S_{−1} = h0 (or 0), S (P × N), x_t ∈ R^P, B_t, C_t ∈ R^N (those of group g):
///
///     S_t = exp(Δ_t·A_h)·S_{t−1} + Δ_t · x_t ⊗ B_t          y_t = S_t·C_t + D_h·x_t
///
/// Chunked (training): a chunk of q ≤ Q steps with cum_t = Σ_{τ≤t} Δ_τ·A (inside the chunk), e_t = exp(cum_t),
/// w_s = exp(cum_end − cum_s)·Δ_s, and M = C Bᵀ ∘ exp(cum_t − cum_s) ∘ Δ_s (lower triangular, s ≤ t):
///
///     Y = (M + D·I) X + diag(e) C S_inᵀ          S_out = e_end·S_in + Xᵀ diag(w) B
///
/// C Bᵀ is computed once per (b, group, chunk) and shared by the group's heads. Decays are exp of differences of
/// in-chunk cumulative sums, summed in Double and kept as hi + lo Floats (no cancellation in the difference), taken
/// only for s ≤ t (exp never sees a positive argument); a decay below e^−60 is exactly 0 (see `expNonPositive`).
///
/// Products: triangular ones (C Bᵀ, M X, dY Xᵀ, Mᵀ dY, dCB B, dCBᵀ C) run on our register-tiled AVX2 kernel
/// (`tileProduct`, 6 × 16 tiles, skipping the zero half); the full ones (Ce Sᵀ, Xᵀ diag(w) B and the backward's four)
/// run on it too, or on `cblas_sgemm` where OpenBLAS has AVX-512 kernels (`SSD.blasProducts`).
///
/// Saved for backward: the state entering every chunk, `chunkStates` (B, ⌈L/Q⌉, H, P, N) — the only memory that grows
/// with L. Forward otherwise needs per-thread scratch of O(Q² + (Q + N·H/G)·P) floats; backward adds one transient
/// buffer of the size of `chunkStates` (the gradient leaving every chunk) and the same kind of per-thread scratch.
///
/// Backward (dY = ∂ℓ/∂y; dS_out = ∂ℓ/∂S_out of a chunk), in two phases:
///   1. per (b, h), chunks in reverse: dS_in = e_end·dS_out + dYᵀ diag(e) C; it is dS_out of the chunk before; the
///      last chunk's dS_out is dhOut, the first chunk's dS_in goes to dh0. Every dS_out is kept.
///   2. per (b, group, chunk), the group's heads in order:
///      dX += (M + D·I)ᵀ dY + diag(w) B dS_outᵀ;   dD += Σ ⟨dY_t, X_t⟩;   dM = dY Xᵀ (lower);
///      dCB += dM ∘ exp(segsum) ∘ Δ_s (summed over the heads, as C Bᵀ is shared);
///      dΔ_s += Σ_t dM_ts·(C Bᵀ)_ts·exp(cum_t − cum_s);   y_off, with dCe = dY S_in: dC_t += e_t·dCe_t;
///      S_out, with T = X dS_out: dB_s += w_s·T_s, dw_s = ⟨B_s, T_s⟩, dΔ_s += exp(cum_end − cum_s)·dw_s;
///      the decays, through a_τ = Δ_τ·A (each decay is exp of a sum of a_τ over a segment):
///      da_τ = Σ_{t≥τ>s} dM_ts M_ts + Σ_{t≥τ} e_t⟨dCe_t, C_t⟩ + Σ_{s<τ} w_s dw_s + e_end⟨dS_out, S_in⟩,
///      dΔ_τ += A·da_τ, dA += Σ Δ_τ·da_τ;   after the heads dC += dCB B and dB += dCBᵀ C.
///
/// Threads (`Parallel.forRanges`): forward over (b, h) pairs, backward phase 1 over (b, h), phase 2 over
/// (b, group, chunk). Every output and partial sum is computed by the same operations whatever the split, and dA, dD
/// add (b, chunk) partials in a fixed order: the bits depend neither on the run nor on the thread count.
///
/// `forwardReference` / `backwardReference` are the plain recurrence in Double (the oracle of the tests); `step` is
/// the recurrence for one token, vectorised over N, for generation.
public struct SSDDims: Sendable, Equatable, CustomStringConvertible {
    /// Batch, length, heads, head dim, groups, state size, chunk size (Q).
    public var B: Int, L: Int, H: Int, P: Int, G: Int, N: Int, chunk: Int

    public init(B: Int, L: Int, H: Int, P: Int, G: Int, N: Int, chunk: Int) {
        precondition(B >= 0 && L >= 0 && H > 0 && P > 0 && G > 0 && N > 0 && chunk > 0, "SSDDims: bad sizes")
        precondition(H % G == 0, "SSDDims: heads \(H) not a multiple of groups \(G)")
        self.B = B; self.L = L; self.H = H; self.P = P; self.G = G; self.N = N; self.chunk = chunk
    }

    /// ⌈L/Q⌉.
    public var chunks: Int { (L + chunk - 1) / chunk }
    /// Heads per group, H/G.
    public var headsPerGroup: Int { H / G }

    public var description: String { "B\(B) L\(L) H\(H) P\(P) G\(G) N\(N) Q\(chunk)" }
}

public enum SSD {
    /// Whether the full (non-triangular) chunk products go through OpenBLAS's `cblas_sgemm` instead of our AVX2 tile
    /// kernel. On by default when OpenBLAS runs its AVX-512 kernels, where its small-matrix sgemm does a 64³ product
    /// in half the time of the tile kernel (measured 3.0 vs 6.3 µs); off otherwise (its generic kernels are 3× slower
    /// than the tile kernel). Results differ only by rounding. Set it before work starts, like `Parallel.setThreads`.
    nonisolated(unsafe) public static var blasProducts: Bool = openBLASHasAVX512

    /// Whether OpenBLAS picked an AVX-512 kernel set in this process.
    public static var openBLASHasAVX512: Bool {
        let name = String(cString: openblas_get_corename()).lowercased()
        return ["skylakex", "cooperlake", "sapphirerapids"].contains { name.contains($0) }
    }

    /// Floats of the saved chunk-start states: (B, ⌈L/Q⌉, H, P, N).
    public static func stateCount(dims d: SSDDims) -> Int { d.B * d.chunks * d.H * d.P * d.N }

    // MARK: - Forward

    /// Chunked SSD forward.
    /// - y: (B, L, H·P), row stride `ldy`. Written.
    /// - hOut: (B, H, P, N), the state after the last step, or nil. May alias `h0`.
    /// - x: (B, L, H·P), row stride `ldx` (head h at columns h·P..<(h+1)·P).
    /// - dt: (B, L, H), row stride `lddt`: Δ after softplus and clamping (positive).
    /// - A: (H), negative (−exp(A_log)).
    /// - Bm, Cm: (B, L, G·N) sharing row stride `ldbc` (they may be columns of one wider buffer).
    /// - D: (H).
    /// - h0: (B, H, P, N) initial state, or nil for zeros.
    /// - chunkStates: (B, ⌈L/Q⌉, H, P, N) receives the state entering each chunk (for `backward`), or nil.
    /// - scratch: grown to (threads)·O(Q² + (Q + N·H/G)·P) floats.
    public static func forward(
        y: UnsafeMutablePointer<Float>, ldy: Int, hOut: UnsafeMutablePointer<Float>?,
        x: UnsafePointer<Float>, ldx: Int, dt: UnsafePointer<Float>, lddt: Int, A: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, chunkStates: UnsafeMutablePointer<Float>?, dims d: SSDDims, scratch: Scratch
    ) {
        guard d.B > 0 else { return }
        let inp = Inputs(x: x, ldx: ldx, dt: dt, lddt: lddt, A: A, Bm: Bm, Cm: Cm, ldbc: ldbc, D: D, d: d)
        let layout = ForwardLayout(d)
        let items = d.B * d.H
        let workers = Parallel.workers(for: items)
        let base = scratch.floats(workers * layout.total)
        Parallel.forRanges(items) { wk, lo, hi in
            let work = ForwardWork(layout, base + wk * layout.total)
            var item = lo
            while item < hi {
                // A run of consecutive heads of one (b, group) shares C Bᵀ.
                let b = item / d.H, h = item % d.H
                let groupEnd = b * d.H + (h / d.headsPerGroup + 1) * d.headsPerGroup
                let end = min(hi, groupEnd)
                forwardHeads(inp, work, b: b, heads: h..<(h + end - item), y: y, ldy: ldy, hOut: hOut, h0: h0,
                             chunkStates: chunkStates)
                item = end
            }
        }
    }

    /// Forward of one sequence b for consecutive heads of one group, chunk after chunk. Out of line (as are the other
    /// per-item bodies): inlined into `forRanges`' single-thread call it compiled to code that took 35 % more time.
    @inline(never)
    private static func forwardHeads(
        _ inp: Inputs, _ w: ForwardWork, b: Int, heads: Range<Int>,
        y: UnsafeMutablePointer<Float>, ldy: Int, hOut: UnsafeMutablePointer<Float>?,
        h0: UnsafePointer<Float>?, chunkStates: UnsafeMutablePointer<Float>?
    ) {
        let d = inp.d
        let (P, N, Q, H) = (d.P, d.N, d.chunk, d.H)
        let (Pp, Qp) = (pad16(P), pad16(Q))
        let g = heads.lowerBound / d.headsPerGroup
        let nc = d.chunks
        // States of these heads, transposed: Sᵀ (N × Pp), zero beyond P.
        for (k, h) in heads.enumerated() {
            let st = w.St + k * N * Pp
            st.update(repeating: 0, count: N * Pp)
            if let h0 { transpose(h0 + (b * H + h) * P * N, rows: P, cols: N, ld: N, into: st, ld: Pp) }
        }
        for c in 0..<nc {
            let t0 = c * Q, q = min(Q, d.L - t0)
            let row0 = b * d.L + t0
            let Bg = inp.Bm + row0 * inp.ldbc + g * N, Cg = inp.Cm + row0 * inp.ldbc + g * N
            // Bᵀ (N × Qp) and CB = C Bᵀ (q × Qp, lower triangle), shared by the heads.
            transpose(Bg, rows: q, cols: N, ld: inp.ldbc, into: w.Bt, ld: Qp, zeroTo: Qp)
            product(w.CB, ldo: Qp, m: q, n: q, .store, lowerTriangle: true,
                    Operands(a: Cg, rs: inp.ldbc, cs: 1, b: w.Bt, ld: Qp, k: N))
            for (k, h) in heads.enumerated() {
                let st = w.St + k * N * Pp
                if let chunkStates {
                    transpose(st, rows: N, cols: P, ld: Pp, into: chunkStates + ((b * nc + c) * H + h) * P * N, ld: N)
                }
                let v = w.vec
                let eEnd = chunkDecays(inp, v, b: b, h: h, t0: t0, q: q)
                buildM(v, CB: w.CB, M: w.M, q: q, Qp: Qp, diagonal: inp.D[h])
                // Ce = diag(e^cum) C (q × N).
                for t in 0..<q { scale(Cg + t * inp.ldbc, by: v.e[t], count: N, into: w.Ce + t * N) }
                let (X, ldX) = operandRows(inp.x + row0 * inp.ldx + h * P, ld: inp.ldx, rows: q, cols: P, pad: w.Xp)
                // y = (M + D·I) X + Ce Sᵀ.
                product(y + row0 * ldy + h * P, ldo: ldy, m: q, n: P, .store,
                        Operands(a: w.M, rs: Qp, cs: 1, b: X, ld: ldX, k: q, shape: .upToRow),
                        Operands(a: w.Ce, rs: N, cs: 1, b: st, ld: Pp, k: N))
                // Sᵀ ← e_end·Sᵀ + (Bᵀ diag(w)) X.
                scaleColumns(w.Bt, rows: N, ld: Qp, by: v.w, into: w.Bwt)
                product(st, ldo: Pp, m: N, n: P, .scaleAdd(eEnd),
                        Operands(a: w.Bwt, rs: Qp, cs: 1, b: X, ld: ldX, k: q))
            }
        }
        if let hOut {
            for (k, h) in heads.enumerated() {
                transpose(w.St + k * N * Pp, rows: N, cols: P, ld: Pp, into: hOut + (b * H + h) * P * N, ld: N)
            }
        }
    }

    // MARK: - Backward

    /// Backward of `forward`: ACCUMULATES (+=) the gradients of a loss whose gradient with respect to y is `dy`
    /// (and with respect to hOut is `dhOut`, when given).
    /// - dx: (B, L, H·P), row stride `lddx`.
    /// - ddt: (B, L, H), row stride `ldddt`.
    /// - dA, dD: (H).
    /// - dBm, dCm: (B, L, G·N) sharing row stride `lddbc`; only columns g·N..<(g+1)·N of each are touched, so they
    ///   may be interleaved with dx in one wider buffer.
    /// - dh0: (B, H, P, N), or nil.
    /// - dy: (B, L, H·P), row stride `ldy`; dhOut: (B, H, P, N) or nil (zero).
    /// - x, dt, A, Bm, Cm, D: as given to `forward`; chunkStates: what `forward` saved from the same inputs (its first
    ///   chunk holds h0, so h0 itself is not needed here).
    /// - scratch: grown to B·⌈L/Q⌉·H·P·16⌈N/16⌉ + 2·B·⌈L/Q⌉·H + (threads)·O(Q² + Q·(P + N)) floats.
    public static func backward(
        dx: UnsafeMutablePointer<Float>, lddx: Int, ddt: UnsafeMutablePointer<Float>, ldddt: Int,
        dA: UnsafeMutablePointer<Float>, dBm: UnsafeMutablePointer<Float>, dCm: UnsafeMutablePointer<Float>,
        lddbc: Int, dD: UnsafeMutablePointer<Float>, dh0: UnsafeMutablePointer<Float>?,
        dy: UnsafePointer<Float>, ldy: Int, dhOut: UnsafePointer<Float>?,
        x: UnsafePointer<Float>, ldx: Int, dt: UnsafePointer<Float>, lddt: Int, A: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int, D: UnsafePointer<Float>,
        chunkStates: UnsafePointer<Float>, dims d: SSDDims, scratch: Scratch
    ) {
        guard d.B > 0, d.L > 0 else {
            // No steps: hOut = h0, so dh0 += dhOut.
            if let dh0, let dhOut { for i in 0..<(d.B * d.H * d.P * d.N) { dh0[i] += dhOut[i] } }
            return
        }
        let inp = Inputs(x: x, ldx: ldx, dt: dt, lddt: lddt, A: A, Bm: Bm, Cm: Cm, ldbc: ldbc, D: D, d: d)
        let nc = d.chunks
        let Np = pad16(d.N)
        let slot = d.P * Np  // one dS_out in the transient buffer, P × Np
        let la = ChainLayout(d), lb = BackwardLayout(d)
        let itemsA = d.B * d.H, itemsB = d.B * d.G * nc
        let perThread = max(la.total, lb.total)
        let workers = max(Parallel.workers(for: itemsA), Parallel.workers(for: itemsB))
        let dSout = scratch.floats(itemsB * d.headsPerGroup * slot + 2 * itemsA * nc + workers * perThread)
        let partials = dSout + itemsB * d.headsPerGroup * slot  // (B, nc, H) of dA, then of dD
        let base = partials + 2 * itemsA * nc

        // Phase 1: the gradient leaving every chunk, per (b, h), chunks in reverse.
        Parallel.forRanges(itemsA) { wk, lo, hi in
            let w = ChainWork(la, base + wk * perThread)
            for item in lo..<hi {
                backwardChain(inp, w, b: item / d.H, h: item % d.H, dy: dy, ldy: ldy, dhOut: dhOut, dh0: dh0,
                              dSout: dSout)
            }
        }

        // Phase 2: everything else, per (b, group, chunk).
        Parallel.forRanges(itemsB) { wk, lo, hi in
            let w = BackwardWork(lb, base + wk * perThread)
            for item in lo..<hi {
                let c = item % nc, g = (item / nc) % d.G, b = item / (nc * d.G)
                backwardChunk(inp, w, b: b, g: g, c: c, dx: dx, lddx: lddx, ddt: ddt, ldddt: ldddt,
                              dBm: dBm, dCm: dCm, lddbc: lddbc, dy: dy, ldy: ldy,
                              dSout: dSout, chunkStates: chunkStates, partials: partials)
            }
        }

        // dA, dD: the (b, chunk) partials in a fixed order.
        for h in 0..<d.H {
            var sa = 0.0, sd = 0.0
            for b in 0..<d.B {
                for c in 0..<nc {
                    sa += Double(partials[(b * nc + c) * d.H + h])
                    sd += Double(partials[itemsA * nc + (b * nc + c) * d.H + h])
                }
            }
            dA[h] += Float(sa)
            dD[h] += Float(sd)
        }
    }

    /// Backward phase 1 for one (b, h): the gradient leaving every chunk, chunks in reverse, into dSout
    /// (B, nc, H, P, Np); dS_in of the first chunk goes to dh0.
    @inline(never)
    private static func backwardChain(
        _ inp: Inputs, _ w: ChainWork, b: Int, h: Int, dy: UnsafePointer<Float>, ldy: Int,
        dhOut: UnsafePointer<Float>?, dh0: UnsafeMutablePointer<Float>?, dSout: UnsafeMutablePointer<Float>
    ) {
        let d = inp.d
        let (P, N, Np, nc) = (d.P, d.N, pad16(d.N), d.chunks)
        let g = h / d.headsPerGroup
        let slot = P * Np
        let gs = w.g
        gs.update(repeating: 0, count: slot)
        if let dhOut { copyRows(dhOut + (b * d.H + h) * P * N, rows: P, cols: N, ld: N, into: gs, ld: Np) }
        for c in stride(from: nc - 1, through: 0, by: -1) {
            let t0 = c * d.chunk, q = min(d.chunk, d.L - t0)
            let row0 = b * d.L + t0
            let eEnd = chunkDecays(inp, w.vec, b: b, h: h, t0: t0, q: q)
            let Cg = inp.Cm + row0 * inp.ldbc + g * N
            for t in 0..<q {
                scale(Cg + t * inp.ldbc, by: w.vec.e[t], count: N, into: w.Ce + t * Np)
                (w.Ce + t * Np + N).update(repeating: 0, count: Np - N)
            }
            (dSout + ((b * nc + c) * d.H + h) * slot).update(from: gs, count: slot)
            // dS_in = e_end·dS_out + dYᵀ Ce.
            product(gs, ldo: Np, m: P, n: N, .scaleAdd(eEnd),
                    Operands(a: dy + row0 * ldy + h * P, rs: 1, cs: ldy, b: w.Ce, ld: Np, k: q))
        }
        if let dh0 {
            let o = dh0 + (b * d.H + h) * P * N
            for p in 0..<P { for n in 0..<N { o[p * N + n] += gs[p * Np + n] } }
        }
    }

    /// Backward of one chunk of one (b, group): the heads in order, then the group's dB, dC.
    @inline(never)
    private static func backwardChunk(
        _ inp: Inputs, _ w: BackwardWork, b: Int, g: Int, c: Int,
        dx: UnsafeMutablePointer<Float>, lddx: Int, ddt: UnsafeMutablePointer<Float>, ldddt: Int,
        dBm: UnsafeMutablePointer<Float>, dCm: UnsafeMutablePointer<Float>, lddbc: Int,
        dy: UnsafePointer<Float>, ldy: Int,
        dSout: UnsafePointer<Float>, chunkStates: UnsafePointer<Float>, partials: UnsafeMutablePointer<Float>
    ) {
        let d = inp.d
        let (P, N, Q, H) = (d.P, d.N, d.chunk, d.H)
        let (Pp, Np, Qp) = (pad16(P), pad16(N), pad16(Q))
        let nc = d.chunks
        let t0 = c * Q, q = min(Q, d.L - t0)
        let row0 = b * d.L + t0
        let ldbc = inp.ldbc
        let Bg = inp.Bm + row0 * ldbc + g * N, Cg = inp.Cm + row0 * ldbc + g * N
        let (Bop, ldB) = operandRows(Bg, ld: ldbc, rows: q, cols: N, pad: w.Bp)
        let (Cop, ldC) = operandRows(Cg, ld: ldbc, rows: q, cols: N, pad: w.Cp)
        transpose(Bg, rows: q, cols: N, ld: ldbc, into: w.Bt, ld: Qp, zeroTo: Qp)
        product(w.CB, ldo: Qp, m: q, n: q, .store, lowerTriangle: true,
                Operands(a: Cg, rs: ldbc, cs: 1, b: w.Bt, ld: Qp, k: N))
        w.dCB.update(repeating: 0, count: q * Qp)
        w.dBacc.update(repeating: 0, count: q * Np)
        w.dCacc.update(repeating: 0, count: q * Np)
        let v = w.vec
        for h in (g * d.headsPerGroup)..<((g + 1) * d.headsPerGroup) {
            let eEnd = chunkDecays(inp, v, b: b, h: h, t0: t0, q: q)
            let xh = inp.x + row0 * inp.ldx + h * P, dyh = dy + row0 * ldy + h * P
            let (X, ldX) = operandRows(xh, ld: inp.ldx, rows: q, cols: P, pad: w.Xp)
            let (dY, ldY) = operandRows(dyh, ld: ldy, rows: q, cols: P, pad: w.dYp)
            transpose(xh, rows: q, cols: P, ld: inp.ldx, into: w.Xt, ld: Qp, zeroTo: Qp)
            let dS = dSout + ((b * nc + c) * H + h) * P * Np       // P × Np
            transpose(dS, rows: P, cols: N, ld: Np, into: w.dSt, ld: Pp, zeroTo: Pp)
            let Sraw = chunkStates + ((b * nc + c) * H + h) * P * N
            let (S, ldS) = operandRows(Sraw, ld: N, rows: P, cols: N, pad: w.Sp)

            // dM = dY Xᵀ (lower), then M, dCB, dΔ and daM from the intra-chunk term.
            product(w.dM, ldo: Qp, m: q, n: q, .store, lowerTriangle: true,
                    Operands(a: dY, rs: ldY, cs: 1, b: w.Xt, ld: Qp, k: P))
            intraChunkGradients(v, CB: w.CB, dM: w.dM, M: w.M, dCB: w.dCB, q: q, Qp: Qp)
            for t in 0..<q { w.M[t * Qp + t] += inp.D[h] }

            // dX += (M + D·I)ᵀ dY + diag(w) B dS_outᵀ.
            scaleColumns(w.Bt, rows: N, ld: Qp, by: v.w, into: w.Bwt)
            product(dx + row0 * lddx + h * P, ldo: lddx, m: q, n: P, .add,
                    Operands(a: w.M, rs: 1, cs: Qp, b: dY, ld: ldY, k: q, shape: .fromRow),
                    Operands(a: w.Bwt, rs: 1, cs: Qp, b: w.dSt, ld: Pp, k: N))

            // T = X dS_out: dB_s += w_s T_s, dw_s = ⟨B_s, T_s⟩.
            product(w.T, ldo: Np, m: q, n: N, .store, Operands(a: X, rs: ldX, cs: 1, b: dS, ld: Np, k: P))
            for s in 0..<q {
                let ws = v.w[s]
                v.dw[s] = dot(Bop + s * ldB, w.T + s * Np, N)
                axpy(ws, w.T + s * Np, w.dBacc + s * Np, N)
            }
            // dCe = dY S_in: dC_t += e_t dCe_t; e_t's share of the decay gradient, e_t ⟨dCe_t, C_t⟩.
            product(w.T, ldo: Np, m: q, n: N, .store, Operands(a: dY, rs: ldY, cs: 1, b: S, ld: ldS, k: P))
            for t in 0..<q {
                let et = v.e[t]
                v.yoff[t] = et * dot(Cop + t * ldC, w.T + t * Np, N)
                axpy(et, w.T + t * Np, w.dCacc + t * Np, N)
            }
            // S_out = e_end·S_in + Σ w_s x_s ⊗ B_s: dΔ_s through w_s, and e_end's share of the decay gradient.
            let dEnd = Double(eEnd * frobenius(dS, ld: Np, S, ld: ldS, rows: P, cols: N))
            for s in 0..<q { v.ddt[s] += v.wdec[s] * v.dw[s] }
            // da_τ = ∂ℓ/∂(Δ_τ·A) (Double): decays inside M (daM), e_t for t ≥ τ (suffix sum), w_s for s < τ (prefix
            // sum), e_end for every τ. Then dΔ_τ += A·da_τ and dA += Σ Δ_τ·da_τ.
            var before = 0.0
            for s in 0..<q {
                v.acc[s] = Float(before)
                before += Double(v.w[s]) * Double(v.dw[s])
            }
            var sD: Float = 0
            for t in 0..<q { sD += dot(X + t * ldX, dY + t * ldY, P) }
            let Ah = Double(inp.A[h])
            var after = 0.0, sA = 0.0
            for t in stride(from: q - 1, through: 0, by: -1) {
                after += Double(v.yoff[t])
                let da = Double(v.daM[t]) + after + Double(v.acc[t]) + dEnd
                sA += Double(v.dt[t]) * da
                let o = ddt + (row0 + t) * ldddt + h
                o.pointee += v.ddt[t] + Float(Ah * da)
            }
            partials[(b * nc + c) * H + h] = Float(sA)
            partials[d.B * H * nc + (b * nc + c) * H + h] = sD
        }
        // dC += dCB B, dB += dCBᵀ C (dCB summed over the group's heads).
        product(w.dCacc, ldo: Np, m: q, n: N, .add,
                Operands(a: w.dCB, rs: Qp, cs: 1, b: Bop, ld: ldB, k: q, shape: .upToRow))
        product(w.dBacc, ldo: Np, m: q, n: N, .add,
                Operands(a: w.dCB, rs: 1, cs: Qp, b: Cop, ld: ldC, k: q, shape: .fromRow))
        for t in 0..<q {
            axpy(1, w.dBacc + t * Np, dBm + (row0 + t) * lddbc + g * N, N)
            axpy(1, w.dCacc + t * Np, dCm + (row0 + t) * lddbc + g * N, N)
        }
    }

    // MARK: - Step

    /// One recurrent step per sequence (the exact recurrence, vectorised over N), for generation.
    /// - y: (B, H·P), row stride `ldy`. Written.
    /// - x: (B, H·P), row stride `ldx`; dt: (B, H), row stride `lddt` (after softplus); A, D: (H).
    /// - Bm, Cm: (B, G·N) sharing row stride `ldbc`.
    /// - state: (B, H, P, N), updated in place.
    public static func step(
        y: UnsafeMutablePointer<Float>, ldy: Int, x: UnsafePointer<Float>, ldx: Int,
        dt: UnsafePointer<Float>, lddt: Int, A: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int, D: UnsafePointer<Float>,
        state: UnsafeMutablePointer<Float>, B: Int, H: Int, P: Int, G: Int, N: Int
    ) {
        precondition(H % G == 0, "SSD.step: heads \(H) not a multiple of groups \(G)")
        let hpg = H / G
        // One (b, h) costs ~P·N·0.4 ns; keep ≥ ~20 µs per thread.
        Parallel.forRanges(B * H, grain: max(1, 50_000 / (P * N))) { _, lo, hi in
            for item in lo..<hi {
                let b = item / H, h = item % H, g = h / hpg
                let delta = dt[b * lddt + h]
                let a = expf(delta * A[h])
                let bp = Bm + b * ldbc + g * N, cp = Cm + b * ldbc + g * N
                let xp = x + b * ldx + h * P, yp = y + b * ldy + h * P
                let S = state + item * P * N
                for p in 0..<P {
                    let u = delta * xp[p]
                    let row = S + p * N
                    var acc = F16x()
                    var n = 0
                    while n + 16 <= N {
                        let s = load16(row + n) * a + u * load16(bp + n)
                        store16(s, row + n)
                        acc = acc.addingProduct(s, load16(cp + n))
                        n += 16
                    }
                    var tail: Float = 0
                    while n < N {
                        let s = a * row[n] + u * bp[n]
                        row[n] = s
                        tail += s * cp[n]
                        n += 1
                    }
                    yp[p] = acc.sum() + tail + D[h] * xp[p]
                }
            }
        }
    }

    // MARK: - Reference

    /// The plain recurrence, in Double (state, decay and sums), rounded to Float on output: the oracle for the
    /// chunked kernels. Arguments as in `forward` (no chunk states, no scratch); hOut may alias h0. With L = 1 it is
    /// also an exact one-token step.
    public static func forwardReference(
        y: UnsafeMutablePointer<Float>, ldy: Int, hOut: UnsafeMutablePointer<Float>?,
        x: UnsafePointer<Float>, ldx: Int, dt: UnsafePointer<Float>, lddt: Int, A: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, dims d: SSDDims
    ) {
        let (P, N) = (d.P, d.N)
        var S = [Double](repeating: 0, count: P * N)
        for b in 0..<d.B {
            for h in 0..<d.H {
                let g = h / d.headsPerGroup
                for i in 0..<(P * N) { S[i] = h0.map { Double($0[(b * d.H + h) * P * N + i]) } ?? 0 }
                for t in 0..<d.L {
                    let row = b * d.L + t
                    let delta = Double(dt[row * lddt + h])
                    let a = exp(delta * Double(A[h]))
                    for p in 0..<P {
                        let xv = Double(x[row * ldx + h * P + p])
                        var acc = Double(D[h]) * xv
                        for n in 0..<N {
                            let s = a * S[p * N + n] + delta * xv * Double(Bm[row * ldbc + g * N + n])
                            S[p * N + n] = s
                            acc += s * Double(Cm[row * ldbc + g * N + n])
                        }
                        y[row * ldy + h * P + p] = Float(acc)
                    }
                }
                if let hOut { for i in 0..<(P * N) { hOut[(b * d.H + h) * P * N + i] = Float(S[i]) } }
            }
        }
    }

    /// Reverse-time recurrence in Double over the full state history ((L+1)·P·N per (b, h): tests only).
    /// Accumulates exactly what `backward` accumulates; takes h0 instead of chunk states.
    public static func backwardReference(
        dx: UnsafeMutablePointer<Float>, lddx: Int, ddt: UnsafeMutablePointer<Float>, ldddt: Int,
        dA: UnsafeMutablePointer<Float>, dBm: UnsafeMutablePointer<Float>, dCm: UnsafeMutablePointer<Float>,
        lddbc: Int, dD: UnsafeMutablePointer<Float>, dh0: UnsafeMutablePointer<Float>?,
        dy: UnsafePointer<Float>, ldy: Int, dhOut: UnsafePointer<Float>?,
        x: UnsafePointer<Float>, ldx: Int, dt: UnsafePointer<Float>, lddt: Int, A: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, dims d: SSDDims
    ) {
        let (L, P, N) = (d.L, d.P, d.N)
        let PN = P * N
        var hs = [Double](repeating: 0, count: (L + 1) * PN)   // hs[t+1] = S_t, hs[0] = S_{−1}
        var gS = [Double](repeating: 0, count: PN)              // ∂ℓ/∂S_t
        var sumA = [Double](repeating: 0, count: d.H), sumD = [Double](repeating: 0, count: d.H)
        var dBs = [Double](repeating: 0, count: d.B * L * d.G * N), dCs = dBs
        for b in 0..<d.B {
            for h in 0..<d.H {
                let g = h / d.headsPerGroup
                let Ah = Double(A[h]), Dh = Double(D[h])
                func xv(_ row: Int, _ p: Int) -> Double { Double(x[row * ldx + h * P + p]) }
                func bv(_ row: Int, _ n: Int) -> Double { Double(Bm[row * ldbc + g * N + n]) }
                func cv(_ row: Int, _ n: Int) -> Double { Double(Cm[row * ldbc + g * N + n]) }
                for i in 0..<PN { hs[i] = h0.map { Double($0[(b * d.H + h) * PN + i]) } ?? 0 }
                for t in 0..<L {
                    let row = b * L + t
                    let delta = Double(dt[row * lddt + h]), a = exp(delta * Ah)
                    for p in 0..<P {
                        for n in 0..<N {
                            hs[(t + 1) * PN + p * N + n] = a * hs[t * PN + p * N + n] + delta * xv(row, p) * bv(row, n)
                        }
                    }
                }
                for i in 0..<PN { gS[i] = dhOut.map { Double($0[(b * d.H + h) * PN + i]) } ?? 0 }
                for t in stride(from: L - 1, through: 0, by: -1) {
                    let row = b * L + t
                    let delta = Double(dt[row * lddt + h]), a = exp(delta * Ah)
                    let cur = (t + 1) * PN, prev = t * PN
                    var dDelta = 0.0, dDecay = 0.0
                    for p in 0..<P {
                        let gy = Double(dy[row * ldy + h * P + p])
                        sumD[h] += gy * xv(row, p)
                        var dxp = Dh * gy
                        for n in 0..<N {
                            // y_t = S_t C_t + D x_t
                            gS[p * N + n] += gy * cv(row, n)
                            dCs[(row * d.G + g) * N + n] += gy * hs[cur + p * N + n]
                        }
                        for n in 0..<N {
                            // S_t = a S_{t−1} + Δ x ⊗ B
                            let gs = gS[p * N + n]
                            dDecay += gs * hs[prev + p * N + n]
                            dDelta += gs * xv(row, p) * bv(row, n)
                            dxp += gs * delta * bv(row, n)
                            dBs[(row * d.G + g) * N + n] += gs * delta * xv(row, p)
                            gS[p * N + n] = gs * a
                        }
                        dx[row * lddx + h * P + p] += Float(dxp)
                    }
                    // a = exp(Δ A): ∂a/∂Δ = a A, ∂a/∂A = a Δ.
                    ddt[row * ldddt + h] += Float(dDelta + dDecay * a * Ah)
                    sumA[h] += dDecay * a * delta
                }
                if let dh0 { for i in 0..<PN { dh0[(b * d.H + h) * PN + i] += Float(gS[i]) } }
            }
        }
        for h in 0..<d.H {
            dA[h] += Float(sumA[h])
            dD[h] += Float(sumD[h])
        }
        for row in 0..<(d.B * L) {
            for i in 0..<(d.G * N) {
                dBm[row * lddbc + i] += Float(dBs[row * d.G * N + i])
                dCm[row * lddbc + i] += Float(dCs[row * d.G * N + i])
            }
        }
    }
}

// MARK: - Per-chunk pieces

extension SSD {
    /// Pointers and strides of the inputs shared by forward and backward.
    fileprivate struct Inputs {
        let x: UnsafePointer<Float>, ldx: Int
        let dt: UnsafePointer<Float>, lddt: Int
        let A: UnsafePointer<Float>
        let Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, ldbc: Int
        let D: UnsafePointer<Float>
        let d: SSDDims
    }

    /// Per-chunk vectors (Qp each, zero beyond q): Δ, cum as hi + lo, e^cum, exp(cum_end − cum_s), w, and the
    /// backward's per-step terms: the decays' share of ∂ℓ/∂(Δ·A) from M (daM) and from y_off (yoff), dΔ, dw, and a
    /// running column sum.
    fileprivate struct ChunkVectors {
        let dt, hi, lo, e, wdec, w, daM, yoff, ddt, dw, acc: UnsafeMutablePointer<Float>
        static let count = 11
        init(_ p: UnsafeMutablePointer<Float>, _ Qp: Int) {
            dt = p; hi = p + Qp; lo = p + 2 * Qp; e = p + 3 * Qp; wdec = p + 4 * Qp; w = p + 5 * Qp
            daM = p + 6 * Qp; yoff = p + 7 * Qp; ddt = p + 8 * Qp; dw = p + 9 * Qp; acc = p + 10 * Qp
        }
    }

    /// Fills the chunk vectors of head h for rows t0..<t0+q of sequence b, zeroes the backward accumulators,
    /// and returns e_end = exp(cum_{q−1}). cum is summed in Double and kept as hi + lo Floats.
    @inline(never)
    fileprivate static func chunkDecays(_ inp: Inputs, _ v: ChunkVectors, b: Int, h: Int, t0: Int, q: Int) -> Float {
        let Qp = pad16(inp.d.chunk)
        let A = Double(inp.A[h])
        let dtp = inp.dt + (b * inp.d.L + t0) * inp.lddt + h
        var cum = 0.0
        for t in 0..<Qp {
            if t < q {
                let delta = dtp[t * inp.lddt]
                cum += Double(delta) * A
                let hi = Float(cum)
                v.dt[t] = delta
                v.hi[t] = hi
                v.lo[t] = Float(cum - Double(hi))
            } else {
                v.dt[t] = 0; v.hi[t] = 0; v.lo[t] = 0
            }
            v.daM[t] = 0; v.yoff[t] = 0; v.ddt[t] = 0; v.dw[t] = 0; v.acc[t] = 0
        }
        let hiE = F16x(repeating: v.hi[q - 1]), loE = F16x(repeating: v.lo[q - 1])
        for j in stride(from: 0, to: Qp, by: 16) {
            let hi = load16(v.hi + j), lo = load16(v.lo + j)
            store16(expNonPositive(hi + lo), v.e + j)
            let wd = expNonPositive((hiE - hi) + (loE - lo))
            store16(wd, v.wdec + j)
            store16(wd * load16(v.dt + j), v.w + j)
        }
        return v.e[q - 1]
    }

    /// Lanes j0 + l with l ≤ t − j0 set (all bits), the rest clear: the causal mask of row t over columns j0..<j0+16.
    @inline(__always)
    fileprivate static func causalMask(row t: Int, from j0: Int) -> SIMD16<Int32> {
        let lane = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        return ~((SIMD16<Int32>(repeating: Int32(min(t - j0, 16))) &- lane) &>> 31)
    }

    /// exp(cum_t − cum_s) for s = j0..<j0+16, zero for s > t (never exp of a positive argument).
    @inline(__always)
    fileprivate static func segmentDecay(_ v: ChunkVectors, t: Int, j0: Int) -> F16x {
        let keep = causalMask(row: t, from: j0)
        let arg = (F16x(repeating: v.hi[t]) - load16(v.hi + j0)) + (F16x(repeating: v.lo[t]) - load16(v.lo + j0))
        let masked = unsafeBitCast(unsafeBitCast(arg, to: SIMD16<Int32>.self) & keep, to: F16x.self)
        return unsafeBitCast(unsafeBitCast(expNonPositive(masked), to: SIMD16<Int32>.self) & keep, to: F16x.self)
    }

    /// M (q × Qp) = C Bᵀ ∘ exp(segsum) ∘ Δ_s, zero above the diagonal, plus `diagonal` on it.
    @inline(never)
    fileprivate static func buildM(_ v: ChunkVectors, CB: UnsafePointer<Float>, M: UnsafeMutablePointer<Float>,
                                   q: Int, Qp: Int, diagonal: Float) {
        for t in 0..<q {
            var j0 = 0
            while j0 <= t {
                let e = segmentDecay(v, t: t, j0: j0)
                store16(load16(CB + t * Qp + j0) * e * load16(v.dt + j0), M + t * Qp + j0)
                j0 += 16
            }
            while j0 < Qp { store16(F16x(), M + t * Qp + j0); j0 += 16 }
            M[t * Qp + t] += diagonal
        }
    }

    /// The intra-chunk term's gradients, given dM = dY Xᵀ: writes M (without D), adds dM ∘ exp(segsum) ∘ Δ_s to dCB
    /// and Σ_t dM·CB·exp(segsum) to v.ddt, and sets v.daM[τ] = Σ_{t≥τ} Σ_{s<τ} dM_ts·M_ts, the share of ∂ℓ/∂(Δ_τ·A)
    /// of the decays exp(cum_t − cum_s) (a_τ lies in the segment s < τ ≤ t). Summed block by block (rows from the last
    /// up, a running column sum) rather than as Σ_s − Σ_t per step and a cumulative sum, where the large opposite
    /// terms cancel and Float loses the small difference (measured 3e-5 of dA with Δ·A down to −48).
    @inline(never)
    fileprivate static func intraChunkGradients(_ v: ChunkVectors, CB: UnsafePointer<Float>, dM: UnsafePointer<Float>,
                                                M: UnsafeMutablePointer<Float>, dCB: UnsafeMutablePointer<Float>,
                                                q: Int, Qp: Int) {
        for t in stride(from: q - 1, through: 0, by: -1) {
            var j0 = 0
            while j0 <= t {
                let e = segmentDecay(v, t: t, j0: j0)
                let dtv = load16(v.dt + j0)
                let cbe = load16(CB + t * Qp + j0) * e
                let m = cbe * dtv
                store16(m, M + t * Qp + j0)
                let g = load16(dM + t * Qp + j0)
                store16(load16(v.acc + j0).addingProduct(g, m), v.acc + j0)   // Σ_{t' ≥ t} dM·M, per column s
                store16(load16(dCB + t * Qp + j0).addingProduct(g * e, dtv), dCB + t * Qp + j0)
                store16(load16(v.ddt + j0).addingProduct(g, cbe), v.ddt + j0)
                j0 += 16
            }
            while j0 < Qp { store16(F16x(), M + t * Qp + j0); j0 += 16 }
            // daM[t] = Σ_{s<t} of the column sums (lanes s ≥ t of the last block masked off).
            var sum = F16x()
            j0 = 0
            while j0 + 16 <= t { sum += load16(v.acc + j0); j0 += 16 }
            if j0 < t {
                let keep = causalMask(row: t - 1, from: j0)
                sum += unsafeBitCast(unsafeBitCast(load16(v.acc + j0), to: SIMD16<Int32>.self) & keep, to: F16x.self)
            }
            v.daM[t] = sum.sum()
        }
    }
}

// MARK: - Scratch layouts

extension SSD {
    /// One forward thread's scratch: Bᵀ, C Bᵀ, M, Ce, X padded (only when P % 16 ≠ 0), Bᵀ diag(w), the states
    /// Sᵀ of up to H/G heads, chunk vectors.
    fileprivate struct ForwardLayout {
        let Bt, CB, M, Ce, Xp, Bwt, St, vec, total, Qp: Int
        init(_ d: SSDDims) {
            let (Q, Qp, Pp) = (d.chunk, pad16(d.chunk), pad16(d.P))
            var o = Offsets()
            Bt = o.take(d.N * Qp); CB = o.take(Q * Qp); M = o.take(Q * Qp); Ce = o.take(Q * d.N)
            Xp = o.take(d.P % 16 == 0 ? 0 : Q * Pp); Bwt = o.take(d.N * Qp)
            St = o.take(d.headsPerGroup * d.N * Pp); vec = o.take(ChunkVectors.count * Qp)
            total = o.next; self.Qp = Qp
        }
    }

    fileprivate struct ForwardWork {
        let Bt, CB, M, Ce, Xp, Bwt, St: UnsafeMutablePointer<Float>
        let vec: ChunkVectors
        init(_ l: ForwardLayout, _ p: UnsafeMutablePointer<Float>) {
            Bt = p + l.Bt; CB = p + l.CB; M = p + l.M; Ce = p + l.Ce; Xp = p + l.Xp; Bwt = p + l.Bwt; St = p + l.St
            vec = ChunkVectors(p + l.vec, l.Qp)
        }
    }

    /// One thread's scratch in backward phase 1: Ce (Q × Np), the running dS (P × Np), chunk vectors.
    fileprivate struct ChainLayout {
        let Ce, g, vec, total, Qp: Int
        init(_ d: SSDDims) {
            let (Qp, Np) = (pad16(d.chunk), pad16(d.N))
            var o = Offsets()
            Ce = o.take(d.chunk * Np); g = o.take(d.P * Np); vec = o.take(ChunkVectors.count * Qp)
            total = o.next; self.Qp = Qp
        }
    }

    fileprivate struct ChainWork {
        let Ce, g: UnsafeMutablePointer<Float>
        let vec: ChunkVectors
        init(_ l: ChainLayout, _ p: UnsafeMutablePointer<Float>) {
            Ce = p + l.Ce; g = p + l.g; vec = ChunkVectors(p + l.vec, l.Qp)
        }
    }

    /// One thread's scratch in backward phase 2. Padded copies (Xp, dYp of P columns; Bp, Cp, Sp of N columns) are
    /// only used, and only take room, when that width is not a multiple of 16.
    fileprivate struct BackwardLayout {
        let Bt, CB, dCB, M, dM, Xt, Xp, dYp, Bp, Cp, Sp, dSt, Bwt, T, dBacc, dCacc, vec, total, Qp: Int
        init(_ d: SSDDims) {
            let (Q, Qp, Pp, Np) = (d.chunk, pad16(d.chunk), pad16(d.P), pad16(d.N))
            let padP = d.P % 16 != 0, padN = d.N % 16 != 0
            var o = Offsets()
            Bt = o.take(d.N * Qp); CB = o.take(Q * Qp); dCB = o.take(Q * Qp); M = o.take(Q * Qp); dM = o.take(Q * Qp)
            Xt = o.take(d.P * Qp)
            Xp = o.take(padP ? Q * Pp : 0); dYp = o.take(padP ? Q * Pp : 0)
            Bp = o.take(padN ? Q * Np : 0); Cp = o.take(padN ? Q * Np : 0); Sp = o.take(padN ? d.P * Np : 0)
            dSt = o.take(d.N * Pp); Bwt = o.take(d.N * Qp)
            T = o.take(Q * Np); dBacc = o.take(Q * Np); dCacc = o.take(Q * Np)
            vec = o.take(ChunkVectors.count * Qp)
            total = o.next; self.Qp = Qp
        }
    }

    fileprivate struct BackwardWork {
        let Bt, CB, dCB, M, dM, Xt, Xp, dYp, Bp, Cp, Sp, dSt, Bwt, T, dBacc, dCacc: UnsafeMutablePointer<Float>
        let vec: ChunkVectors
        init(_ l: BackwardLayout, _ p: UnsafeMutablePointer<Float>) {
            Bt = p + l.Bt; CB = p + l.CB; dCB = p + l.dCB; M = p + l.M; dM = p + l.dM; Xt = p + l.Xt
            Xp = p + l.Xp; dYp = p + l.dYp; Bp = p + l.Bp; Cp = p + l.Cp; Sp = p + l.Sp; dSt = p + l.dSt
            Bwt = p + l.Bwt; T = p + l.T; dBacc = p + l.dBacc; dCacc = p + l.dCacc
            vec = ChunkVectors(p + l.vec, l.Qp)
        }
    }
}

/// Running offsets of a scratch layout, each block a multiple of 16 floats (64-byte aligned from an aligned base).
private struct Offsets {
    var next = 0
    mutating func take(_ n: Int) -> Int {
        let o = next
        next += pad16(n)
        return o
    }
}

// MARK: - Tile products

/// How the first operand pair of a product is limited by a triangular A: `upToRow` when A(i, k) = 0 for k > i,
/// `fromRow` when A(i, k) = 0 for k < i (the skipped k are exactly zero, so skipping changes nothing).
private enum KShape { case full, upToRow, fromRow }

/// What a tile product does with its output: store, add, or out = β·out + product.
private enum Epilogue { case store, add, scaleAdd(Float) }

/// One operand pair of a product, Σ_{κ<k} A(i, κ)·B(κ, j). A(i, k) = a[i·rs + k·cs] is read one element at a
/// time (broadcast), so any strides work and a transposed A costs nothing; B(k, j..<j+16) = b[k·ld + j...] is read 16
/// columns at a time, so its rows must hold 16·⌈n/16⌉ readable floats (a padded copy, or the input itself when n is
/// a multiple of 16).
private struct Operands {
    var a: UnsafePointer<Float>, rs: Int, cs: Int
    var b: UnsafePointer<Float>, ld: Int
    var k: Int
    var shape: KShape = .full

    init(a: UnsafePointer<Float>, rs: Int, cs: Int, b: UnsafePointer<Float>, ld: Int, k: Int, shape: KShape = .full) {
        self.a = a; self.rs = rs; self.cs = cs; self.b = b; self.ld = ld; self.k = k; self.shape = shape
    }

    /// The k range that can be non-zero for rows i0..<i0+rows.
    @inline(__always)
    func kRange(_ i0: Int, _ rows: Int) -> (Int, Int) {
        switch shape {
        case .full: return (0, k)
        case .upToRow: return (0, min(k, i0 + rows))
        case .fromRow: return (min(i0, k), k)
        }
    }
}

/// Six rows × 16 columns of accumulators: 12 of the 16 AVX2 registers, leaving room for one B row and a broadcast.
private struct Acc6 {
    var r0 = F16x(), r1 = F16x(), r2 = F16x(), r3 = F16x(), r4 = F16x(), r5 = F16x()
}

/// The register-tiled inner loop: per k, one 16-float load of B and six broadcasts of A, twelve FMAs (measured 83
/// GFLOP/s on a 64³ product, ~85 % of this core's AVX2 peak). Kept out of line, with the accumulators in memory between
/// calls, so that the register allocator sees only this loop: inlined into its large callers it spilled accumulators
/// (the forward ran 1.4× slower).
@inline(never)
private func kernel6(_ c: inout Acc6, _ a: UnsafePointer<Float>, _ rs: Int, _ cs: Int,
                     _ b: UnsafePointer<Float>, _ ld: Int, _ count: Int) {
    var (c0, c1, c2, c3, c4, c5) = (c.r0, c.r1, c.r2, c.r3, c.r4, c.r5)
    var pa = a, pb = b
    for _ in 0..<count {
        let bv = load16(pb)
        c0 = c0.addingProduct(F16x(repeating: pa[0]), bv)
        c1 = c1.addingProduct(F16x(repeating: pa[rs]), bv)
        c2 = c2.addingProduct(F16x(repeating: pa[2 * rs]), bv)
        c3 = c3.addingProduct(F16x(repeating: pa[3 * rs]), bv)
        c4 = c4.addingProduct(F16x(repeating: pa[4 * rs]), bv)
        c5 = c5.addingProduct(F16x(repeating: pa[5 * rs]), bv)
        pa += cs
        pb += ld
    }
    c = Acc6(r0: c0, r1: c1, r2: c2, r3: c3, r4: c4, r5: c5)
}

@inline(never)
private func kernel1(_ c: inout F16x, _ a: UnsafePointer<Float>, _ cs: Int,
                     _ b: UnsafePointer<Float>, _ ld: Int, _ count: Int) {
    var acc = c
    var pa = a, pb = b
    for _ in 0..<count {
        acc = acc.addingProduct(F16x(repeating: pa.pointee), load16(pb))
        pa += cs
        pb += ld
    }
    c = acc
}

@inline(__always)
private func accumulate(_ c: inout Acc6, _ o: Operands, i0: Int, j0: Int, _ kr: (Int, Int)) {
    let (kLo, kHi) = kr
    if kHi <= kLo { return }
    kernel6(&c, o.a + i0 * o.rs + kLo * o.cs, o.rs, o.cs, o.b + kLo * o.ld + j0, o.ld, kHi - kLo)
}

@inline(__always)
private func accumulate1(_ c: inout F16x, _ o: Operands, i: Int, j0: Int, _ kr: (Int, Int)) {
    let (kLo, kHi) = kr
    if kHi <= kLo { return }
    kernel1(&c, o.a + i * o.rs + kLo * o.cs, o.cs, o.b + kLo * o.ld + j0, o.ld, kHi - kLo)
}

@inline(__always)
private func emit(_ v: F16x, _ p: UnsafeMutablePointer<Float>, _ width: Int, _ e: Epilogue) {
    switch e {
    case .store: storeF16x(v, p, width)
    case .add: storeF16x(loadF16x(p, width) + v, p, width)
    case .scaleAdd(let beta): storeF16x(v.addingProduct(loadF16x(p, width), F16x(repeating: beta)), p, width)
    }
}

/// out (m × n) ⟵ epilogue(Σ over the operand pairs of A·B): the one entry point of the chunk products. A full
/// operand pair goes to `cblas_sgemm` when `SSD.blasProducts` is on and the product is small enough (m·n·k ≤ 64³)
/// that OpenBLAS runs it on the calling thread (its threshold for threading is 4·65536 = 64³, so a call from inside
/// our parallel regions never starts BLAS threads); triangular pairs, and all pairs when it is off, go to
/// `tileProduct` (one fused pass when both do).
@inline(__always)
private func product(_ out: UnsafeMutablePointer<Float>, ldo: Int, m: Int, n: Int, _ epilogue: Epilogue,
                     lowerTriangle: Bool = false, _ s1: Operands, _ s2: Operands? = nil) {
    guard m > 0, n > 0 else { return }
    @inline(__always) func viaBLAS(_ o: Operands) -> Bool {
        SSD.blasProducts && !lowerTriangle && o.shape == .full && o.k > 0 && m * n * o.k <= 64 * 64 * 64
            && (o.cs == 1 || o.rs == 1)
    }
    let b1 = viaBLAS(s1), b2 = s2.map(viaBLAS) ?? false
    if !b1 && !b2 {
        tileProduct(out, ldo: ldo, m: m, n: n, epilogue, lowerTriangle: lowerTriangle, s1, s2)
        return
    }
    var beta: Float
    switch epilogue {
    case .store: beta = 0
    case .add: beta = 1
    case .scaleAdd(let b): beta = b
    }
    func sgemm(_ o: Operands) {
        // Row-major A(i, k) = a[i·rs + k·cs]: as stored when cs = 1, else transposed (rs = 1).
        let (trans, lda) = o.cs == 1 ? (CblasNoTrans, o.rs) : (CblasTrans, o.cs)
        cblas_sgemm(CblasRowMajor, trans, CblasNoTrans, Int32(m), Int32(n), Int32(o.k), 1, o.a, Int32(lda),
                    o.b, Int32(o.ld), beta, out, Int32(ldo))
        beta = 1
    }
    if b1 { sgemm(s1) }
    if let s2, b2 { sgemm(s2) }
    // What is left goes to the tile kernel, added on top.
    if !b1 { tileProduct(out, ldo: ldo, m: m, n: n, .add, lowerTriangle: lowerTriangle, s1) }
    if let s2, !b2 { tileProduct(out, ldo: ldo, m: m, n: n, .add, lowerTriangle: lowerTriangle, s2) }
}

/// out (m × n, row stride ldo) ⟵ epilogue(Σ over the operand pairs of A·B). Rows go six at a time (the last block is
/// moved up to end at row m, recomputing a few rows it does not store, so no row past m is ever read); columns 16 at
/// a time (a last partial block is stored partially). `lowerTriangle` skips the column blocks wholly right of the
/// diagonal (left unwritten); inside the diagonal block the entries above the diagonal are written as computed.
@inline(__always)
private func tileProduct(_ out: UnsafeMutablePointer<Float>, ldo: Int, m: Int, n: Int, _ epilogue: Epilogue,
                         lowerTriangle: Bool = false, _ s1: Operands, _ s2: Operands? = nil) {
    guard m > 0, n > 0 else { return }
    if m < 6 {
        for i in 0..<m {
            var j = 0
            while j < n && !(lowerTriangle && j > i) {
                var c = F16x()
                accumulate1(&c, s1, i: i, j0: j, s1.kRange(i, 1))
                if let s2 { accumulate1(&c, s2, i: i, j0: j, (0, s2.k)) }
                emit(c, out + i * ldo + j, min(16, n - j), epilogue)
                j += 16
            }
        }
        return
    }
    var i = 0
    while i < m {
        let i0 = min(i, m - 6)
        let skip = i - i0
        var j = 0
        while j < n && !(lowerTriangle && j > i0 + 5) {
            var c = Acc6()
            accumulate(&c, s1, i0: i0, j0: j, s1.kRange(i0, 6))
            if let s2 { accumulate(&c, s2, i0: i0, j0: j, (0, s2.k)) }
            let w = min(16, n - j)
            let p = out + i0 * ldo + j
            if skip <= 0 { emit(c.r0, p, w, epilogue) }
            if skip <= 1 { emit(c.r1, p + ldo, w, epilogue) }
            if skip <= 2 { emit(c.r2, p + 2 * ldo, w, epilogue) }
            if skip <= 3 { emit(c.r3, p + 3 * ldo, w, epilogue) }
            if skip <= 4 { emit(c.r4, p + 4 * ldo, w, epilogue) }
            emit(c.r5, p + 5 * ldo, w, epilogue)
            j += 16
        }
        i = i0 + 6
    }
}

// MARK: - Small vector helpers

@inline(__always) private func pad16(_ n: Int) -> Int { (n + 15) & ~15 }

@inline(__always) private func load16(_ p: UnsafePointer<Float>) -> F16x {
    UnsafeRawPointer(p).loadUnaligned(as: F16x.self)
}

@inline(__always) private func store16(_ v: F16x, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16x.self)
}

/// e^−|x| for a decay's log x (≤ 0 up to rounding), exactly 0 once |x| > 60 (e^−60 ≈ 8.8e−27: far below Float
/// resolution next to the terms it is added to, and it keeps the products of decays out of the subnormal range, where
/// every FMA takes a microcode assist: with e^−87 as the floor the reference-shape forward ran 2.6× slower). Integer
/// operations only (Swift lowers SIMD lane masks lane by lane).
@inline(__always) private func expNonPositive(_ x: F16x) -> F16x {
    let absBits = unsafeBitCast(x, to: SIMD16<Int32>.self) & 0x7FFF_FFFF
    let cut: Int32 = 0x4270_0000  // 60.0
    let diff = absBits &- cut
    let below = diff &>> 31  // all ones where |x| < 60
    let capped = unsafeBitCast(cut &+ (diff & below), to: F16x.self)
    let e = expSIMDInRange(-capped)
    return unsafeBitCast(unsafeBitCast(e, to: SIMD16<Int32>.self) & below, to: F16x.self)
}

/// dst (cols × rows, row stride ldd) = srcᵀ for src (rows × cols, row stride lds): 8 × 8 blocks in registers
/// (three rounds of pairwise even/odd unshuffles transpose an 8 × 8 block), scalar edges. With `zeroTo`, each
/// destination row is zero-filled from column `rows` up to `zeroTo` (a padded operand).
@inline(never)
private func transpose(_ src: UnsafePointer<Float>, rows: Int, cols: Int, ld lds: Int,
                       into dst: UnsafeMutablePointer<Float>, ld ldd: Int, zeroTo: Int = 0) {
    if zeroTo > rows { for c in 0..<cols { (dst + (c &* ldd &+ rows)).update(repeating: 0, count: zeroTo - rows) } }
    let r8 = rows & ~7, c8 = cols & ~7
    var r0 = 0
    while r0 < r8 {
        var c0 = 0
        while c0 < c8 {
            transpose8x8(src + (r0 &* lds &+ c0), lds, dst + (c0 &* ldd &+ r0), ldd)
            c0 &+= 8
        }
        r0 &+= 8
    }
    // Edges: the last cols − c8 columns of the blocked rows, then the last rows − r8 rows.
    for r in 0..<r8 {
        var c = c8
        while c < cols { dst[c &* ldd &+ r] = src[r &* lds &+ c]; c &+= 1 }
    }
    for r in r8..<rows {
        var s = src + r &* lds, d = dst + r
        for _ in 0..<cols { d.pointee = s.pointee; s += 1; d += ldd }
    }
}

@inline(__always)
private func transpose8x8(_ src: UnsafePointer<Float>, _ lds: Int, _ dst: UnsafeMutablePointer<Float>, _ ldd: Int) {
    typealias V = SIMD8<Float>
    @inline(__always) func ld(_ i: Int) -> V { UnsafeRawPointer(src + i &* lds).loadUnaligned(as: V.self) }
    @inline(__always) func unshuffle(_ a: V, _ b: V) -> (V, V) {
        let c = SIMD16<Float>(lowHalf: a, highHalf: b)
        return (c.evenHalf, c.oddHalf)
    }
    var r = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5), ld(6), ld(7))
    for _ in 0..<3 {
        let (a0, a4) = unshuffle(r.0, r.1), (a1, a5) = unshuffle(r.2, r.3)
        let (a2, a6) = unshuffle(r.4, r.5), (a3, a7) = unshuffle(r.6, r.7)
        r = (a0, a1, a2, a3, a4, a5, a6, a7)
    }
    @inline(__always) func st(_ v: V, _ i: Int) {
        UnsafeMutableRawPointer(dst + i &* ldd).storeBytes(of: v, as: V.self)
    }
    st(r.0, 0); st(r.1, 1); st(r.2, 2); st(r.3, 3); st(r.4, 4); st(r.5, 5); st(r.6, 6); st(r.7, 7)
}

/// Copies rows × cols from a strided source into rows of stride ldd (leaving the rest of each row as it is).
private func copyRows(_ src: UnsafePointer<Float>, rows: Int, cols: Int, ld lds: Int,
                      into dst: UnsafeMutablePointer<Float>, ld ldd: Int) {
    for r in 0..<rows { (dst + r * ldd).update(from: src + r * lds, count: cols) }
}

/// Rows × cols as a B operand: the source itself when cols is a multiple of 16, else a zero-padded copy in `pad`.
@inline(__always)
private func operandRows(_ src: UnsafePointer<Float>, ld: Int, rows: Int, cols: Int,
                         pad: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
    if cols % 16 == 0 { return (src, ld) }
    let ldp = pad16(cols)
    for r in 0..<rows {
        (pad + r * ldp).update(from: src + r * ld, count: cols)
        (pad + r * ldp + cols).update(repeating: 0, count: ldp - cols)
    }
    return (UnsafePointer(pad), ldp)
}

/// dst[0..<n] = s·src[0..<n].
@inline(__always)
private func scale(_ src: UnsafePointer<Float>, by s: Float, count n: Int, into dst: UnsafeMutablePointer<Float>) {
    var i = 0
    while i + 16 <= n { store16(load16(src + i) * s, dst + i); i += 16 }
    while i < n { dst[i] = src[i] * s; i += 1 }
}

/// dst[r, :] = src[r, :] ∘ v for rows of stride ld (ld a multiple of 16).
private func scaleColumns(_ src: UnsafePointer<Float>, rows: Int, ld: Int, by v: UnsafePointer<Float>,
                          into dst: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
        for j in stride(from: 0, to: ld, by: 16) { store16(load16(src + r * ld + j) * load16(v + j), dst + r * ld + j) }
    }
}

/// y[0..<n] += a·x[0..<n].
@inline(__always)
private func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 16 <= n { store16(load16(y + i).addingProduct(F16x(repeating: a), load16(x + i)), y + i); i += 16 }
    while i < n { y[i] += a * x[i]; i += 1 }
}

@inline(__always)
private func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = F16x()
    var i = 0
    while i + 16 <= n { acc = acc.addingProduct(load16(x + i), load16(y + i)); i += 16 }
    var s = acc.sum()
    while i < n { s += x[i] * y[i]; i += 1 }
    return s
}

/// ⟨X, Y⟩ of two rows × cols matrices with their own row strides.
private func frobenius(_ x: UnsafePointer<Float>, ld ldx: Int, _ y: UnsafePointer<Float>, ld ldy: Int,
                       rows: Int, cols: Int) -> Float {
    var s: Float = 0
    for r in 0..<rows { s += dot(x + r * ldx, y + r * ldy, cols) }
    return s
}

#if canImport(Glibc)
import Glibc
#else
import Foundation
#endif
