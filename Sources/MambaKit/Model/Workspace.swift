/// Buffers of one forward/backward shape `(B, L)`. With `training`, every layer keeps its own activations for
/// backward (and scan checkpoints); otherwise all layers share one set and nothing is kept.
public final class Workspace {
    public let B: Int, L: Int
    public let training: Bool
    let c: MambaConfig
    /// Set by owners that never change the parameters while they hold the workspace (generation, evaluation):
    /// A = −exp(A_log)ᵀ is then computed on the first forward only instead of on every call.
    public var parametersFrozen = false
    var aReady = false
    /// Whether the last forward continued a carried state (backward does not propagate into the context).
    var continuedState = false

    final class LayerActs {
        let resid, rstd, xz, convPre, u, xdbl, delta, y: FloatBuffer
        let chk: FloatBuffer
        init(c: MambaConfig, BL: Int, chk: Int) {
            let (D, ED, N, R) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank)
            resid = FloatBuffer(count: BL * D)
            rstd = FloatBuffer(count: BL)
            xz = FloatBuffer(count: BL * 2 * ED)
            convPre = FloatBuffer(count: BL * ED)
            u = FloatBuffer(count: BL * ED)
            xdbl = FloatBuffer(count: BL * (R + 2 * N))
            delta = FloatBuffer(count: BL * ED)
            y = FloatBuffer(count: BL * ED)
            self.chk = FloatBuffer(count: chk)
        }
    }

    let layers: [LayerActs]
    /// Scratch for the scan backward's per-thread partial sums.
    let scanScratch = Scratch()
    /// A = −exp(A_log)ᵀ per layer, `(N, ED)`.
    let At: [FloatBuffer]
    let residF, rstdF, normF: FloatBuffer
    public let logits: FloatBuffer
    /// RMSNorm_f(x_L) `(B, L, D)`, the backbone's output that heads read.
    public var hidden: UnsafePointer<Float> { UnsafePointer(normF.ptr) }
    /// ∂loss/∂hidden `(B, L, D)`, written by a head before `backwardBackbone` (training workspaces only).
    public var dHidden: UnsafeMutablePointer<Float> { dnormed.ptr }
    // Backward scratch (training only).
    let dresid, dnormed, gated, dG, dy, dxz, du, ddelta, dxdbl, dAt: FloatBuffer

    /// Without `lmHead` there is no logits buffer (`B·L·V` floats): for heads that read `normF` (classification).
    public init(config c: MambaConfig, B: Int, L: Int, training: Bool, lmHead: Bool = true) {
        self.B = B; self.L = L; self.training = training; self.c = c
        let BL = B * L
        let (D, ED, N, R, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.vocabSize)
        let chk = training ? SelectiveScanSIMD.checkpointCount(dims: ScanDims(B: B, L: L, ED: ED, N: N, ldbc: 0)) : 0
        layers = (0..<(training ? c.numHiddenLayers : 1)).map { _ in LayerActs(c: c, BL: BL, chk: chk) }
        At = (0..<c.numHiddenLayers).map { _ in FloatBuffer(count: N * ED) }
        residF = FloatBuffer(count: BL * D)
        rstdF = FloatBuffer(count: BL)
        normF = FloatBuffer(count: BL * D)
        logits = FloatBuffer(count: lmHead ? BL * V : 0)
        let s = training ? BL : 0
        dresid = FloatBuffer(count: s * D)
        dnormed = FloatBuffer(count: s * D)
        gated = FloatBuffer(count: BL * ED)
        dG = FloatBuffer(count: s * ED)
        dy = FloatBuffer(count: s * ED)
        dxz = FloatBuffer(count: s * 2 * ED)
        du = FloatBuffer(count: s * ED)
        ddelta = FloatBuffer(count: s * ED)
        dxdbl = FloatBuffer(count: s * (R + 2 * N))
        dAt = FloatBuffer(count: training ? N * ED : 0)
    }

    /// Bytes held by the activations and scratch.
    public var bytes: Int {
        var n = 0
        for a in layers { n += [a.resid, a.rstd, a.xz, a.convPre, a.u, a.xdbl, a.delta, a.y, a.chk].reduce(0) { $0 + $1.count } }
        n += At.reduce(0) { $0 + $1.count }
        n += [residF, rstdF, normF, logits, dresid, dnormed, gated, dG, dy, dxz, du, ddelta, dxdbl, dAt]
            .reduce(0) { $0 + $1.count }
        return n * 4
    }
}
