/// What a Mamba model carries from one token to the next: per layer, the last K−1 conv inputs `(B, K−1, ED)` and
/// the SSM state `(B, N, ED)` (MambaKit keeps the state transposed from HF's `(B, ED, N)` so that it is contiguous
/// over channels). O(1) in the sequence length: this is all generation and chunked evaluation keep.
public final class RecurrentState {
    public let batch: Int
    public let conv: [FloatBuffer]
    public let ssm: [FloatBuffer]

    public init(config c: MambaConfig, batch: Int) {
        self.batch = batch
        conv = (0..<c.numHiddenLayers).map { _ in FloatBuffer(count: batch * max(c.convKernel - 1, 0) * c.intermediateSize) }
        ssm = (0..<c.numHiddenLayers).map { _ in FloatBuffer(count: batch * c.stateSize * c.intermediateSize) }
    }

    public func reset() {
        for b in conv { b.zero() }
        for b in ssm { b.zero() }
    }

    /// Bytes held, for the memory report of generation.
    public var bytes: Int { (conv.reduce(0) { $0 + $1.count } + ssm.reduce(0) { $0 + $1.count }) * 4 }
}
