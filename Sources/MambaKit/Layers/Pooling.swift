/// SaShiMi's pooling layers (Goel et al. 2022, arXiv 2202.09729; state-spaces/s4 `DownPool`, `UpPool`), the
/// joints of a multi-scale backbone: a down-pool folds `p` consecutive steps of width `H` into one step of width
/// `E` (SaShiMi's `expand · H`), an up-pool unfolds one step of width `E` into `p` steps of width `H`, shifted by one
/// pooled step so the whole stays causal.
///
/// Layout. A block of `p` steps is the `p` rows of `(B, L, H)` side by side, so the down-pool's input row for pooled
/// step `l` is `x[l·p + s, h]` at index `s·H + h` — the activation memory as it is, no gather — and the up-pool's
/// output row for pooled step `l` is `y[s·H + h]` for time `l·p + s`, channel `h`. (state-spaces/s4 orders the same
/// features `h·p + s`; importing its weights permutes the columns of `DownPool.linear` and the rows of
/// `UpPool.linear`.)
///
/// Causality. The down-pool's step `l` reads times `l·p … l·p + p − 1`. The up-pool writes the projection of pooled
/// step `l − 1` to times `l·p … l·p + p − 1` (zeros for `l = 0`, before any block is complete): time `t` receives
/// information from times before the start of its own block only, so a stack with skip connections at every rate
/// is causal, and in generation the coarse stages step once every `p` samples (`DownPoolStepper`, `UpPoolStepper`).
public enum DownPool {
    /// out `(N, E)` = inp viewed as `(N, p·H)` · weightᵀ + bias, for `N = B·L/p` pooled steps (every sequence's
    /// length a multiple of `p`). Weight `(E, p·H)`, bias `(E)`.
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                               bias: UnsafePointer<Float>, N: Int, H: Int, p: Int, E: Int) {
        Linear.forward(out: out, ldo: E, inp: inp, ldi: p * H, weight: weight, bias: bias, M: N, I: p * H, O: E)
    }

    /// dinp += dout · W; dweight += doutᵀ · inp; dbias += Σ dout.
    public static func backward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dbias: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                                weight: UnsafePointer<Float>, N: Int, H: Int, p: Int, E: Int) {
        Linear.backward(dinp: dinp, lddi: p * H, dweight: dweight, dbias: dbias, dout: dout, lddo: E, inp: inp,
                        ldi: p * H, weight: weight, M: N, I: p * H, O: E)
    }

    /// Plain loops in Double over `(B, L, H)` with explicit block indices.
    public static func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                        B: Int, L: Int, H: Int, p: Int, E: Int) {
        let Lp = L / p
        for b in 0..<B {
            for l in 0..<Lp {
                for e in 0..<E {
                    var sum = Double(bias[e])
                    for s in 0..<p {
                        for h in 0..<H {
                            sum += Double(weight[e * p * H + s * H + h]) * Double(inp[(b * L + l * p + s) * H + h])
                        }
                    }
                    out[(b * Lp + l) * E + e] = sum
                }
            }
        }
    }
}

