/// The fast selective scan: the contract of `SelectiveScan.forwardReference` / `backwardReference`, vectorised over
/// 16 channels (SIMD16 over ED; the state `(N, ED)` is contiguous over channels) and threaded over channel blocks.
///
/// Memory: forward stores only the state entering every `chunk` steps (`checkpoints`, `(B, ⌈L/chunk⌉, N, ED)`);
/// backward recomputes each chunk's states (and decays exp(Δ·A)) from its checkpoint into per-thread buffers of
/// `(chunk+1)·N·16` floats that stay in L1/L2, then runs the chunk in reverse. Training memory thus grows with N·ED·L/chunk, never with N·ED·L.
/// exp(Δ·A) is the polynomial `expSIMD`. dB and dC sum over channels: each thread sums its own blocks into its own
/// buffer and the buffers are added in thread order afterwards (deterministic for a given thread count).
public enum SelectiveScanSIMD {
    /// Time steps between state checkpoints.
    public static let chunk = 32

    public static func checkpointCount(dims s: ScanDims) -> Int { s.B * ((s.L + chunk - 1) / chunk) * s.N * s.ED }

    public static func forward(
        y: UnsafeMutablePointer<Float>, hOut: UnsafeMutablePointer<Float>?,
        u: UnsafePointer<Float>, delta: UnsafePointer<Float>, At: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, D: UnsafePointer<Float>,
        h0: UnsafePointer<Float>?, checkpoints: UnsafeMutablePointer<Float>?, dims s: ScanDims
    ) {
        let (L, ED, N) = (s.L, s.ED, s.N)
        let nBlocks = (ED + 15) / 16
        let nChunks = (L + chunk - 1) / chunk
        // A block of 16 channels costs ~N·B·L·2 ns; keep ≥ ~20 µs per thread.
        let grain = max(1, 10_000 / max(1, N * s.B * L))
        Parallel.forRanges(nBlocks, grain: grain) { _, lo, hi in
          withUnsafeTemporaryAllocation(of: F16x.self, capacity: 2 * N) { buf in
            let h = buf.baseAddress!, Av = buf.baseAddress! + N
            for blk in lo..<hi {
                let d0 = blk * 16
                let w = min(16, ED - d0)
                for n in 0..<N { Av[n] = loadF16x(At + n * ED + d0, w) }
                let Dv = loadF16x(D + d0, w)
                for b in 0..<s.B {
                    for n in 0..<N { h[n] = h0.map { loadF16x($0 + (b * N + n) * ED + d0, w) } ?? F16x() }
                    for t in 0..<L {
                        if let checkpoints, t % chunk == 0 {
                            let c = checkpoints + ((b * nChunks + t / chunk) * N) * ED + d0
                            for n in 0..<N { storeF16x(h[n], c + n * ED, w) }
                        }
                        let row = b * L + t
                        let dl = loadF16x(delta + row * ED + d0, w)
                        let uv = loadF16x(u + row * ED + d0, w)
                        let dlu = dl * uv
                        var acc = Dv * uv
                        let bp = Bm + row * s.ldbc, cp = Cm + row * s.ldbc
                        for n in 0..<N {
                            let a = expSIMD(dl * Av[n])
                            let hn = a * h[n] + dlu * bp[n]
                            h[n] = hn
                            acc = acc + hn * cp[n]
                        }
                        storeF16x(acc, y + row * ED + d0, w)
                    }
                    if let hOut { for n in 0..<N { storeF16x(h[n], hOut + (b * N + n) * ED + d0, w) } }
                }
            }
          }
        }
    }

