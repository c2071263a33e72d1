/// The attention block of the Mamba-2 hybrids (arXiv 2406.07887; HF `NemotronHAttention`, layer type
/// `full_attention`, `*` in a pattern): causal multi-head attention with grouped KV heads and no positional encoding,
///
///     q = q_proj(h) (H heads of Dh), k = k_proj(h), v = v_proj(h) (Hkv heads);  query head j reads KV head j/(H/Hkv)
///     o_i = Σ_{t ≤ i} softmax_t(q_i·k_t / √Dh) v_t;   out = o_proj(o)
///
/// The attention itself is `Attention` (tiled, online softmax, O(L) memory in training). Saved for backward: q, k, v
/// `(BL, (H + 2Hkv)·Dh)`, o `(BL, H·Dh)` and the log-sum-exp per query `(B, H, L)`. State: the keys and values so far
/// (a KV cache, `(B, T, Hkv·Dh)` each, grown by doubling) — the one state that grows with the sequence, linearly.
/// No biases (transformers builds these projections without them); everything is decayed by AdamW.
public final class AttentionBlock: Block {
    public let layer: Int
    public var kind: BlockKind { .attention }
    /// D, H, Hkv, Dh; Q = H·Dh, KV = Hkv·Dh, QKV = Q + 2·KV (the row of the packed q | k | v buffer).
    let D: Int, H: Int, Hkv: Int, Dh: Int
    let Q: Int, KV: Int, QKV: Int
    let qW: TensorView, kW: TensorView, vW: TensorView, oW: TensorView
    let initializerRange: Double

    init(config c: MambaConfig, layer: Int, layout lay: inout ArenaLayout) {
        self.layer = layer
        (D, H, Hkv, Dh) = (c.hiddenSize, c.attentionHeads, c.kvHeads, c.attentionHeadDim)
        (Q, KV) = (H * Dh, Hkv * Dh)
        QKV = Q + 2 * KV
        let p = "backbone.layers.\(layer).mixer."
        qW = lay.add(p + "q_proj.weight", [Q, D], decay: true)
        kW = lay.add(p + "k_proj.weight", [KV, D], decay: true)
        vW = lay.add(p + "v_proj.weight", [KV, D], decay: true)
        oW = lay.add(p + "o_proj.weight", [D, Q], decay: true)
        initializerRange = c.initializerRange
    }

    public var shareKey: String { "attention \(D) \(H) \(Hkv) \(Dh)" }
    public var projectionParameters: Int { QKV * D + D * Q }

    /// HF `NemotronHPreTrainedModel._init_weights`: every projection N(0, initializer_range).
    public func initialize(_ params: Arena, rng: inout RNG) {
        for t in [qW, kW, vW, oW] { params.fillNormal(t, std: initializerRange, rng: &rng) }
    }

    func dims(B: Int, L: Int) -> AttentionDims { AttentionDims(B: B, H: H, Hkv: Hkv, Dh: Dh, L: L) }

    // MARK: Activations, scratch, state

    final class Saved: BlockActivations {
        /// q | k | v `(BL, QKV)`, o `(BL, Q)`, lse `(B, H, L)`.
        let qkv, o, lse: FloatBuffer
        init(_ k: AttentionBlock, B: Int, L: Int) {
            qkv = FloatBuffer(count: B * L * k.QKV)
            o = FloatBuffer(count: B * L * k.Q)
            lse = FloatBuffer(count: B * k.H * L)
        }
        var floats: Int { qkv.count + o.count + lse.count }
    }

    final class Work: BlockScratch {
        /// Gradients of o and of q | k | v (training), and the attention kernels' tiles.
        let dO, dqkv: FloatBuffer
        let tiles = Scratch()
        init(_ k: AttentionBlock, BL: Int, training: Bool) {
            dO = FloatBuffer(count: training ? BL * k.Q : 0)
            dqkv = FloatBuffer(count: training ? BL * k.QKV : 0)
        }
        var floats: Int { dO.count + dqkv.count }
    }

    /// The keys and values of the first `length` positions of each sequence, `(B, capacity, KV)` each.
    public final class State: BlockState {
        let batch: Int, width: Int
        public private(set) var length = 0
        private(set) var capacity = 0
        private(set) var k = FloatBuffer(count: 0), v = FloatBuffer(count: 0)

        init(batch: Int, width: Int) { (self.batch, self.width) = (batch, width) }

        public func reset() { length = 0 }
        public var bytes: Int { (k.count + v.count) * 4 }

