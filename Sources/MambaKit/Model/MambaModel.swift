/// A Mamba-1 language model (HF `MambaForCausalLM`; state-spaces/mamba `MambaLMHeadModel`):
///
///     x_0 = embeddings[ids];  x_{l+1} = x_l + Mixer_l(RMSNorm_l(x_l));  logits = lm_head(RMSNorm_f(x_L))
///     Mixer: [x | z] = in_proj(h); u = SiLU(conv1d(x)); [dt_low | B | C] = x_proj(u);
///            Δ = softplus(dt_proj(dt_low)); y = scan(u, Δ, A = −exp(A_log), B, C, D); out_proj(y ⊙ SiLU(z))
///
/// Parameters and gradients are arenas whose view names are the HF checkpoint keys. `forward` runs the whole batch
/// layer by layer (one sgemm per projection over B·L rows), saving for backward what `backward` cannot cheaply
/// recompute; it also runs chunk by chunk from a carried `RecurrentState` (exact evaluation of long files, prompt
/// prefill), and with L = 1 it is the recurrent step used by generation.
public final class MambaModel {
    public let config: MambaConfig
    public let params: Arena
    public let grads: Arena
    let layerViews: [LayerViews]
    let embedView: TensorView
    let normFView: TensorView
    let headView: TensorView

    struct LayerViews {
        let norm: TensorView
        let inW: TensorView, inB: TensorView?
        let convW: TensorView, convB: TensorView?
        let xW: TensorView
        let dtW: TensorView, dtB: TensorView
        let aLog: TensorView, d: TensorView
        let outW: TensorView, outB: TensorView?
    }

    /// The parameter layout of `config`, in the order HF's `named_parameters()` lists them.
    public static func layout(for c: MambaConfig) -> ArenaLayout {
        var lay = ArenaLayout()
        let (D, ED, N, R, K, V) = (c.hiddenSize, c.intermediateSize, c.stateSize, c.timeStepRank, c.convKernel,
                                   c.vocabSize)
        lay.add("backbone.embeddings.weight", [V, D])
        for i in 0..<c.numHiddenLayers {
            let p = "backbone.layers.\(i)."
            lay.add(p + "norm.weight", [D])
            lay.add(p + "mixer.A_log", [ED, N])
            lay.add(p + "mixer.D", [ED])
            lay.add(p + "mixer.conv1d.weight", [ED, 1, K])
            if c.useConvBias { lay.add(p + "mixer.conv1d.bias", [ED]) }
            lay.add(p + "mixer.in_proj.weight", [2 * ED, D])
            if c.useBias { lay.add(p + "mixer.in_proj.bias", [2 * ED]) }
            lay.add(p + "mixer.x_proj.weight", [R + 2 * N, ED])
            lay.add(p + "mixer.dt_proj.weight", [ED, R])
            lay.add(p + "mixer.dt_proj.bias", [ED])
            lay.add(p + "mixer.out_proj.weight", [D, ED])
            if c.useBias { lay.add(p + "mixer.out_proj.bias", [D]) }
        }
        lay.add("backbone.norm_f.weight", [D])
        if !c.tieWordEmbeddings { lay.add("lm_head.weight", [V, D]) }
        if !c.classLabels.isEmpty {
            lay.add("classifier.weight", [c.classLabels.count, D])
            lay.add("classifier.bias", [c.classLabels.count])
        }
        return lay
    }