    /// Needs the `checkpoints` written by `forward` on the same inputs (the first of each sequence is its h0, so a
    /// forward from a carried state is differentiated as such). With `dh0`, dh0 += ∂L/∂h0 `(B, N, ED)`.
    public static func backward(
        du: UnsafeMutablePointer<Float>, ddelta: UnsafeMutablePointer<Float>, dAt: UnsafeMutablePointer<Float>,
        dBm: UnsafeMutablePointer<Float>, dCm: UnsafeMutablePointer<Float>, dD: UnsafeMutablePointer<Float>,
        dy: UnsafePointer<Float>,
        u: UnsafePointer<Float>, delta: UnsafePointer<Float>, At: UnsafePointer<Float>,
        Bm: UnsafePointer<Float>, Cm: UnsafePointer<Float>, D: UnsafePointer<Float>,
        checkpoints: UnsafePointer<Float>, dims s: ScanDims, scratch: Scratch = Scratch(),
        dh0: UnsafeMutablePointer<Float>? = nil
    ) {
        let (L, ED, N) = (s.L, s.ED, s.N)
        let nBlocks = (ED + 15) / 16
        let nChunks = (L + chunk - 1) / chunk
        let grain = max(1, 10_000 / max(1, N * s.B * L))
        let workers = Parallel.workers(for: nBlocks, grain: grain)
        let BLN = s.B * L * N
        // Per-worker dB, dC partial sums over that worker's channel blocks (reused across calls: fresh pages
        // would cost a page fault per 4 KiB on every training step).
        let partial = scratch.floats(workers * 2 * BLN)
        partial.update(repeating: 0, count: workers * 2 * BLN)
        Parallel.forRanges(nBlocks, grain: grain) { wk, lo, hi in
            let hs = UnsafeMutablePointer<F16x>.allocate(capacity: (chunk + 1) * N)
            let decay = UnsafeMutablePointer<F16x>.allocate(capacity: chunk * N)
            let Av = UnsafeMutablePointer<F16x>.allocate(capacity: N)
            let gnext = UnsafeMutablePointer<F16x>.allocate(capacity: N)
            let dA = UnsafeMutablePointer<F16x>.allocate(capacity: N)
            defer { hs.deallocate(); decay.deallocate(); Av.deallocate(); gnext.deallocate(); dA.deallocate() }
            let wdB = partial + wk * 2 * BLN
            let wdC = wdB + BLN
            for blk in lo..<hi {
                let d0 = blk * 16
                let w = min(16, ED - d0)
                for n in 0..<N { Av[n] = loadF16x(At + n * ED + d0, w); dA[n] = F16x() }
                let Dv = loadF16x(D + d0, w)
                var dDacc = F16x()
                for b in 0..<s.B {
                    for n in 0..<N { gnext[n] = F16x() }
                    for c in stride(from: nChunks - 1, through: 0, by: -1) {
                        let t0 = c * chunk, t1 = min(L, t0 + chunk)
                        let ck = checkpoints + ((b * nChunks + c) * N) * ED + d0
                        for n in 0..<N { hs[n] = loadF16x(ck + n * ED, w) }
                        for t in t0..<t1 {
                            let row = b * L + t
                            let dl = loadF16x(delta + row * ED + d0, w)
                            let dlu = dl * loadF16x(u + row * ED + d0, w)
                            let bp = Bm + row * s.ldbc
                            let prev = hs + (t - t0) * N, cur = prev + N
                            let at = decay + (t - t0) * N
                            for n in 0..<N {
                                let a = expSIMD(dl * Av[n])
                                at[n] = a
                                cur[n] = a * prev[n] + dlu * bp[n]
                            }
                        }
                        for t in stride(from: t1 - 1, through: t0, by: -1) {
                            let row = b * L + t
                            let dl = loadF16x(delta + row * ED + d0, w)
                            let uv = loadF16x(u + row * ED + d0, w)
                            let gy = loadF16x(dy + row * ED + d0, w)
                            dDacc = dDacc + gy * uv
                            var duv = Dv * gy
                            var ddl = F16x()
                            let bp = Bm + row * s.ldbc, cp = Cm + row * s.ldbc
                            let prev = hs + (t - t0) * N, cur = prev + N
                            let rb = wdB + row * N, rc = wdC + row * N
                            let at = decay + (t - t0) * N
                            for n in 0..<N {
                                let a = at[n]
                                let gh = gnext[n] + gy * cp[n]
                                rc[n] += (gy * cur[n]).sum()
                                let gd = gh * dl
                                rb[n] += (gd * uv).sum()
                                duv = duv + gd * bp[n]
                                let gah = gh * a * prev[n]
                                ddl = ddl + gah * Av[n] + gh * (bp[n] * uv)
                                dA[n] = dA[n] + gah * dl
                                gnext[n] = gh * a
                            }
                            let pu = du + row * ED + d0, pd = ddelta + row * ED + d0
                            storeF16x(loadF16x(pu, w) + duv, pu, w)
                            storeF16x(loadF16x(pd, w) + ddl, pd, w)
                        }
                    }
                    // gnext now holds ∂L/∂h_{−1}: the gradient into the initial state.
                    if let dh0 {
                        for n in 0..<N {
                            let p = dh0 + (b * N + n) * ED + d0
                            storeF16x(loadF16x(p, w) + gnext[n], p, w)
                        }
                    }
                }
                for n in 0..<N {
                    let p = dAt + n * ED + d0
                    storeF16x(loadF16x(p, w) + dA[n], p, w)
                }
                storeF16x(loadF16x(dD + d0, w) + dDacc, dD + d0, w)
            }
        }
        // Sum the per-worker partials in worker order into the strided dB, dC columns.
        Parallel.forRanges(s.B * L) { _, lo, hi in
            for row in lo..<hi {
                for n in 0..<N {
                    var sb: Float = 0, sc: Float = 0
                    for wk in 0..<workers {
                        sb += partial[wk * 2 * BLN + row * N + n]
                        sc += partial[wk * 2 * BLN + BLN + row * N + n]
                    }
                    dBm[row * s.ldbc + n] += sb
                    dCm[row * s.ldbc + n] += sc
                }
            }
        }
    }
}
