import Foundation

/// Model directories in the HF transformers layout (DESIGN.md §4, a contract): `config.json` + `model.safetensors`
/// with HF's keys. mamba_ssm's layout loads too (`backbone.embedding.weight`, `d_model`/`n_layer`/`ssm_cfg`, vocab
/// padded to `pad_vocab_size_multiple`). F32, F16, BF16 and F64 tensors load (converted to Float32 exactly as
/// PyTorch's `.float()`); a model saves as F32 unless asked otherwise.
extension MambaModel {
    public static let configFile = "config.json"
    public static let weightsFile = "model.safetensors"

    /// Loads `dir/config.json` and `dir/model.safetensors`, checking every tensor's presence and shape.
    public static func load(directory dir: String) throws -> MambaModel {
        try requireDirectory(dir)
        let cfgPath = dir + "/" + configFile
        let wPath = dir + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: cfgPath) else {
            throw MambaKitError(.io, "no \(configFile) in the model directory", at: dir)
        }
        guard FileManager.default.fileExists(atPath: wPath) else {
            if FileManager.default.fileExists(atPath: dir + "/pytorch_model.bin") {
                throw MambaKitError(.format, "only pytorch_model.bin found: pickle files are never loaded; convert it to model.safetensors", at: dir)
            }
            throw MambaKitError(.io, "no \(weightsFile) in the model directory", at: dir)
        }
        let config = try MambaConfig.load(path: cfgPath)
        let model = try MambaModel(config: config)
        try model.loadWeights(from: SafeTensorsFile(path: wPath))
        return model
    }

    /// Fills the parameters from a safetensors file in HF's or mamba_ssm's key layout.
    public func loadWeights(from file: SafeTensorsFile) throws {
        let where_ = file.path
        // mamba_ssm says `backbone.embedding.weight`; HF says `backbone.embeddings.weight`.
        var byName: [String: SafeTensorInfo] = [:]
        for t in file.tensors {
            let name = t.name == "backbone.embedding.weight" ? "backbone.embeddings.weight" : t.name
            if byName[name] != nil {
                throw MambaKitError(.format, "both backbone.embedding.weight and backbone.embeddings.weight are present", at: where_)
            }
            byName[name] = t
        }
        var missing: [String] = []
        for view in params.layout.views {
            guard let t = byName[view.name] else { missing.append(view.name); continue }
            // Conv weights are [ED, 1, K]; accept an equivalent [ED, K] as well.
            let shapeOK = t.shape == view.shape
                || (view.name.hasSuffix("conv1d.weight") && t.shape == [view.shape[0], view.shape[2]])
            guard shapeOK else {
                throw MambaKitError(.shape, "tensor '\(view.name)' has shape \(t.shape) but the config needs \(view.shape)", at: where_)
            }
            try file.copyFloats(t.name, into: params.ptr(view), count: view.count)
        }
        if !missing.isEmpty {
            let list = missing.prefix(5).joined(separator: ", ") + (missing.count > 5 ? ", … (\(missing.count) in all)" : "")
            throw MambaKitError(.format, "missing tensors: \(list)", at: where_)
        }
        var unexpected = byName.keys.filter { !params.layout.contains($0) }.sorted()
        if config.tieWordEmbeddings, let i = unexpected.firstIndex(of: "lm_head.weight") {
            // Tied checkpoints may carry the head too (mamba_ssm always does); it must be the embedding itself.
            unexpected.remove(at: i)
            let head = try file.floats(byName["lm_head.weight"]!.name)
            let emb = params.values("backbone.embeddings.weight")
            if head.count != emb.count || head != emb {
                throw MambaKitError(.format, "config ties the head to the embeddings, but lm_head.weight differs from them", at: where_)
            }
        }
        if !unexpected.isEmpty {
            throw MambaKitError(.format, "unexpected tensors: \(unexpected.prefix(5).joined(separator: ", "))", at: where_)
        }
    }

    /// The parameters as safetensors entries with HF's keys (tied heads omitted, as `save_pretrained` does).
    public func weightTensors(dtype: SafeTensorDType = .F32) -> [SafeTensorOut] {
        params.layout.views.map { v in
            SafeTensorOut(name: v.name, shape: v.shape, floats: params.values(v.name), dtype: dtype)
        }
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (each atomically), creating `dir` if needed.
    public func save(directory dir: String, dtype: SafeTensorDType = .F32) throws {
        try ensureDirectory(dir)
        try SafeTensorsFile.write(weightTensors(dtype: dtype), metadata: ["format": "pt"], to: dir + "/" + Self.weightsFile)
        try config.write(to: dir + "/" + Self.configFile)
    }
}

/// Throws a clear error unless `path` is an existing directory.
func requireDirectory(_ path: String) throws {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw MambaKitError(.io, "no such directory", at: path)
    }
    guard isDir.boolValue else { throw MambaKitError(.io, "expected a directory, found a file", at: path) }
}

/// Creates `path` (and parents) unless it exists; a file in its place is an error.
public func ensureDirectory(_ path: String) throws {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        guard isDir.boolValue else { throw MambaKitError(.io, "expected a directory, found a file", at: path) }
        return
    }
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw MambaKitError(.io, "cannot create directory: \(ioReason(error))", at: path)
    }
}
