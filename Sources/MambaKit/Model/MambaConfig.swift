import Foundation

/// Hyper-parameters of a model, named as in HF transformers' configs (the checkpoint contract, DESIGN.md §4):
/// `MambaConfig` (`model_type` "mamba", a Mamba-1 stack), `Mamba2Config` ("mamba2", a Mamba-2 stack) or
/// `NemotronHConfig` ("nemotron_h", any stack of Mamba-2, attention and MLP blocks), plus MambaKit's own `mambakit`
/// section (tokenizer, task, ...), which other readers ignore. Reading and writing the three layouts lives in
/// `MambaConfig+HF.swift`.
public struct MambaConfig: Equatable, @unchecked Sendable {
    /// The checkpoint layout this config reads and writes as.
    public enum ModelType: String, Sendable {
        case mamba, mamba2
        case nemotronH = "nemotron_h"
        /// MambaKit's multi-scale audio backbone (Mamba-1 blocks in SaShiMi's U-Net, `UNetPlan`); no HF class reads it.
        case sashimi
    }

    public var modelType: ModelType = .mamba
    public var vocabSize: Int = 256
    /// D
    public var hiddenSize: Int = 256
    /// N (Mamba-1 and Mamba-2 blocks)
    public var stateSize: Int = 16
    /// The kind of each layer, in order (HF `layers_block_type` for nemotron_h).
    public var layerKinds: [BlockKind] = Array(repeating: .mamba1, count: 4)
    /// The number of layers; setting it repeats the last layer's kind.
    public var numHiddenLayers: Int {
        get { layerKinds.count }
        set {
            if newValue < layerKinds.count { layerKinds.removeLast(layerKinds.count - max(newValue, 0)) }
            else { layerKinds += Array(repeating: layerKinds.last ?? .mamba1, count: newValue - layerKinds.count) }
        }
    }
    /// K
    public var convKernel: Int = 4
    public var expand: Double = 2
    /// ED; HF derives it as `int(expand · hidden_size)`.
    public var intermediateSize: Int = 512
    /// R; HF's "auto" is ⌈D/16⌉.
    public var timeStepRank: Int = 16
    public var useConvBias: Bool = true
    public var useBias: Bool = false
    public var layerNormEpsilon: Float = 1e-5
    // Mamba-2 blocks (mamba2: num_heads, head_dim, n_groups, chunk_size, time_step_limit; nemotron_h: mamba_num_heads,
    // mamba_head_dim, n_groups, chunk_size). Their ED is H·P.
    /// H
    public var ssmHeads: Int = 8
    /// P
    public var ssmHeadDim: Int = 64
    /// G: heads share B and C within a group, and the gated norm normalises each group's ED/G channels.
    public var nGroups: Int = 1
    /// Q: the SSD chunk length (numerics only: any value gives the same maths).
    public var chunkSize: Int = 256
    /// Mamba-2's clamp of Δ after softplus (`time_step_limit`; nemotron_h clamps at `[time_step_min, ∞)` instead).
    public var timeStepLimit: [Double] = [0, .infinity]
    // Attention blocks (nemotron_h: num_attention_heads, num_key_value_heads, head_dim).
    public var attentionHeads: Int = 4
    /// KV heads: each group of attentionHeads/kvHeads query heads shares one (GQA).
    public var kvHeads: Int = 4
    public var attentionHeadDim: Int = 64
    // MLP blocks (nemotron_h: intermediate_size, mlp_bias).
    public var mlpWidth: Int = 1024
    public var mlpBias: Bool = false
    // The multi-scale (SaShiMi) backbone, model_type "sashimi" (`UNetPlan`).
    /// Pooling factors, outer stage to centre (`pool`); empty for a flat stack.
    public var pooling: [Int] = []
    /// Width multiplier at each pooling (`pool_expand`, SaShiMi's `expand`).
    public var poolExpand: Int = 2
    /// Blocks per stage, outer (full rate) stage first, centre last (`stage_layers`; pooling.count + 1 entries).
    /// `layerKinds` lists them in the order they run: the centre's first, the outer stage's last.
    public var stageLayers: [Int] = []
    public var tieWordEmbeddings: Bool = true
    public var residualInFp32: Bool = true
    // Initialisation (HF `MambaPreTrainedModel._init_weights`).
    public var initializerRange: Double = 0.1
    public var timeStepScale: Double = 1
    public var timeStepMin: Double = 0.001
    public var timeStepMax: Double = 0.1
    public var timeStepFloor: Double = 1e-4
    public var timeStepInitScheme: String = "random"
    public var rescalePrenormResidual: Bool = false
    /// MambaKit's section of config.json, kept verbatim (JSON object) so tasks can store what they need.
    public var mambakit: [String: Any] = [:]

