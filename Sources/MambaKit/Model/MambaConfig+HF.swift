import Foundation

/// config.json in the three HF layouts (DESIGN.md §4, a contract) and in mamba_ssm's own:
///
/// - `mamba` (`MambaConfig`): hidden_size, state_size, conv_kernel, expand, intermediate_size, time_step_rank, ...
/// - `mamba2` (`Mamba2Config`): num_heads, head_dim, n_groups, chunk_size, time_step_limit; ED = expand · D must equal
///   H · P, as transformers checks.
/// - `nemotron_h` (`NemotronHConfig`): `layers_block_type` (`linear_attention` | `full_attention` | `mlp`; `moe` is
///   refused; the legacy `hybrid_override_pattern` and the names "mamba"/"attention" are read too), mamba_num_heads,
///   mamba_head_dim, ssm_state_size, n_groups, num_attention_heads, num_key_value_heads, head_dim, intermediate_size
///   (the MLP width), mlp_bias. transformers 5.24 builds attention without biases and never ties the head, so a
///   config asking for either is refused rather than read differently.
/// - mamba_ssm (`d_model`, `n_layer`, `ssm_cfg` with `layer` Mamba1 or Mamba2; vocab padded to
///   `pad_vocab_size_multiple`).
///
/// transformers 5 writes an infinite float as `{"__float__": "Infinity"}`; Python's json writes a bare `Infinity`.
extension MambaConfig {
    /// Reads config.json in any of the layouts above.
    public static func load(path: String) throws -> MambaConfig {
        let data = Data(try FileInput.readBytes(path, maxBytes: 16 << 20))
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(sanitizedJSON(data)))) as? [String: Any] else {
            throw MambaKitError(.format, "config is not a JSON object", at: path)
        }
        return try MambaConfig(json: obj, at: path)
    }

    public init(json o: [String: Any], at path: String? = nil) throws {
        let f = ConfigFields(o, path)
        self.init()
        let type = try f.string("model_type")
        if o["d_model"] != nil && o["hidden_size"] == nil {
            try readMambaSSM(f)
        } else {
            switch type ?? "mamba" {
            case "mamba": try readMamba(f)
            case "mamba2": try readMamba2(f)
            case "nemotron_h": try readNemotronH(f)
            case "sashimi": try readSashimi(f)
            case let t:
                throw MambaKitError(.config, "model_type '\(t)' is not supported (expected mamba, mamba2, nemotron_h or sashimi)", at: path)
            }
        }
        if let mk = o["mambakit"] as? [String: Any] { mambakit = mk }
        try validate(at: path)
    }

    /// Fields every layout shares, and the initialisation settings.
    private mutating func readCommon(_ f: ConfigFields) throws {
        if let e = try f.num("layer_norm_epsilon") { layerNormEpsilon = Float(e) }
        residualInFp32 = try f.bool("residual_in_fp32") ?? residualInFp32
        initializerRange = try f.num("initializer_range") ?? initializerRange
        timeStepMin = try f.num("time_step_min") ?? timeStepMin
        timeStepMax = try f.num("time_step_max") ?? timeStepMax
        timeStepFloor = try f.num("time_step_floor") ?? timeStepFloor
        rescalePrenormResidual = try f.bool("rescale_prenorm_residual") ?? rescalePrenormResidual
        useConvBias = try f.bool("use_conv_bias") ?? useConvBias
        useBias = try f.bool("use_bias") ?? useBias
    }

    private mutating func readMamba(_ f: ConfigFields) throws {
        guard let d = try f.int("hidden_size"), let n = try f.int("num_hidden_layers"), let v = try f.int("vocab_size")
        else { throw MambaKitError(.config, "config needs hidden_size, num_hidden_layers and vocab_size", at: f.path) }
        try f.positiveLayers(n, "num_hidden_layers")
        var rank: Int? = nil
        if let r = f.o["time_step_rank"], !(r is String) { rank = try f.int("time_step_rank") }
        self = MambaConfig(vocabSize: v, dModel: d, layers: n, dState: try f.int("state_size") ?? 16,
                           dConv: try f.int("conv_kernel") ?? 4, expand: try f.num("expand") ?? 2, dtRank: rank,
                           useConvBias: try f.bool("use_conv_bias") ?? true, useBias: try f.bool("use_bias") ?? false,
                           tie: try f.bool("tie_word_embeddings") ?? true)
        if let ed = try f.int("intermediate_size") { intermediateSize = ed }
        try readCommon(f)
        timeStepScale = try f.num("time_step_scale") ?? timeStepScale
        timeStepInitScheme = try f.string("time_step_init_scheme") ?? timeStepInitScheme
        if let act = try f.string("hidden_act"), act != "silu" {
            throw MambaKitError(.config, "hidden_act '\(act)' is not supported (expected silu)", at: f.path)
        }
    }

    /// MambaKit's multi-scale backbone: the `mamba` fields for the outer stage, plus `pool` (factors, outer to
    /// centre), `pool_expand` and `stage_layers` (blocks per stage, outer first).
    private mutating func readSashimi(_ f: ConfigFields) throws {
        try readMamba(f)
        modelType = .sashimi
        guard let pool = try f.intList("pool"), let stages = try f.intList("stage_layers") else {
            throw MambaKitError(.config, "a 'sashimi' config needs pool and stage_layers", at: f.path)
        }
        pooling = pool
        stageLayers = stages
        poolExpand = try f.int("pool_expand") ?? 2
    }

    private mutating func readMamba2(_ f: ConfigFields) throws {
        guard let d = try f.int("hidden_size"), let n = try f.int("num_hidden_layers"), let v = try f.int("vocab_size")
        else { throw MambaKitError(.config, "config needs hidden_size, num_hidden_layers and vocab_size", at: f.path) }
        try f.positiveLayers(n, "num_hidden_layers")
        modelType = .mamba2
        (vocabSize, hiddenSize) = (v, d)
        layerKinds = Array(repeating: .mamba2, count: max(n, 0))
        // transformers' Mamba2Config defaults for absent keys.
        initializerRange = 0.1
        tieWordEmbeddings = try f.bool("tie_word_embeddings") ?? false
        stateSize = try f.int("state_size") ?? 128
        convKernel = try f.int("conv_kernel") ?? 4
        ssmHeads = try f.int("num_heads") ?? 128
        ssmHeadDim = try f.int("head_dim") ?? 64
        nGroups = try f.int("n_groups") ?? 8
        chunkSize = try f.int("chunk_size") ?? 256
        expand = try f.num("expand") ?? 2
        timeStepLimit = try f.floatPair("time_step_limit") ?? [0, .infinity]
        try readCommon(f)
        if let act = try f.string("hidden_act"), act != "silu" {
            throw MambaKitError(.config, "hidden_act '\(act)' is not supported (expected silu)", at: f.path)
        }
        let ed = widthInt(expand * Double(d))
        if ed != ssmHeads * ssmHeadDim {
            throw MambaKitError(.config, "hidden_size × expand (\(ed)) must equal num_heads × head_dim (\(ssmHeads) × \(ssmHeadDim))", at: f.path)
        }
    }

    private mutating func readNemotronH(_ f: ConfigFields) throws {
        guard let d = try f.int("hidden_size"), let v = try f.int("vocab_size") else {
            throw MambaKitError(.config, "config needs hidden_size and vocab_size", at: f.path)
        }
        modelType = .nemotronH
        (vocabSize, hiddenSize) = (v, d)
        var names: [String]
        if let list = f.o["layers_block_type"] {
            guard let l = list as? [String] else {
                throw MambaKitError(.config, "'layers_block_type' must be a list of strings", at: f.path)
            }
            names = l
        } else if let pattern = try f.string("hybrid_override_pattern") {
            names = try pattern.map { ch -> String in
                switch ch {
                case "M": return "linear_attention"
                case "*": return "full_attention"
                case "-": return "mlp"
                case "E": return "moe"
                default: throw MambaKitError(.config, "hybrid_override_pattern has an unknown block '\(ch)'", at: f.path)
                }
            }
        } else {
            throw MambaKitError(.config, "a nemotron_h config needs layers_block_type (or hybrid_override_pattern)", at: f.path)
        }
        layerKinds = try names.enumerated().map { i, name in
            switch name {
            case "linear_attention", "mamba": return .mamba2
            case "full_attention", "attention": return .attention
            case "mlp": return .mlp
            case "moe":
                throw MambaKitError(.config, "layer \(i) is a mixture-of-experts block ('moe'), which this version does not support", at: f.path)
            default:
                throw MambaKitError(.config, "layer \(i) has an unknown block type '\(name)' (expected linear_attention, full_attention or mlp)", at: f.path)
            }
        }
        // transformers' NemotronHConfig defaults for absent keys.
        initializerRange = 0.02
        rescalePrenormResidual = true
        residualInFp32 = false
        tieWordEmbeddings = false
        stateSize = try f.int("ssm_state_size") ?? 128
        convKernel = try f.int("conv_kernel") ?? f.int("mamba_d_conv") ?? 4
        ssmHeads = try f.int("mamba_num_heads") ?? 128
        ssmHeadDim = try f.int("mamba_head_dim") ?? 64
        nGroups = try f.int("n_groups") ?? f.int("mamba_n_groups") ?? 8
        chunkSize = try f.int("chunk_size") ?? f.int("mamba_chunk_size") ?? 128
        timeStepLimit = try f.floatPair("time_step_limit") ?? [0, .infinity]
        attentionHeads = try f.int("num_attention_heads") ?? 32
        kvHeads = try f.int("num_key_value_heads") ?? attentionHeads
        attentionHeadDim = try f.int("head_dim") ?? 128
        mlpWidth = try f.int("intermediate_size") ?? 21504
        mlpBias = try f.bool("mlp_bias") ?? false
        try readCommon(f)
        if let m = try f.num("mamba_dt_min") { timeStepMin = m }
        useConvBias = try f.bool("use_conv_bias") ?? f.bool("mamba_conv_bias") ?? true
        if try f.bool("attention_bias") == true {
            throw MambaKitError(.config, "attention_bias = true is not supported (transformers builds NemotronH attention without biases)", at: f.path)
        }
        if try f.bool("tie_word_embeddings") == true {
            throw MambaKitError(.config, "tie_word_embeddings = true is not supported for nemotron_h (transformers never ties its head)", at: f.path)
        }
        for (key, want) in [("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")] {
            if let act = try f.string(key), act != want {
                throw MambaKitError(.config, "\(key) '\(act)' is not supported (expected \(want))", at: f.path)
            }
        }
    }

    /// mamba_ssm's MambaConfig: vocab padded to pad_vocab_size_multiple, eps 1e-5, RMSNorm; `ssm_cfg.layer` picks
    /// Mamba-1 (read as `mamba`) or Mamba-2 (read as `mamba2`, with mamba_ssm's `Mamba2` defaults).
    private mutating func readMambaSSM(_ f: ConfigFields) throws {
        guard let d = try f.int("d_model"), let n = try f.int("n_layer"), var v = try f.int("vocab_size") else {
            throw MambaKitError(.config, "mamba_ssm config needs d_model, n_layer and vocab_size", at: f.path)
        }
        try f.positiveLayers(n, "n_layer")
        let mult = try f.int("pad_vocab_size_multiple") ?? 8
        if mult > 1, v % mult != 0 { v += mult - v % mult }
        if let di = try f.int("d_intermediate"), di > 0 {
            throw MambaKitError(.config, "d_intermediate = \(di) (gated MLP sub-blocks) is not supported by this version", at: f.path)
        }
        if let attn = f.o["attn_layer_idx"] as? [Any], !attn.isEmpty {
            throw MambaKitError(.config, "attention layers (attn_layer_idx) in the mamba_ssm layout are not supported by this version", at: f.path)
        }
        if let rms = try f.bool("rms_norm"), !rms {
            throw MambaKitError(.config, "rms_norm = false (LayerNorm) is not supported", at: f.path)
        }
        let ssm = ConfigFields(f.o["ssm_cfg"] as? [String: Any] ?? [:], f.path.map { $0 + " (ssm_cfg)" })
        switch try ssm.string("layer") ?? "Mamba1" {
        case "Mamba1":
            var rank: Int? = nil
            if let r = ssm.o["dt_rank"], !(r is String) { rank = try ssm.int("dt_rank") }
            self = MambaConfig(vocabSize: v, dModel: d, layers: n, dState: try ssm.int("d_state") ?? 16,
                               dConv: try ssm.int("d_conv") ?? 4, expand: try ssm.num("expand") ?? 2, dtRank: rank,
                               useConvBias: try ssm.bool("conv_bias") ?? true, useBias: try ssm.bool("bias") ?? false,
                               tie: try f.bool("tie_embeddings") ?? true)
        case "Mamba2":
            modelType = .mamba2
            (vocabSize, hiddenSize) = (v, d)
            layerKinds = Array(repeating: .mamba2, count: max(n, 0))
            tieWordEmbeddings = try f.bool("tie_embeddings") ?? true
            stateSize = try ssm.int("d_state") ?? 128
            convKernel = try ssm.int("d_conv") ?? 4
            expand = try ssm.num("expand") ?? 2
            ssmHeadDim = try ssm.int("headdim") ?? 64
            nGroups = try ssm.int("ngroups") ?? 1
            chunkSize = try ssm.int("chunk_size") ?? 256
            useConvBias = try ssm.bool("conv_bias") ?? true
            useBias = try ssm.bool("bias") ?? false
            timeStepLimit = try ssm.floatPair("dt_limit") ?? [0, .infinity]
            timeStepMin = try ssm.num("dt_min") ?? timeStepMin
            timeStepMax = try ssm.num("dt_max") ?? timeStepMax
            timeStepFloor = try ssm.num("dt_init_floor") ?? timeStepFloor
            let ed = widthInt(expand * Double(d))
            guard ssmHeadDim > 0, ed % ssmHeadDim == 0 else {
                throw MambaKitError(.config, "d_model × expand (\(ed)) is not a multiple of headdim (\(ssmHeadDim))", at: ssm.path)
            }
            ssmHeads = ed / ssmHeadDim
            if let dssm = try ssm.int("d_ssm"), dssm != ed {
                throw MambaKitError(.config, "d_ssm = \(dssm) (gated-MLP lanes beside the SSM) is not supported", at: ssm.path)
            }
            for (key, bad) in [("rmsnorm", false), ("norm_before_gate", true), ("D_has_hdim", true)] {
                if try ssm.bool(key) == bad {
                    throw MambaKitError(.config, "\(key) = \(bad) is not supported", at: ssm.path)
                }
            }
        case let layer:
            throw MambaKitError(.config, "ssm_cfg.layer '\(layer)' is not supported (expected Mamba1 or Mamba2)", at: ssm.path)
        }
        residualInFp32 = try f.bool("residual_in_fp32") ?? true
    }

    /// The HF config dictionary (what `save_pretrained` writes for this layout), with our `mambakit` section.
    public var hfJSON: [String: Any] {
        let infinity: [String: Any] = ["__float__": "Infinity"]
        func float(_ x: Double) -> Any { x.isFinite ? x : (x > 0 ? infinity : ["__float__": "-Infinity"] as [String: Any]) }
        var o: [String: Any] = [
            "vocab_size": vocabSize, "hidden_size": hiddenSize,
            "layer_norm_epsilon": Double("\(layerNormEpsilon)") ?? Double(layerNormEpsilon),
            "tie_word_embeddings": tieWordEmbeddings, "residual_in_fp32": residualInFp32,
            "initializer_range": initializerRange, "time_step_min": timeStepMin, "time_step_max": timeStepMax,
            "time_step_floor": timeStepFloor, "rescale_prenorm_residual": rescalePrenormResidual,
            "use_conv_bias": useConvBias, "use_bias": useBias, "conv_kernel": convKernel,
            "use_cache": true, "pad_token_id": NSNull(), "bos_token_id": NSNull(), "eos_token_id": NSNull(),
            "dtype": "float32",
        ]
        switch modelType {
        case .sashimi:
            o.merge([
                "model_type": "sashimi", "state_size": stateSize, "num_hidden_layers": numHiddenLayers,
                "expand": expand == expand.rounded() ? Int(expand) as Any : expand,
                "intermediate_size": intermediateSize, "time_step_rank": timeStepRank, "hidden_act": "silu",
                "time_step_scale": timeStepScale, "time_step_init_scheme": timeStepInitScheme,
                "pool": pooling, "pool_expand": poolExpand, "stage_layers": stageLayers,
            ]) { $1 }
        case .mamba:
            o.merge([
                "architectures": ["MambaForCausalLM"], "model_type": "mamba", "state_size": stateSize,
                "num_hidden_layers": numHiddenLayers, "expand": expand == expand.rounded() ? Int(expand) as Any : expand,
                "intermediate_size": intermediateSize, "time_step_rank": timeStepRank, "hidden_act": "silu",
                "time_step_scale": timeStepScale, "time_step_init_scheme": timeStepInitScheme,
            ]) { $1 }
        case .mamba2:
            o.merge([
                "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "state_size": stateSize,
                "num_hidden_layers": numHiddenLayers, "num_heads": ssmHeads, "head_dim": ssmHeadDim,
                "expand": expand == expand.rounded() ? Int(expand) as Any : expand, "n_groups": nGroups,
                "chunk_size": chunkSize, "hidden_act": "silu", "time_step_rank": (hiddenSize + 15) / 16,
                "time_step_limit": [float(timeStepLimit[0]), float(timeStepLimit[1])],
            ]) { $1 }
        case .nemotronH:
            let names = layerKinds.map { k -> String in
                switch k {
                case .mamba2: return "linear_attention"
                case .attention: return "full_attention"
                case .mlp: return "mlp"
                case .mamba1: return "mamba1"  // refused by validate()
                }
            }
            o.merge([
                "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "layers_block_type": names,
                "ssm_state_size": stateSize, "mamba_num_heads": ssmHeads, "mamba_head_dim": ssmHeadDim,
                "n_groups": nGroups, "chunk_size": chunkSize, "mamba_hidden_act": "silu", "mamba_proj_bias": useBias,
                "time_step_limit": [float(timeStepLimit[0]), float(timeStepLimit[1])],
                "num_attention_heads": attentionHeads, "num_key_value_heads": kvHeads, "head_dim": attentionHeadDim,
                "attention_bias": false, "attention_dropout": 0.0, "intermediate_size": mlpWidth,
                "mlp_hidden_act": "relu2", "mlp_bias": mlpBias, "hidden_dropout": 0.0, "num_logits_to_keep": 1,
                "use_mamba_kernels": false, "max_position_embeddings": 4096, "num_nextn_predict_layers": 0,
            ]) { $1 }
        }
        if !mambakit.isEmpty { o["mambakit"] = mambakit }
        return o
    }

    public func write(to path: String) throws {
        try AtomicFile.writeText(JSONWriter.string(hfJSON), to: path)
    }
}

