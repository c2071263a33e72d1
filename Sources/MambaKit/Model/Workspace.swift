/// Buffers of one forward/backward shape `(B, L)`. With `training`, every layer keeps its residual input, its
/// RMSNorm's rstd and its block's activations for backward; otherwise layers share one residual buffer and blocks of
/// equal shape share one set of activations, and nothing is kept. Block scratch is always shared by shape.
public final class Workspace {
    public let B: Int, L: Int
    public let training: Bool
    let c: MambaConfig
    /// Set by owners that never change the parameters while they hold the workspace (generation, evaluation).
    public var parametersFrozen = false
    /// Whether the last forward continued a carried state (backward does not propagate into the context).
    var continuedState = false

    /// Per layer (one shared entry when not training): the residual input `(B, L, D)` and its rstd `(B, L)`.
    let resid: [FloatBuffer]
    let rstd: [FloatBuffer]
    /// Per layer: its block's activations and scratch (shared objects where `Block.shareKey`s agree).
    let acts: [BlockActivations]
    let scratch: [BlockScratch]
    /// RMSNorm of the layer input `(B, L, D)` (recomputed in backward) and the block output `(B, L, D)`.
    let normed, mixOut: FloatBuffer
    let residF, rstdF, normF: FloatBuffer
    public let logits: FloatBuffer
    /// RMSNorm_f(x_L) `(B, L, D)`, the backbone's output that heads read.
    public var hidden: UnsafePointer<Float> { UnsafePointer(normF.ptr) }
    /// ∂loss/∂hidden `(B, L, D)`, written by a head before `backwardBackbone` (training workspaces only).
    public var dHidden: UnsafeMutablePointer<Float> { dnormed.ptr }
    // Backward scratch (training only): ∂loss/∂residual stream and ∂loss/∂normed input.
    let dresid, dnormed: FloatBuffer
    /// The multi-scale backbone's pools, skips and padded ids.
    let unet: UNetBuffers?

    /// Without `lmHead` there is no logits buffer (`B·L·V` floats): for heads that read `normF` (classification).
    public convenience init(config c: MambaConfig, B: Int, L: Int, training: Bool, lmHead: Bool = true) {
        self.init(config: c, blocks: MambaModel.build(c).blocks, B: B, L: L, training: training, lmHead: lmHead)
    }

    init(config c: MambaConfig, blocks: [Block], B: Int, L: Int, training: Bool, lmHead: Bool = true) {
        self.B = B; self.L = L; self.training = training; self.c = c
        let (D, V) = (c.hiddenSize, c.vocabSize)
        // The multi-scale backbone runs on the padded length; layer l of stage k on (B, Lp / periods[k], widths[k]).
        let plan = c.unetPlan
        let Lp = plan?.padded(L) ?? L
        let BL = B * Lp
        func tokens(_ l: Int) -> Int { plan.map { Lp / $0.periods[$0.stageOf[l]] } ?? L }
        func width(_ l: Int) -> Int { plan.map { $0.widths[$0.stageOf[l]] } ?? D }
        let most = plan.map { p in (0...p.stages).map { BL / p.periods[$0] * p.widths[$0] }.max()! } ?? BL * D
        unet = plan.map { UNetBuffers(plan: $0, B: B, L: L, training: training) }
        if training {
            resid = blocks.indices.map { FloatBuffer(count: B * tokens($0) * width($0)) }
            rstd = blocks.indices.map { FloatBuffer(count: B * tokens($0)) }
        } else {
            // One shared stream (the multi-scale backbone keeps one per stage in `unet`).
            resid = [FloatBuffer(count: plan == nil ? BL * D : 0)]
            rstd = [FloatBuffer(count: BL)]
        }
        var sharedActs: [String: BlockActivations] = [:], sharedScratch: [String: BlockScratch] = [:]
        var a: [BlockActivations] = [], s: [BlockScratch] = []
        for (l, blk) in blocks.enumerated() {
            // Blocks of one stage share a length; the key names it.
            let key = "\(tokens(l)) \(blk.shareKey)"
            if training {
                a.append(blk.makeActivations(B: B, L: tokens(l), training: true))
            } else {
                if sharedActs[key] == nil { sharedActs[key] = blk.makeActivations(B: B, L: tokens(l), training: false) }
                a.append(sharedActs[key]!)
            }
            if sharedScratch[key] == nil { sharedScratch[key] = blk.makeScratch(B: B, L: tokens(l), training: training) }
            s.append(sharedScratch[key]!)
        }
        acts = a
        scratch = s
        normed = FloatBuffer(count: most)
        mixOut = FloatBuffer(count: training && plan == nil ? 0 : most)
        residF = FloatBuffer(count: BL * D)
        rstdF = FloatBuffer(count: BL)
        normF = FloatBuffer(count: BL * D)
        logits = FloatBuffer(count: lmHead ? B * L * V : 0)
        let t = training ? most : 0
        dresid = FloatBuffer(count: t)
        dnormed = FloatBuffer(count: t)
    }