    public init() {}

    /// A config with HF's derived fields filled in (`intermediate_size`, `time_step_rank = "auto"`).
    public init(vocabSize: Int, dModel: Int, layers: Int, dState: Int = 16, dConv: Int = 4, expand: Double = 2,
                dtRank: Int? = nil, useConvBias: Bool = true, useBias: Bool = false, tie: Bool = true) {
        self.vocabSize = vocabSize
        hiddenSize = dModel
        layerKinds = Array(repeating: .mamba1, count: max(layers, 0))
        stateSize = dState
        convKernel = dConv
        self.expand = expand
        intermediateSize = widthInt(expand * Double(dModel))
        timeStepRank = dtRank ?? (dModel + 15) / 16
        self.useConvBias = useConvBias
        self.useBias = useBias
        tieWordEmbeddings = tie
    }

    /// The ED of Mamba-2 blocks.
    public var ssmInner: Int { ssmHeads * ssmHeadDim }

    /// The Δ clamp Mamba-2 blocks apply: `time_step_limit` for mamba2, `[time_step_min, ∞)` for nemotron_h (what
    /// transformers' `NemotronHMamba2Mixer` does, whatever its config's time_step_limit says).
    public var deltaClamp: (lo: Float, hi: Float) {
        if modelType == .nemotronH { return (Float(timeStepMin), .infinity) }
        return (Float(timeStepLimit[0]), Float(timeStepLimit[1]))
    }

    /// The stack in the pattern notation of arXiv 2406.07887 (`M` Mamba-2, `*` attention, `-` MLP, `m` Mamba-1).
    public var pattern: String { String(layerKinds.map(\.symbol)) }

    public static func == (a: MambaConfig, b: MambaConfig) -> Bool {
        a.modelType == b.modelType && a.layerKinds == b.layerKinds && a.ssmHeads == b.ssmHeads
            && a.ssmHeadDim == b.ssmHeadDim && a.nGroups == b.nGroups && a.chunkSize == b.chunkSize
            && a.timeStepLimit == b.timeStepLimit && a.attentionHeads == b.attentionHeads && a.kvHeads == b.kvHeads
            && a.attentionHeadDim == b.attentionHeadDim && a.mlpWidth == b.mlpWidth && a.mlpBias == b.mlpBias
            && a.vocabSize == b.vocabSize && a.hiddenSize == b.hiddenSize && a.stateSize == b.stateSize
            && a.numHiddenLayers == b.numHiddenLayers && a.convKernel == b.convKernel && a.expand == b.expand
            && a.intermediateSize == b.intermediateSize && a.timeStepRank == b.timeStepRank
            && a.useConvBias == b.useConvBias && a.useBias == b.useBias && a.layerNormEpsilon == b.layerNormEpsilon
            && a.tieWordEmbeddings == b.tieWordEmbeddings && a.classLabels == b.classLabels
            && a.pooling == b.pooling && a.poolExpand == b.poolExpand && a.stageLayers == b.stageLayers
    }

    /// The class names of a sequence classifier, in label order (`mambakit.classes`); empty for a language model.
    /// A classifier's parameters add `classifier.weight [C, D]` and `classifier.bias [C]`.
    public var classLabels: [String] {
        get { mambakit["classes"] as? [String] ?? [] }
        set { if newValue.isEmpty { mambakit["classes"] = nil } else { mambakit["classes"] = newValue } }
    }

