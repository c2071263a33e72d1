/// What a model carries from one token (or chunk) to the next: one `BlockState` per layer — for Mamba-1 the last
/// K−1 conv inputs and the SSM state, for Mamba-2 the conv inputs and the per-head state, for attention the keys and
/// values so far (the only state that grows with the sequence); for the multi-scale backbone also each pool's
/// partial block (`pools`). Generation and chunked evaluation keep this and nothing else.
public final class RecurrentState {
    public let batch: Int
    public let layers: [BlockState]
    /// The multi-scale backbone's pools (`UNet.swift`); nil for a flat stack.
    public let pools: PoolStates?

    public init(model: MambaModel, batch: Int) {
        self.batch = batch
        layers = model.blocks.map { $0.makeState(batch: batch) }
        pools = model.unet.map { PoolStates(plan: $0, batch: batch) }
    }

    public init(config c: MambaConfig, batch: Int) {
        self.batch = batch
        layers = MambaModel.build(c).blocks.map { $0.makeState(batch: batch) }
        pools = c.unetPlan.map { PoolStates(plan: $0, batch: batch) }
    }

    /// Mamba-1 layers' conv states `(B, K−1, ED)`, in layer order.
    public var conv: [FloatBuffer] { layers.compactMap { ($0 as? Mamba1Block.State)?.conv } }
    /// Mamba-1 layers' SSM states `(B, N, ED)`, in layer order.
    public var ssm: [FloatBuffer] { layers.compactMap { ($0 as? Mamba1Block.State)?.ssm } }

    public func reset() {
        for s in layers { s.reset() }
        pools?.reset()
    }

    /// Every layer's state tensors, batch-major (`BlockState.tensors`).
    public var tensors: [FloatBuffer] { layers.flatMap(\.tensors) }

    /// Zeroes sequence `b`'s state (of a flat stack; the pools of the multi-scale backbone are not per sequence).
    public func reset(sequence b: Int) {
        precondition(pools == nil, "per-sequence reset of the multi-scale backbone")
        for t in tensors {
            let n = t.count / batch
            (t.ptr + b * n).update(repeating: 0, count: n)
        }
    }

    /// Bytes held, for the memory report of generation.
    public var bytes: Int { layers.reduce(pools?.bytes ?? 0) { $0 + $1.bytes } }
}