/// Typed reads of one config object; each names the key and the file in its error.
struct ConfigFields {
    let o: [String: Any]
    let path: String?
    init(_ o: [String: Any], _ path: String?) { self.o = o; self.path = path }

    func int(_ k: String) throws -> Int? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let n = v as? NSNumber, !jsonIsBool(n), n.doubleValue == n.doubleValue.rounded() {
            guard abs(n.doubleValue) < 9e15 else {
                throw MambaKitError(.config, "'\(k)' = \(v) is larger than this version supports", at: path)
            }
            return n.intValue
        }
        throw MambaKitError(.config, "'\(k)' must be an integer (got \(v))", at: path)
    }

    /// A list of at most 64 integers.
    func intList(_ k: String) throws -> [Int]? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        guard let a = v as? [Any], a.count <= 64 else {
            throw MambaKitError(.config, "'\(k)' must be a list of at most 64 integers (got \(v))", at: path)
        }
        return try a.map { x in
            guard let n = x as? NSNumber, !jsonIsBool(n), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 9e15 else {
                throw MambaKitError(.config, "'\(k)' must be a list of integers (got \(v))", at: path)
            }
            return n.intValue
        }
    }

    func positiveLayers(_ n: Int, _ key: String) throws {
        if n <= 0 { throw MambaKitError(.config, "\(key) must be positive (got \(n))", at: path) }
        if n > 1 << 24 { throw MambaKitError(.config, "\(key) = \(n) is larger than this version supports (\(1 << 24))", at: path) }
    }

    func num(_ k: String) throws -> Double? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let n = v as? NSNumber, !jsonIsBool(n) { return n.doubleValue }
        throw MambaKitError(.config, "'\(k)' must be a number (got \(v))", at: path)
    }

    func bool(_ k: String) throws -> Bool? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let n = v as? NSNumber, jsonIsBool(n) { return n.boolValue }
        throw MambaKitError(.config, "'\(k)' must be true or false (got \(v))", at: path)
    }

    func string(_ k: String) throws -> String? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        if let s = v as? String { return s }
        throw MambaKitError(.config, "'\(k)' must be a string (got \(v))", at: path)
    }

    /// `[low, high]`, each a number or transformers' `{"__float__": "Infinity"}` (a bare `Infinity` has become
    /// 1e308 in `sanitizedJSON`).
    func floatPair(_ k: String) throws -> [Double]? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        func value(_ x: Any) -> Double? {
            if let n = x as? NSNumber, !jsonIsBool(n) {
                let d = n.doubleValue
                return abs(d) >= 1e308 ? (d > 0 ? .infinity : -.infinity) : d
            }
            if let f = x as? [String: Any], f.count == 1, let s = f["__float__"] as? String {
                switch s {
                case "Infinity", "inf": return .infinity
                case "-Infinity", "-inf": return -.infinity
                default: return nil
                }
            }
            return nil
        }
        guard let a = v as? [Any], a.count == 2, let lo = value(a[0]), let hi = value(a[1]) else {
            throw MambaKitError(.config, "'\(k)' must be a pair of numbers [low, high] (got \(v))", at: path)
        }
        return [lo, hi]
    }
}