    /// Checks that the shapes make a model; `location` names the file for the error.
    public func validate(at location: String? = nil) throws {
        func need(_ ok: Bool, _ what: String) throws {
            if !ok { throw MambaKitError(.config, what, at: location) }
        }
        try need(vocabSize > 0, "vocab_size must be positive (got \(vocabSize))")
        try need(hiddenSize > 0, "hidden_size must be positive (got \(hiddenSize))")
        try need(numHiddenLayers > 0, "num_hidden_layers must be positive (got \(numHiddenLayers))")
        try need(layerNormEpsilon > 0, "layer_norm_epsilon must be positive")
        try need(timeStepMin > 0 && timeStepMax >= timeStepMin, "time_step_min/max must satisfy 0 < min <= max")
        let kinds = Set(layerKinds)
        // Every size below 2^24 (and every width made of two of them, too), so no layout arithmetic can overflow.
        let limit = 1 << 24
        func small(_ name: String, _ v: Int) throws {
            try need(v <= limit, "\(name) = \(v) is larger than this version supports (\(limit))")
        }
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("state_size", stateSize),
                          ("num_hidden_layers", numHiddenLayers), ("conv_kernel", convKernel),
                          ("intermediate_size", intermediateSize), ("time_step_rank", timeStepRank),
                          ("Mamba-2 heads", ssmHeads), ("Mamba-2 head_dim", ssmHeadDim), ("n_groups", nGroups),
                          ("chunk_size", chunkSize), ("num_attention_heads", attentionHeads),
                          ("num_key_value_heads", kvHeads), ("attention head_dim", attentionHeadDim),
                          ("MLP width", mlpWidth)] {
            try small(name, v)
        }
        try small("Mamba-2 heads × head_dim", ssmHeads.multipliedReportingOverflow(by: ssmHeadDim).overflow ? Int.max : ssmInner)
        try small("n_groups × state_size", nGroups * stateSize)
        try small("attention heads × head_dim", attentionHeads * attentionHeadDim)
        switch modelType {
        case .sashimi:
            try need(kinds == [.mamba1], "a 'sashimi' model holds only Mamba-1 layers")
            try need(!pooling.isEmpty && pooling.count <= 4, "pool must list 1 to 4 pooling factors (got \(pooling.count))")
            try need(pooling.allSatisfy { (2...64).contains($0) }, "every pooling factor must be in 2 ... 64 (got \(pooling))")
            try need(pooling.reduce(1, *) <= 4096, "the pooling factors \(pooling) multiply to more than 4096")
            try need((1...4).contains(poolExpand), "pool_expand must be in 1 ... 4 (got \(poolExpand))")
            try need(stageLayers.count == pooling.count + 1,
                     "stage_layers needs one count per stage, \(pooling.count + 1) for \(pooling.count) poolings (got \(stageLayers.count))")
            try need(stageLayers.allSatisfy { (0...(1 << 12)).contains($0) }, "stage_layers must be in 0 ... 4096 (got \(stageLayers))")
            try need(stageLayers.reduce(0, +) == numHiddenLayers,
                     "stage_layers \(stageLayers) must add up to num_hidden_layers (\(numHiddenLayers))")
            // Widths grow by pool_expand per stage, at most 4^4 = 256 times: checked against the size limit.
            var w = hiddenSize, ed = intermediateSize, r = timeStepRank
            for _ in pooling { w *= poolExpand; ed *= poolExpand; r *= poolExpand }
            try small("the centre's width", w)
            try small("the centre's intermediate size", ed)
            try small("the centre's time_step_rank", r)
        case .mamba: try need(kinds == [.mamba1] && pooling.isEmpty, "a 'mamba' model holds only Mamba-1 layers")
        case .mamba2: try need(kinds == [.mamba2] && pooling.isEmpty, "a 'mamba2' model holds only Mamba-2 layers")
        case .nemotronH:
            try need(pooling.isEmpty, "only a 'sashimi' model pools")
            try need(!kinds.contains(.mamba1), "a 'nemotron_h' model holds Mamba-2, attention and MLP layers, not Mamba-1")
        }
        if kinds.contains(.mamba1) || kinds.contains(.mamba2) {
            try need(stateSize > 0, "state_size must be positive (got \(stateSize))")
            try need(convKernel > 0, "conv_kernel must be positive (got \(convKernel))")
        }
        if kinds.contains(.mamba1) {
            try need(intermediateSize > 0, "intermediate_size must be positive (got \(intermediateSize))")
            try need(timeStepRank > 0, "time_step_rank must be positive (got \(timeStepRank))")
        }
        if kinds.contains(.mamba2) {
            try need(ssmHeads > 0 && ssmHeadDim > 0, "Mamba-2 heads and head dim must be positive (got \(ssmHeads) × \(ssmHeadDim))")
            try need(nGroups > 0 && ssmHeads % nGroups == 0, "the Mamba-2 heads (\(ssmHeads)) must divide into n_groups (\(nGroups))")
            try need(chunkSize > 0, "chunk_size must be positive (got \(chunkSize))")
            try need(timeStepLimit.count == 2 && timeStepLimit[0] >= 0 && !(timeStepLimit[1] < timeStepLimit[0]),
                     "time_step_limit must be [low, high] with 0 <= low <= high")
        }
        if kinds.contains(.attention) {
            try need(attentionHeads > 0 && kvHeads > 0 && attentionHeadDim > 0,
                     "attention heads, KV heads and head_dim must be positive")
            try need(attentionHeads % kvHeads == 0, "num_attention_heads (\(attentionHeads)) must be a multiple of num_key_value_heads (\(kvHeads))")
        }
        if kinds.contains(.mlp) { try need(mlpWidth > 0, "the MLP width (intermediate_size) must be positive (got \(mlpWidth))") }
    }

    /// Parameter count (tied head counted once).
    public var parameterCount: Int { MambaModel.layout(for: self).views.reduce(0) { $0 + $1.count } }
}

