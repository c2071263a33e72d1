/// A language model over a stack of blocks (HF `MambaForCausalLM`, `Mamba2ForCausalLM`, `NemotronHForCausalLM`;
/// state-spaces/mamba `MambaLMHeadModel`):
///
///     x_0 = embeddings[ids];  x_{l+1} = x_l + Block_l(RMSNorm_l(x_l));  logits = lm_head(RMSNorm_f(x_L))
///
/// where each block is Mamba-1, Mamba-2, attention or an MLP (`Blocks/`), as `config.layerKinds` says.
///
/// Parameters and gradients are arenas whose view names are the HF checkpoint keys. `forward` runs the whole batch
/// layer by layer (one sgemm per projection over B·L rows), saving for backward what `backward` cannot cheaply
/// recompute; it also runs chunk by chunk from a carried `RecurrentState` (exact evaluation of long files, prompt
/// prefill), and with L = 1 it is the recurrent step used by generation.
public final class MambaModel {
    public let config: MambaConfig
    public let params: Arena
    /// Gradients, allocated on first use: only training needs them (eval, generation, inspect and predict hold the
    /// parameters alone).
    public private(set) lazy var grads: Arena = Arena(layout: params.layout)
    /// Called by backward as soon as layer `l`'s gradients (its block and its norm) are complete, while the
    /// earlier layers' backward is still to run: data-parallel training sends them then (`ShardedGradients`).
    public var layerGradientsReady: ((Int) -> Void)?
    /// The stack, one block per layer (`backbone.layers.N.mixer`).
    public let blocks: [Block]
    /// Each layer's pre-norm `backbone.layers.N.norm.weight`.
    let layerNorms: [TensorView]
    let embedView: TensorView
    let normFView: TensorView
    let headView: TensorView
    /// The multi-scale plan (model_type "sashimi", `UNet.swift`) and its pools' weight and bias; nil and empty for a
    /// flat stack.
    public let unet: UNetPlan?
    let downPools: [(w: TensorView, b: TensorView)]
    let upPools: [(w: TensorView, b: TensorView)]

    /// The parameter layout of `config` (in the order HF's `named_parameters()` lists them) and its blocks: the
    /// embedding, then per layer its norm and its block's tensors, `norm_f`, an untied LM head, then the tensors of
    /// any other head the config asks for (a classifier's, `ClassificationHead.addTensors`).
    static func build(_ c: MambaConfig) -> (layout: ArenaLayout, blocks: [Block]) {
        var lay = ArenaLayout()
        let (D, V) = (c.hiddenSize, c.vocabSize)
        lay.add("backbone.embeddings.weight", [V, D], decay: true)
        var blocks: [Block] = []
        if let plan = c.unetPlan {
            // Down-pools, then the stages in the order they run (centre first), each after its up-pool.
            let (H, P) = (plan.widths, plan.factors)
            for k in 0..<plan.stages {
                lay.add("backbone.down_pools.\(k).weight", [H[k + 1], P[k] * H[k]], decay: true)
                lay.add("backbone.down_pools.\(k).bias", [H[k + 1]], decay: false)
            }
            for k in stride(from: plan.stages, through: 0, by: -1) {
                if k < plan.stages {
                    lay.add("backbone.up_pools.\(k).weight", [P[k] * H[k], H[k + 1]], decay: true)
                    lay.add("backbone.up_pools.\(k).bias", [P[k] * H[k]], decay: false)
                }
                let sc = plan.stageConfig(c, k)
                for j in 0..<plan.layers[k] {
                    let i = plan.first[k] + j
                    lay.add("backbone.layers.\(i).norm.weight", [H[k]], decay: false)
                    blocks.append(Mamba1Block(config: sc, layer: i, layout: &lay))
                }
            }
        }
        for i in 0..<(c.unetPlan == nil ? c.numHiddenLayers : 0) {
            lay.add("backbone.layers.\(i).norm.weight", [D], decay: false)
            switch c.layerKinds[i] {
            case .mamba1: blocks.append(Mamba1Block(config: c, layer: i, layout: &lay))
            case .mamba2: blocks.append(Mamba2Block(config: c, layer: i, layout: &lay))
            case .attention: blocks.append(AttentionBlock(config: c, layer: i, layout: &lay))
            case .mlp: blocks.append(MLPBlock(config: c, layer: i, layout: &lay))
            }
        }
        lay.add("backbone.norm_f.weight", [D], decay: false)
        if !c.tieWordEmbeddings { lay.add("lm_head.weight", [V, D], decay: true) }
        // Heads beyond the LM head add their own tensors.
        ClassificationHead.addTensors(for: c, to: &lay)
        return (lay, blocks)
    }

    /// The parameter layout of `config`.
    public static func layout(for c: MambaConfig) -> ArenaLayout { build(c).layout }

    /// A model with zeroed parameters (to be filled by a loader or `initialize`).
    public init(config: MambaConfig) throws {
        try config.validate()
        self.config = config
        let (lay, blocks) = MambaModel.build(config)
        try MemoryBudget.check(bytes: MemoryBudget.product(lay.total, 4),
                               "a model of \(lay.total) parameters", hint: "a smaller configuration")
        params = Arena(layout: lay)
        self.blocks = blocks
        func v(_ n: String) -> TensorView { lay.view(n)! }
        layerNorms = (0..<config.numHiddenLayers).map { v("backbone.layers.\($0).norm.weight") }
        embedView = v("backbone.embeddings.weight")
        normFView = v("backbone.norm_f.weight")
        headView = config.tieWordEmbeddings ? embedView : v("lm_head.weight")
        unet = config.unetPlan
        let S = unet?.stages ?? 0
        downPools = (0..<S).map { (v("backbone.down_pools.\($0).weight"), v("backbone.down_pools.\($0).bias")) }
        upPools = (0..<S).map { (v("backbone.up_pools.\($0).weight"), v("backbone.up_pools.\($0).bias")) }
    }

    /// A randomly initialised model (HF `MambaPreTrainedModel._init_weights`, see `initialize`).
    public convenience init(config: MambaConfig, seed: UInt64) throws {
        try self.init(config: config)
        var rng = RNG(seed: seed)
        initialize(rng: &rng)
    }

    /// HF's initialisation: embeddings (and an untied head, a classifier) N(0, initializer_range), norms 1,
    /// classifier bias 0, and each block as its reference initialises it (`Block.initialize`), in layer order.
    public func initialize(rng: inout RNG) {
        let c = config
        params.zero()
        let std = c.initializerRange
        params.fillNormal(embedView, std: std, rng: &rng)
        for (norm, block) in zip(layerNorms, blocks) {
            params.fill(norm, 1)
            block.initialize(params, rng: &rng)
        }
        // The pools as PyTorch's nn.Linear: weight and bias U(±1/√fan_in).
        for (w, b) in downPools + upPools {
            let bound = 1 / Double(w.shape[1]).squareRoot()
            params.fillUniform(w, bound: bound, rng: &rng)
            params.fillUniform(b, bound: bound, rng: &rng)
        }
        params.fill(normFView, 1)
        if !c.tieWordEmbeddings { params.fillNormal(headView, std: std, rng: &rng) }
        if let w = params.layout.view("classifier.weight") { params.fillNormal(w, std: std, rng: &rng) }
    }

    public func zeroGradients() { grads.zero() }
}

#if canImport(Glibc)
import Glibc
#endif