    /// A model with zeroed parameters (to be filled by a loader or `initialize`).
    public init(config: MambaConfig) throws {
        try config.validate()
        self.config = config
        let lay = MambaModel.layout(for: config)
        params = Arena(layout: lay)
        grads = Arena(layout: lay)
        func v(_ n: String) -> TensorView { lay.view(n)! }
        layerViews = (0..<config.numHiddenLayers).map { i in
            let p = "backbone.layers.\(i)."
            return LayerViews(
                norm: v(p + "norm.weight"),
                inW: v(p + "mixer.in_proj.weight"), inB: lay.view(p + "mixer.in_proj.bias"),
                convW: v(p + "mixer.conv1d.weight"), convB: lay.view(p + "mixer.conv1d.bias"),
                xW: v(p + "mixer.x_proj.weight"),
                dtW: v(p + "mixer.dt_proj.weight"), dtB: v(p + "mixer.dt_proj.bias"),
                aLog: v(p + "mixer.A_log"), d: v(p + "mixer.D"),
                outW: v(p + "mixer.out_proj.weight"), outB: lay.view(p + "mixer.out_proj.bias"))
        }
        embedView = v("backbone.embeddings.weight")
        normFView = v("backbone.norm_f.weight")
        headView = config.tieWordEmbeddings ? embedView : v("lm_head.weight")
    }

    /// A randomly initialised model (HF `MambaPreTrainedModel._init_weights`, see `initialize`).
    public convenience init(config: MambaConfig, seed: UInt64) throws {
        try self.init(config: config)
        var rng = RNG(seed: seed)
        initialize(rng: &rng)
    }

    /// HF's initialisation: Linear and Embedding weights N(0, initializer_range), biases 0, norms 1;
    /// conv1d and out_proj weights Kaiming-uniform (a = √5, i.e. U(±1/√fan_in)), conv bias 0, out_proj divided
    /// by √n_layers if `rescale_prenorm_residual`; A_log = log(1..N) per channel, D = 1; dt_proj weight
    /// U(±R^−½·scale) ("random") or constant; dt_proj bias = softplus⁻¹(dt), dt log-uniform in
    /// [time_step_min, time_step_max] floored at time_step_floor.
    public func initialize(rng: inout RNG) {
        let c = config
        params.zero()
        func normal(_ v: TensorView, std: Double) {
            let p = params.ptr(v)
            for i in 0..<v.count { p[i] = Float(rng.normal() * std) }
        }
        func uniform(_ v: TensorView, bound: Double) {
            let p = params.ptr(v)
            for i in 0..<v.count { p[i] = Float(rng.uniform(-bound, bound)) }
        }
        func fill(_ v: TensorView, _ x: Float) { params.ptr(v).update(repeating: x, count: v.count) }
        let std = c.initializerRange
        normal(embedView, std: std)
        for lv in layerViews {
            fill(lv.norm, 1)
            normal(lv.inW, std: std)
            normal(lv.xW, std: std)
            uniform(lv.convW, bound: 1 / Double(c.convKernel).squareRoot())
            let dtStd = 1 / Double(c.timeStepRank).squareRoot() * c.timeStepScale
            if c.timeStepInitScheme == "constant" { fill(lv.dtW, Float(dtStd)) } else { uniform(lv.dtW, bound: dtStd) }
            let dtb = params.ptr(lv.dtB)
            let (lo, hi) = (log(c.timeStepMin), log(c.timeStepMax))
            for d in 0..<c.intermediateSize {
                let dt = max(exp(rng.uniform() * (hi - lo) + lo), c.timeStepFloor)
                dtb[d] = Float(dt + log(-expm1(-dt)))
            }
            let a = params.ptr(lv.aLog)
            for d in 0..<c.intermediateSize {
                for n in 0..<c.stateSize { a[d * c.stateSize + n] = Float(log(Double(n + 1))) }
            }
            fill(lv.d, 1)
            var bound = 1 / Double(c.intermediateSize).squareRoot()
            if c.rescalePrenormResidual { bound /= Double(c.numHiddenLayers).squareRoot() }
            uniform(lv.outW, bound: bound)
        }
        fill(normFView, 1)
        if !c.tieWordEmbeddings { normal(headView, std: std) }
        if let w = params.layout.view("classifier.weight") { normal(w, std: std) }
    }

    public func zeroGradients() { grads.zero() }
}

#if canImport(Glibc)
import Glibc
#endif