/// Python's json module writes bare `Infinity`, `-Infinity` and `NaN`, which are not JSON; map them to large
/// numbers/null outside strings so such configs still parse (only Mamba-2's time_step_limit uses them).
func sanitizedJSON(_ data: Data) -> [UInt8] {
    let bytes = [UInt8](data)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    var inString = false
    while i < bytes.count {
        let c = bytes[i]
        if inString {
            out.append(c)
            if c == UInt8(ascii: "\\"), i + 1 < bytes.count { out.append(bytes[i + 1]); i += 2; continue }
            if c == UInt8(ascii: "\"") { inString = false }
            i += 1
            continue
        }
        if c == UInt8(ascii: "\"") { inString = true; out.append(c); i += 1; continue }
        func match(_ word: String) -> Bool {
            let w = Array(word.utf8)
            return i + w.count <= bytes.count && Array(bytes[i..<(i + w.count)]) == w
        }
        if match("-Infinity") { out += Array("-1e308".utf8); i += 9; continue }
        if match("Infinity") { out += Array("1e308".utf8); i += 8; continue }
        if match("NaN") { out += Array("null".utf8); i += 3; continue }
        out.append(c)
        i += 1
    }
    return out
}

/// JSONSerialization hands booleans back as NSNumber too; only their Objective-C type tells them apart.
func jsonIsBool(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
}

/// The OS reason inside a Foundation file error, for messages.
func ioReason(_ error: Error) -> String {
    let ns = error as NSError
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(underlying.code)))
    }
    if ns.domain == NSCocoaErrorDomain {
        switch ns.code {
        case NSFileReadNoSuchFileError: return "no such file"
        case NSFileReadNoPermissionError: return "permission denied"
        default: break
        }
    }
    return ns.localizedDescription
}

/// A width computed in Double (expand × d_model) as an Int, saturating instead of trapping on NaN, infinity or values
/// out of range (the config's validation then refuses it).
func widthInt(_ x: Double) -> Int {
    guard x.isFinite else { return x > 0 ? Int.max : Int.min }
    if x >= 9e18 { return Int.max }
    if x <= -9e18 { return Int.min }
    return Int(x)
}