        /// Appends `L` rows per sequence of k and v (rows of stride `ld` in `(B, L, ld)`), growing the cache by
        /// doubling when it is full.
        func append(k newK: UnsafePointer<Float>, v newV: UnsafePointer<Float>, ld: Int, L: Int) {
            if length + L > capacity {
                let cap = max(length + L, 2 * capacity, 16)
                let (k2, v2) = (FloatBuffer(count: batch * cap * width), FloatBuffer(count: batch * cap * width))
                for b in 0..<batch {
                    (k2.ptr + b * cap * width).update(from: k.ptr + b * capacity * width, count: length * width)
                    (v2.ptr + b * cap * width).update(from: v.ptr + b * capacity * width, count: length * width)
                }
                (k, v, capacity) = (k2, v2, cap)
            }
            for b in 0..<batch {
                for t in 0..<L {
                    let dst = (b * capacity + length + t) * width
                    (k.ptr + dst).update(from: newK + (b * L + t) * ld, count: width)
                    (v.ptr + dst).update(from: newV + (b * L + t) * ld, count: width)
                }
            }
            length += L
        }
    }

    public func makeActivations(B: Int, L: Int, training: Bool) -> BlockActivations { Saved(self, B: B, L: L) }
    public func makeScratch(B: Int, L: Int, training: Bool) -> BlockScratch { Work(self, BL: B * L, training: training) }
    public func makeState(batch: Int) -> BlockState { State(batch: batch, width: KV) }

    // MARK: Forward and backward

