import Foundation

/// Hyper-parameters of a Mamba-1 language model, named as in HF transformers' `MambaConfig` (the checkpoint
/// contract, DESIGN.md §4), plus MambaKit's own `mambakit` section (tokenizer, task, ...), which other readers ignore.
public struct MambaConfig: Equatable, @unchecked Sendable {
    public var vocabSize: Int = 256
    /// D
    public var hiddenSize: Int = 256
    /// N
    public var stateSize: Int = 16
    public var numHiddenLayers: Int = 4
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
        numHiddenLayers = layers
        stateSize = dState
        convKernel = dConv
        self.expand = expand
        intermediateSize = Int(expand * Double(dModel))
        timeStepRank = dtRank ?? (dModel + 15) / 16
        self.useConvBias = useConvBias
        self.useBias = useBias
        tieWordEmbeddings = tie
    }

    public static func == (a: MambaConfig, b: MambaConfig) -> Bool {
        a.vocabSize == b.vocabSize && a.hiddenSize == b.hiddenSize && a.stateSize == b.stateSize
            && a.numHiddenLayers == b.numHiddenLayers && a.convKernel == b.convKernel && a.expand == b.expand
            && a.intermediateSize == b.intermediateSize && a.timeStepRank == b.timeStepRank
            && a.useConvBias == b.useConvBias && a.useBias == b.useBias && a.layerNormEpsilon == b.layerNormEpsilon
            && a.tieWordEmbeddings == b.tieWordEmbeddings && a.classLabels == b.classLabels
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
        try need(stateSize > 0, "state_size must be positive (got \(stateSize))")
        try need(numHiddenLayers > 0, "num_hidden_layers must be positive (got \(numHiddenLayers))")
        try need(convKernel > 0, "conv_kernel must be positive (got \(convKernel))")
        try need(intermediateSize > 0, "intermediate_size must be positive (got \(intermediateSize))")
        try need(timeStepRank > 0, "time_step_rank must be positive (got \(timeStepRank))")
        try need(layerNormEpsilon > 0, "layer_norm_epsilon must be positive")
        try need(timeStepMin > 0 && timeStepMax >= timeStepMin, "time_step_min/max must satisfy 0 < min <= max")
    }

    /// Parameter count (tied head counted once).
    public var parameterCount: Int { MambaModel.layout(for: self).views.reduce(0) { $0 + $1.count } }

    // MARK: JSON (HF layout, and mamba_ssm's)

    /// Reads config.json in HF's layout, or mamba_ssm's (`d_model`, `n_layer`, `ssm_cfg`).
    public static func load(path: String) throws -> MambaConfig {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MambaKitError(.io, "cannot read config: \(ioReason(error))", at: path)
        }
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(sanitizedJSON(data)))) as? [String: Any] else {
            throw MambaKitError(.format, "config is not a JSON object", at: path)
        }
        return try MambaConfig(json: obj, at: path)
    }

    public init(json o: [String: Any], at path: String? = nil) throws {
        func int(_ k: String) throws -> Int? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            if let n = v as? NSNumber, !jsonIsBool(n), n.doubleValue == n.doubleValue.rounded() {
                return n.intValue
            }
            throw MambaKitError(.config, "'\(k)' must be an integer (got \(v))", at: path)
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
        self.init()
        if let t = o["model_type"] as? String, t != "mamba" {
            throw MambaKitError(.config, "model_type '\(t)' is not supported (expected 'mamba')", at: path)
        }
        let isSSM = o["d_model"] != nil && o["hidden_size"] == nil
        if isSSM {
            // mamba_ssm's MambaConfig: vocab padded to pad_vocab_size_multiple, eps 1e-5, RMSNorm.
            guard let d = try int("d_model"), let n = try int("n_layer"), var v = try int("vocab_size") else {
                throw MambaKitError(.config, "mamba_ssm config needs d_model, n_layer and vocab_size", at: path)
            }
            let mult = try int("pad_vocab_size_multiple") ?? 8
            if mult > 1, v % mult != 0 { v += mult - v % mult }
            if let di = try int("d_intermediate"), di > 0 {
                throw MambaKitError(.config, "d_intermediate = \(di) (gated MLP sub-blocks) is not supported by this version", at: path)
            }
            if let attn = o["attn_layer_idx"] as? [Any], !attn.isEmpty {
                throw MambaKitError(.config, "attention layers (attn_layer_idx) are not supported by this version", at: path)
            }
            let ssm = o["ssm_cfg"] as? [String: Any] ?? [:]
            if let layer = ssm["layer"] as? String, layer != "Mamba1" {
                throw MambaKitError(.config, "ssm_cfg.layer '\(layer)' is not supported (expected Mamba1)", at: path)
            }
            let ds = (ssm["d_state"] as? NSNumber)?.intValue ?? 16
            let dc = (ssm["d_conv"] as? NSNumber)?.intValue ?? 4
            let ex = (ssm["expand"] as? NSNumber)?.doubleValue ?? 2
            var rank: Int? = nil
            if let r = ssm["dt_rank"] as? NSNumber { rank = r.intValue }
            self.init(vocabSize: v, dModel: d, layers: n, dState: ds, dConv: dc, expand: ex, dtRank: rank,
                      useConvBias: (ssm["conv_bias"] as? Bool) ?? true, useBias: (ssm["bias"] as? Bool) ?? false,
                      tie: try bool("tie_embeddings") ?? true)
            if let rms = try bool("rms_norm"), !rms {
                throw MambaKitError(.config, "rms_norm = false (LayerNorm) is not supported", at: path)
            }
            residualInFp32 = try bool("residual_in_fp32") ?? true
        } else {
            guard let d = try int("hidden_size"), let n = try int("num_hidden_layers"), let v = try int("vocab_size")
            else { throw MambaKitError(.config, "config needs hidden_size, num_hidden_layers and vocab_size", at: path) }
            var rank: Int? = nil
            if let r = o["time_step_rank"], !(r is String) { rank = try int("time_step_rank") }
            self.init(vocabSize: v, dModel: d, layers: n, dState: try int("state_size") ?? 16,
                      dConv: try int("conv_kernel") ?? 4, expand: try num("expand") ?? 2, dtRank: rank,
                      useConvBias: try bool("use_conv_bias") ?? true, useBias: try bool("use_bias") ?? false,
                      tie: try bool("tie_word_embeddings") ?? true)
            if let ed = try int("intermediate_size") { intermediateSize = ed }
            if let e = try num("layer_norm_epsilon") { layerNormEpsilon = Float(e) }
            residualInFp32 = try bool("residual_in_fp32") ?? true
            initializerRange = try num("initializer_range") ?? initializerRange
            timeStepScale = try num("time_step_scale") ?? timeStepScale
            timeStepMin = try num("time_step_min") ?? timeStepMin
            timeStepMax = try num("time_step_max") ?? timeStepMax
            timeStepFloor = try num("time_step_floor") ?? timeStepFloor
            timeStepInitScheme = (o["time_step_init_scheme"] as? String) ?? timeStepInitScheme
            rescalePrenormResidual = try bool("rescale_prenorm_residual") ?? false
            if let act = o["hidden_act"] as? String, act != "silu" {
                throw MambaKitError(.config, "hidden_act '\(act)' is not supported (expected silu)", at: path)
            }
        }
        if let mk = o["mambakit"] as? [String: Any] { mambakit = mk }
        try validate(at: path)
    }

    /// The HF `MambaConfig` dictionary (what `save_pretrained` writes), with our `mambakit` section.
    public var hfJSON: [String: Any] {
        var o: [String: Any] = [
            "architectures": ["MambaForCausalLM"], "model_type": "mamba",
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "state_size": stateSize,
            "num_hidden_layers": numHiddenLayers, "conv_kernel": convKernel, "expand": expand,
            "intermediate_size": intermediateSize, "time_step_rank": timeStepRank,
            "use_conv_bias": useConvBias, "use_bias": useBias, "layer_norm_epsilon": Double("\(layerNormEpsilon)") ?? Double(layerNormEpsilon),
            "tie_word_embeddings": tieWordEmbeddings, "residual_in_fp32": residualInFp32,
            "hidden_act": "silu", "initializer_range": initializerRange, "time_step_scale": timeStepScale,
            "time_step_min": timeStepMin, "time_step_max": timeStepMax, "time_step_floor": timeStepFloor,
            "time_step_init_scheme": timeStepInitScheme, "rescale_prenorm_residual": rescalePrenormResidual,
            "use_cache": true, "pad_token_id": NSNull(), "bos_token_id": NSNull(), "eos_token_id": NSNull(),
            "dtype": "float32",
        ]
        // HF writes a whole-number expand as an integer.
        if expand == expand.rounded() { o["expand"] = Int(expand) }
        if !mambakit.isEmpty { o["mambakit"] = mambakit }
        return o
    }

    public func write(to path: String) throws {
        try AtomicFile.writeText(JSONWriter.string(hfJSON), to: path)
    }
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