    /// About how many bytes a workspace for `(B, L)` would hold, found without allocating it: each distinct block
    /// and a block-less workspace are built at B = 1 for two short lengths and measured, and the per-token and fixed
    /// parts extrapolated (every buffer grows linearly in B·L, chunk-start states in B·⌈L/Q⌉). Scratch that kernels
    /// grow on first use (the SSD's transient chunk gradients, about the size of its saved states) is covered by a
    /// 25 % margin on the per-token part. The probes hold at most two blocks for 2·min(Q, 64) tokens, so call this
    /// after the parameter count has been found to fit. Overflow saturates at `Int.max`.
    public static func estimatedBytes(config c: MambaConfig, B: Int, L: Int, training: Bool,
                                      lmHead: Bool = true) -> Int {
        let blocks = MambaModel.build(c).blocks
        // (Multiples of P for the multi-scale backbone, which pads to them.)
        let l1 = c.unetPlan?.padded(max(1, min(c.chunkSize, 64))) ?? max(1, min(c.chunkSize, 64)), l2 = 2 * l1
        // Per token and fixed floats of everything but the per-layer residuals: the blocks (activations per block
        // when training, else shared by shareKey; scratch shared by shareKey) and the backbone's own buffers.
        func floats(_ L: Int) -> Int {
            var n = Workspace(config: c, blocks: [], B: 1, L: L, training: training, lmHead: lmHead).bytes / 4
            var actsSeen = Set<String>(), scratchSeen = Set<String>()
            var sizes: [String: (acts: Int, scratch: Int)] = [:]
            for blk in blocks {
                let key = "\(blk.kind)|\(blk.shareKey)"
                if sizes[key] == nil {
                    sizes[key] = (blk.makeActivations(B: 1, L: L, training: training).floats,
                                  blk.makeScratch(B: 1, L: L, training: training).floats)
                }
                let s = sizes[key]!
                if training || actsSeen.insert(blk.shareKey).inserted { n += s.acts }
                if scratchSeen.insert(blk.shareKey).inserted { n += s.scratch }
            }
            // resid and rstd: one pair per layer when training (the block-less workspace has none; inference
            // keeps one shared pair, which it has).
            if training { n += blocks.count * L * (c.hiddenSize + 1) }
            return n
        }
        let (f1, f2) = (floats(l1), floats(l2))
        let perToken = max(0, (f2 - f1) / (l2 - l1)) / 4 * 5
        let fixed = max(0, f1 - perToken * l1)
        return MemoryBudget.product(MemoryBudget.affine(fixed, perToken, MemoryBudget.product(B, L)), 4)
    }

    /// The most tokens per sequence (at least 1) whose inference workspace for `B` sequences fits in `budget`
    /// bytes: evaluation and prompt prefill split longer inputs into chunks of this size, carrying the state, so
    /// their memory does not grow with the input whatever `--chunk` or the prompt asks for.
    public static func maxTokens(config c: MambaConfig, B: Int, budget: Int = 256 << 20) -> Int {
        let e1 = estimatedBytes(config: c, B: 1, L: 1, training: false)
        let e2 = estimatedBytes(config: c, B: 1, L: 1025, training: false)
        let perToken = max(1, (e2 - e1) / 1024)
        let fixed = max(0, e1 - perToken)
        return max(1, (budget - fixed) / MemoryBudget.product(perToken, max(1, B)))
    }

    /// Bytes held by the activations and scratch.
    public var bytes: Int {
        var n = (resid + rstd).reduce(0) { $0 + $1.count }
        var seen = Set<ObjectIdentifier>()
        for x in acts where seen.insert(ObjectIdentifier(x)).inserted { n += x.floats }
        for x in scratch where seen.insert(ObjectIdentifier(x)).inserted { n += x.floats }
        n += [normed, mixOut, residF, rstdF, normF, logits, dresid, dnormed].reduce(0) { $0 + $1.count }
        n += unet?.floats ?? 0
        return n * 4
    }
}