    /// q | k | v of `BL` rows into `qkv (BL, QKV)`.
    func project(_ qkv: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, BL: Int, _ p: Arena) {
        Linear.forward(out: qkv, ldo: QKV, inp: inp, ldi: D, weight: p.ptr(qW), bias: nil, M: BL, I: D, O: Q)
        Linear.forward(out: qkv + Q, ldo: QKV, inp: inp, ldi: D, weight: p.ptr(kW), bias: nil, M: BL, I: D, O: KV)
        Linear.forward(out: qkv + Q + KV, ldo: QKV, inp: inp, ldi: D, weight: p.ptr(vW), bias: nil, M: BL, I: D, O: KV)
    }

    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, B: Int, L: Int, params p: Arena,
                        acts: BlockActivations, scratch: BlockScratch, state: BlockState?, training: Bool,
                        observe: ((UnsafePointer<Float>, Int) -> Void)?) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let BL = B * L
        project(a.qkv.ptr, inp, BL: BL, p)
        if let state {
            // Continue the sequences: the chunk's queries read every cached key and their own.
            let st = unsafeDowncast(state, to: State.self)
            let before = st.length
            st.append(k: a.qkv.ptr + Q, v: a.qkv.ptr + Q + KV, ld: QKV, L: L)
            Attention.forward(out: a.o.ptr, ldo: Q, lse: nil, q: a.qkv.ptr, ldq: QKV, k: st.k.ptr, v: st.v.ptr, ldkv: KV,
                              kvBatchStride: st.capacity * KV,
                              dims: AttentionDims(B: B, H: H, Hkv: Hkv, Dh: Dh, Lq: L, Lk: before + L, qOffset: before),
                              scratch: w.tiles)
        } else {
            Attention.forward(out: a.o.ptr, ldo: Q, lse: training ? a.lse.ptr : nil, q: a.qkv.ptr, ldq: QKV,
                              k: a.qkv.ptr + Q, v: a.qkv.ptr + Q + KV, ldkv: QKV, kvBatchStride: L * QKV,
                              dims: dims(B: B, L: L), scratch: w.tiles)
        }
        Linear.forward(out: out, ldo: D, inp: a.o.ptr, ldi: Q, weight: p.ptr(oW), bias: nil, M: BL, I: Q, O: D)
    }

    public func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                         B: Int, L: Int, params p: Arena, grads g: Arena, acts: BlockActivations,
                         scratch: BlockScratch) {
        let a = unsafeDowncast(acts, to: Saved.self), w = unsafeDowncast(scratch, to: Work.self)
        let BL = B * L
        w.dO.zero()
        Linear.backward(dinp: w.dO.ptr, lddi: Q, dweight: g.ptr(oW), dbias: nil, dout: dout, lddo: D, inp: a.o.ptr,
                        ldi: Q, weight: p.ptr(oW), M: BL, I: Q, O: D)
        w.dqkv.zero()
        let qkv = UnsafePointer(a.qkv.ptr), dqkv = w.dqkv.ptr
        Attention.backward(dq: dqkv, lddq: QKV, dk: dqkv + Q, dv: dqkv + Q + KV, lddkv: QKV, dout: w.dO.ptr, lddo: Q,
                           q: qkv, ldq: QKV, k: qkv + Q, v: qkv + Q + KV, ldkv: QKV, out: a.o.ptr, ldo: Q,
                           lse: a.lse.ptr, dims: dims(B: B, L: L), scratch: w.tiles)
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(qW), dbias: nil, dout: dqkv, lddo: QKV, inp: inp, ldi: D,
                        weight: p.ptr(qW), M: BL, I: D, O: Q)
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(kW), dbias: nil, dout: dqkv + Q, lddo: QKV, inp: inp, ldi: D,
                        weight: p.ptr(kW), M: BL, I: D, O: KV)
        Linear.backward(dinp: dinp, lddi: D, dweight: g.ptr(vW), dbias: nil, dout: dqkv + Q + KV, lddo: QKV, inp: inp,
                        ldi: D, weight: p.ptr(vW), M: BL, I: D, O: KV)
    }

    // MARK: Reference

    public func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>, B: Int, L: Int,
                                 params p: Arena) {
        let (qw, kw, vw, ow) = (p.ptr(qW), p.ptr(kW), p.ptr(vW), p.ptr(oW))
        func proj(_ w: UnsafePointer<Float>, rows: Int, _ row: Int) -> [Double] {
            (0..<rows).map { o in
                var s = 0.0
                for i in 0..<D { s += Double(w[o * D + i]) * Double(inp[row * D + i]) }
                return s
            }
        }
        let scale = 1 / Double(Dh).squareRoot()
        let group = H / Hkv
        for b in 0..<B {
            var keys: [[Double]] = [], values: [[Double]] = []
            for t in 0..<L {
                let row = b * L + t
                let q = proj(qw, rows: Q, row)
                keys.append(proj(kw, rows: KV, row))
                values.append(proj(vw, rows: KV, row))
                var o = [Double](repeating: 0, count: Q)
                for h in 0..<H {
                    let kv = h / group
                    let s = (0...t).map { j -> Double in
                        var d = 0.0
                        for e in 0..<Dh { d += q[h * Dh + e] * keys[j][kv * Dh + e] }
                        return d * scale
                    }
                    let m = s.max()!
                    let e = s.map { Foundation.exp($0 - m) }
                    let z = e.reduce(0, +)
                    for j in 0...t { for c in 0..<Dh { o[h * Dh + c] += e[j] / z * values[j][kv * Dh + c] } }
                }
                for r in 0..<D {
                    var s = 0.0
                    for i in 0..<Q { s += Double(ow[r * Q + i]) * o[i] }
                    out[row * D + r] = s
                }
            }
        }
    }

    // MARK: Step

    public func makeStepper(params: Arena, batch: Int, weights: StepWeights) -> BlockStepper {
        Stepper(self, params: params, batch: batch, weights: weights)
    }

    /// One token per sequence: q | k | v by `MatVec`, the new k, v appended to the cache, the query attending over
    /// the whole cache (`Attention.forward` with Lq = 1), o_proj. Its cost grows with the cached length.
    final class Stepper: BlockStepper {
        let k: AttentionBlock
        let params: Arena
        let qkv, o: FloatBuffer
        let tiles = Scratch()
        let half: (q: BF16Matrix, k: BF16Matrix, v: BF16Matrix, o: BF16Matrix)?

        init(_ k: AttentionBlock, params p: Arena, batch: Int, weights: StepWeights) {
            self.k = k
            params = p
            qkv = FloatBuffer(count: batch * k.QKV)
            o = FloatBuffer(count: batch * k.Q)
            half = weights == .bf16
                ? (BF16Matrix(p.ptr(k.qW), rows: k.Q, cols: k.D), BF16Matrix(p.ptr(k.kW), rows: k.KV, cols: k.D),
                   BF16Matrix(p.ptr(k.vW), rows: k.KV, cols: k.D), BF16Matrix(p.ptr(k.oW), rows: k.D, cols: k.Q))
                : nil
        }

        var bytes: Int {
            (qkv.count + o.count) * 4 + (half.map { $0.q.bytes + $0.k.bytes + $0.v.bytes + $0.o.bytes } ?? 0)
        }

        var projectionWeightBytes: Int {
            half.map { $0.q.bytes + $0.k.bytes + $0.v.bytes + $0.o.bytes } ?? k.projectionParameters * 4
        }

        func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, state: BlockState, ctx: StepContext) {
            let st = unsafeDowncast(state, to: State.self)
            let p = params, B = ctx.batch
            let (D, Q, KV, QKV) = (k.D, k.Q, k.KV, k.QKV)
            ctx.project(qkv.ptr, QKV, inp, D, p.ptr(k.qW), half?.q, nil, I: D, O: Q)
            ctx.project(qkv.ptr + Q, QKV, inp, D, p.ptr(k.kW), half?.k, nil, I: D, O: KV)
            ctx.project(qkv.ptr + Q + KV, QKV, inp, D, p.ptr(k.vW), half?.v, nil, I: D, O: KV)
            st.append(k: qkv.ptr + Q, v: qkv.ptr + Q + KV, ld: QKV, L: 1)
            Attention.forward(out: o.ptr, ldo: Q, lse: nil, q: qkv.ptr, ldq: QKV, k: st.k.ptr, v: st.v.ptr, ldkv: KV,
                              kvBatchStride: st.capacity * KV,
                              dims: AttentionDims(B: B, H: k.H, Hkv: k.Hkv, Dh: k.Dh, Lq: 1, Lk: st.length,
                                                  qOffset: st.length - 1),
                              scratch: tiles)
            ctx.project(out, D, o.ptr, Q, p.ptr(k.oW), half?.o, nil, I: Q, O: D)
        }
    }
}

import Foundation