public enum UpPool {
    /// out `(B, L, H)`, `L = Lp·p`, from inp `(B, Lp, E)`: `y = inp · Wᵀ + b` per pooled step (`(B, Lp, p·H)`, in
    /// `y`, scratch the caller owns), shifted one pooled step later. The first block of each sequence is `carry`'s
    /// row `(B, p·H)` — the previous chunk's last `y` — or zeros when `carry` is nil; with `carry`, each
    /// sequence's last `y` is left in it for the next chunk. Weight `(p·H, E)`, bias `(p·H)`.
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                               carry: UnsafeMutablePointer<Float>?, B: Int, Lp: Int, H: Int, p: Int, E: Int) {
        let W = p * H
        guard B > 0, Lp > 0 else { return }
        Linear.forward(out: y, ldo: W, inp: inp, ldi: E, weight: weight, bias: bias, M: B * Lp, I: E, O: W)
        for b in 0..<B {
            let o = out + b * Lp * W, yb = y + b * Lp * W
            if let carry { o.update(from: carry + b * W, count: W) } else { o.update(repeating: 0, count: W) }
            if Lp > 1 { (o + W).update(from: yb, count: (Lp - 1) * W) }
            if let carry { (carry + b * W).update(from: yb + (Lp - 1) * W, count: W) }
        }
    }

    /// dinp += dy · W; dweight += dyᵀ · inp; dbias += Σ dy, where `dy` (scratch `(B, Lp, p·H)`) is dout shifted one
    /// pooled step earlier (the last pooled step of each sequence feeds nothing in this chunk: its gradient is 0).
    public static func backward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dbias: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                                dy: UnsafeMutablePointer<Float>, weight: UnsafePointer<Float>,
                                B: Int, Lp: Int, H: Int, p: Int, E: Int) {
        let W = p * H
        guard B > 0, Lp > 0 else { return }
        for b in 0..<B {
            let d = dout + b * Lp * W, g = dy + b * Lp * W
            if Lp > 1 { g.update(from: d + W, count: (Lp - 1) * W) }
            (g + (Lp - 1) * W).update(repeating: 0, count: W)
        }
        Linear.backward(dinp: dinp, lddi: E, dweight: dweight, dbias: dbias, dout: dy, lddo: W, inp: inp, ldi: E,
                        weight: weight, M: B * Lp, I: E, O: W)
    }

    /// Plain loops in Double: `out[b, t, h]` for `t = l·p + s` is `b_k + Σ_e W[k, e] · inp[b, l − 1, e]` with
    /// `k = s·H + h`, and 0 for `l = 0`.
    public static func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                        B: Int, Lp: Int, H: Int, p: Int, E: Int) {
        let L = Lp * p
        for b in 0..<B {
            for t in 0..<L {
                let l = t / p, s = t % p
                for h in 0..<H {
                    let k = s * H + h
                    var v = 0.0
                    if l > 0 {
                        v = Double(bias[k])
                        for e in 0..<E { v += Double(weight[k * E + e]) * Double(inp[(b * Lp + l - 1) * E + e]) }
                    }
                    out[(b * L + t) * H + h] = v
                }
            }
        }
    }
}

/// The down-pool in generation: collects `p` steps of `(B, H)` and, on the `p`-th, projects them.
public final class DownPoolStepper {
    public let B: Int, H: Int, p: Int, E: Int
    /// `(B, p·H)`: the steps of the block so far.
    let block: UnsafeMutablePointer<Float>
    /// Steps collected in the current block.
    public private(set) var filled = 0

    public init(batch B: Int, H: Int, p: Int, E: Int) {
        self.B = B; self.H = H; self.p = p; self.E = E
        block = .allocate(capacity: B * p * H)
        block.initialize(repeating: 0, count: B * p * H)
    }

    deinit { block.deallocate() }

    public func reset() {
        filled = 0
        block.update(repeating: 0, count: B * p * H)
    }

    /// Takes one step `inp (B, H)`; when it completes a block, writes `out (B, E)` and returns true.
    public func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                     bias: UnsafePointer<Float>) -> Bool {
        for b in 0..<B { (block + b * p * H + filled * H).update(from: inp + b * H, count: H) }
        filled += 1
        guard filled == p else { return false }
        filled = 0
        Linear.forward(out: out, ldo: E, inp: block, ldi: p * H, weight: weight, bias: bias, M: B, I: p * H, O: E)
        return true
    }
}

/// The up-pool in generation: hands out one row `(B, H)` per step from the projection of the last complete pooled
/// step (zeros until there is one), and takes the next pooled input when its `p` rows are used up.
public final class UpPoolStepper {
    public let B: Int, H: Int, p: Int, E: Int
    /// `(B, p·H)`: the rows for the current block.
    let queue: UnsafeMutablePointer<Float>
    /// Rows of the current block handed out.
    public private(set) var position = 0

    public init(batch B: Int, H: Int, p: Int, E: Int) {
        self.B = B; self.H = H; self.p = p; self.E = E
        queue = .allocate(capacity: B * p * H)
        queue.initialize(repeating: 0, count: B * p * H)
    }

    deinit { queue.deallocate() }

    public func reset() {
        position = 0
        queue.update(repeating: 0, count: B * p * H)
    }

    /// Writes this step's `out (B, H)`; returns true when the block's rows are used up: the caller then gives
    /// `refill` the pooled step completed at this same time (the down-pool fires on the same step).
    public func step(out: UnsafeMutablePointer<Float>) -> Bool {
        for b in 0..<B { (out + b * H).update(from: queue + b * p * H + position * H, count: H) }
        position += 1
        guard position == p else { return false }
        position = 0
        return true
    }

    /// The next block's rows: the projection of `inp (B, E)`.
    public func refill(inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>) {
        Linear.forward(out: queue, ldo: p * H, inp: inp, ldi: E, weight: weight, bias: bias, M: B, I: E, O: p * H)
    }
}
