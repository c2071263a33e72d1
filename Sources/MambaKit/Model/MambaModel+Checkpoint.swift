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
        // The header only: every tensor is checked against the config before the parameters are allocated.
        let file = try SafeTensorsFile(path: wPath)
        let matched = try match(file, layout: MambaModel.layout(for: config), config: config)
        let model = try MambaModel(config: config)
        try model.fill(from: file, matched)
        return model
    }

    /// Fills the parameters from a safetensors file in HF's or mamba_ssm's key layout.
    public func loadWeights(from file: SafeTensorsFile) throws {
        try fill(from: file, try Self.match(file, layout: params.layout, config: config))
    }

    /// The file's tensor for each view of `layout`, after checking names and shapes (nothing is read but the header):
    /// every view present with its shape, nothing unexpected.
    static func match(_ file: SafeTensorsFile, layout: ArenaLayout, config: MambaConfig) throws
        -> (tensors: [(view: TensorView, tensor: SafeTensorInfo)], tiedHead: SafeTensorInfo?) {
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
        var pairs: [(view: TensorView, tensor: SafeTensorInfo)] = []
        for view in layout.views {
            guard let t = byName[view.name] else { missing.append(view.name); continue }
            // Conv weights are [ED, 1, K]; accept an equivalent [ED, K] as well.
            let shapeOK = t.shape == view.shape
                || (view.name.hasSuffix("conv1d.weight") && view.shape.count == 3 && t.shape == [view.shape[0], view.shape[2]])
            guard shapeOK else {
                throw MambaKitError(.shape, "tensor '\(view.name)' has shape \(t.shape) but the config needs \(view.shape)", at: where_)
            }
            pairs.append((view, t))
        }
        if !missing.isEmpty {
            let list = missing.prefix(5).joined(separator: ", ") + (missing.count > 5 ? ", … (\(missing.count) in all)" : "")
            throw MambaKitError(.format, "missing tensors: \(list)", at: where_)
        }
        var unexpected = byName.keys.filter { !layout.contains($0) }.sorted()
        var tied: SafeTensorInfo?
        if config.tieWordEmbeddings, let i = unexpected.firstIndex(of: "lm_head.weight") {
            // Tied checkpoints may carry the head too (mamba_ssm always does); it must be the embedding itself.
            unexpected.remove(at: i)
            tied = byName["lm_head.weight"]
        }
        if !unexpected.isEmpty {
            throw MambaKitError(.format, "unexpected tensors: \(unexpected.prefix(5).joined(separator: ", "))", at: where_)
        }
        return (pairs, tied)
    }

    /// Reads the matched tensors into the parameters; a NaN or infinity in any of them is refused, naming it.
    func fill(from file: SafeTensorsFile,
              _ matched: (tensors: [(view: TensorView, tensor: SafeTensorInfo)], tiedHead: SafeTensorInfo?)) throws {
        for (view, t) in matched.tensors {
            let p = params.ptr(view)
            try file.copyFloats(t.name, into: p, count: view.count)
            if let bad = (0..<view.count).first(where: { !p[$0].isFinite }) {
                throw MambaKitError(.numeric, "tensor '\(view.name)' holds \(p[bad]) at element \(bad)", at: file.path)
            }
        }
        if let head = matched.tiedHead {
            let values = try file.floats(head.name)
            let emb = params.values("backbone.embeddings.weight")
            if values.count != emb.count || values != emb {
                throw MambaKitError(.format, "config ties the head to the embeddings, but lm_head.weight differs from them", at: file.path)
            }
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
