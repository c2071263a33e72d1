import Foundation

/// The language-model task end to end, shared by the `train`/`eval`/`generate` commands and by pipelines:
/// read data in a format, build or load a model, train, evaluate exactly, generate.
public enum DataFormat: String, CaseIterable, Sendable {
    case bytes, fasta, audio

    func unsupported() -> MambaKitError {
        MambaKitError(.usage, "format '\(rawValue)' is not available in this version of mambakit (use --format bytes or fasta)")
    }
}

/// Model shape chosen on the command line or in a pipeline; nil fields take the defaults. The stack is `mixer`
/// (a pure Mamba-1 or Mamba-2 stack of `layers` blocks) or `pattern` (arXiv 2406.07887's notation: `M` Mamba-2,
/// `*` attention, `-` MLP, or all `m` for Mamba-1), which overrides both; a pure Mamba-1 stack saves in HF's `mamba`
/// layout, a pure Mamba-2 stack in `mamba2`, anything else in `nemotron_h`.
public struct ModelSpec: Equatable, Sendable {
    public var dModel: Int?
    public var layers: Int?
    public var dState: Int?
    public var dConv: Int?
    public var expand: Double?
    public var dtRank: Int?
    public var tie: Bool?
    /// `mamba1` (default) or `mamba2`.
    public var mixer: BlockKind?
    public var pattern: String?
    /// Mamba-2: head dim P (default 64), groups G (default 1), chunk size Q (default 64).
    public var headDim: Int?
    public var groups: Int?
    public var chunkSize: Int?
    /// Attention: heads (default D / attn_head_dim), KV heads (default half the heads), head dim (default 64).
    public var heads: Int?
    public var kvHeads: Int?
    public var attnHeadDim: Int?
    /// MLP width (default 4·D).
    public var mlpWidth: Int?
    /// The multi-scale backbone (`--unet 4,4`): pooling factors, outer to centre; `layers` is then the blocks per
    /// stage. `poolExpand`: the width multiplier per pooling (default 2).
    public var unet: [Int]?
    public var poolExpand: Int?
    /// Blocks per stage, outer first (`--stage-layers 0,2,2`; read from a model when they differ); overrides `layers`.
    public var stageLayers: [Int]?
    /// The model this spec was read from: `config` gives it back unchanged unless a field was changed since.
    var source: MambaConfig?
    public init() {}

    /// The shape of an existing model.
    public init(_ c: MambaConfig) {
        dModel = c.hiddenSize; layers = c.numHiddenLayers; dState = c.stateSize; dConv = c.convKernel
        tie = c.tieWordEmbeddings
        pattern = c.pattern
        switch c.modelType {
        case .mamba:
            expand = c.expand; dtRank = c.timeStepRank; mixer = .mamba1
        case .sashimi:
            expand = c.expand; dtRank = c.timeStepRank; mixer = .mamba1
            unet = c.pooling; poolExpand = c.poolExpand; stageLayers = c.stageLayers; pattern = nil
            layers = Set(c.stageLayers).count == 1 ? c.stageLayers[0] : nil
        case .mamba2, .nemotronH:
            expand = Double(c.ssmInner) / Double(c.hiddenSize)
            mixer = c.modelType == .mamba2 ? .mamba2 : nil
            headDim = c.ssmHeadDim; groups = c.nGroups; chunkSize = c.chunkSize
            heads = c.attentionHeads; kvHeads = c.kvHeads; attnHeadDim = c.attentionHeadDim; mlpWidth = c.mlpWidth
        }
        source = c
    }

    public static func == (a: ModelSpec, b: ModelSpec) -> Bool {
        a.dModel == b.dModel && a.layers == b.layers && a.dState == b.dState && a.dConv == b.dConv
            && a.expand == b.expand && a.dtRank == b.dtRank && a.tie == b.tie && a.mixer == b.mixer
            && a.pattern == b.pattern && a.headDim == b.headDim && a.groups == b.groups && a.chunkSize == b.chunkSize
            && a.heads == b.heads && a.kvHeads == b.kvHeads && a.attnHeadDim == b.attnHeadDim && a.mlpWidth == b.mlpWidth
            && a.unet == b.unet && a.poolExpand == b.poolExpand && a.stageLayers == b.stageLayers
    }

    /// `--stage-layers` / `model.stage_layers`: blocks per stage as "0,2,2".
    public static func stageCounts(_ text: String) throws -> [Int] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.count <= 5, parts.allSatisfy({ $0 != nil && (0...4096).contains($0!) }) else {
            throw MambaKitError(.usage, "--stage-layers '\(text)' must be blocks per stage in 0 ... 4096, outer stage first, separated by commas (e.g. 0,2,2)")
        }
        return parts.map { $0! }
    }

    /// `--unet` / `model.unet`: pooling factors as "4,4".
    public static func poolFactors(_ text: String) throws -> [Int] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let factors = parts.map { Int($0) }
        guard !parts.isEmpty, parts.count <= 4, factors.allSatisfy({ $0 != nil && (2...64).contains($0!) }),
              factors.reduce(1, { $0 * $1! }) <= 4096 else {
            throw MambaKitError(.usage, "--unet '\(text)' must be 1 to 4 pooling factors in 2 ... 64, separated by commas, multiplying to at most 4096 (e.g. 4,4)")
        }
        return factors.map { $0! }
    }

    /// The command-line name of the first field set that shapes the stack, if any.
    public var firstShapeFlag: String? {
        let fields: [(String, Bool)] = [
            ("--d-model", dModel != nil), ("--layers", layers != nil), ("--d-state", dState != nil),
            ("--d-conv", dConv != nil), ("--expand", expand != nil), ("--mixer", mixer != nil),
            ("--pattern", pattern != nil), ("--head-dim", headDim != nil), ("--groups", groups != nil),
            ("--chunk-size", chunkSize != nil), ("--heads", heads != nil), ("--kv-heads", kvHeads != nil),
            ("--attn-head-dim", attnHeadDim != nil), ("--mlp-width", mlpWidth != nil), ("--unet", unet != nil),
            ("--pool-expand", poolExpand != nil), ("--stage-layers", stageLayers != nil),
        ]
        return fields.first { $0.1 }?.0
    }

    /// Fills unset fields from `other`.
    public func merged(over other: ModelSpec) -> ModelSpec {
        var m = self
        m.dModel = dModel ?? other.dModel
        m.layers = layers ?? other.layers
        m.dState = dState ?? other.dState
        m.dConv = dConv ?? other.dConv
        m.expand = expand ?? other.expand
        m.dtRank = dtRank ?? other.dtRank
        m.tie = tie ?? other.tie
        // A pattern given here fixes the depth: the other's layer count (a default) does not apply.
        if pattern != nil && layers == nil { m.layers = nil }
        // A pattern given here replaces the other's stack; a mixer given here replaces the other's pattern.
        m.mixer = mixer ?? (pattern == nil ? other.mixer : nil)
        m.pattern = pattern ?? (mixer == nil ? other.pattern : nil)
        m.headDim = headDim ?? other.headDim
        m.groups = groups ?? other.groups
        m.chunkSize = chunkSize ?? other.chunkSize
        m.heads = heads ?? other.heads
        m.kvHeads = kvHeads ?? other.kvHeads
        m.attnHeadDim = attnHeadDim ?? other.attnHeadDim
        m.mlpWidth = mlpWidth ?? other.mlpWidth
        m.unet = unet ?? other.unet
        m.poolExpand = poolExpand ?? other.poolExpand
        m.stageLayers = stageLayers ?? (layers == nil && unet == nil ? other.stageLayers : nil)
        m.source = other.source
        return m
    }

    /// `--mixer` / `model.mixer`: mamba1 or mamba2.
    public static func mixer(named name: String) throws -> BlockKind {
        switch name {
        case "mamba1": return .mamba1
        case "mamba2": return .mamba2
        default: throw MambaKitError(.usage, "--mixer '\(name)' is not one of mamba1, mamba2")
        }
    }

    /// The block kinds of a pattern string.
    public static func kinds(of pattern: String) throws -> [BlockKind] {
        guard !pattern.isEmpty else { throw MambaKitError(.usage, "--pattern is empty: give at least one block (M, *, -, or m)") }
        let kinds = try pattern.map { ch -> BlockKind in
            guard let k = BlockKind(symbol: ch) else {
                throw MambaKitError(.usage, "--pattern '\(pattern)' has an unknown block '\(ch)' (M Mamba-2, * attention, - MLP, m Mamba-1)")
            }
            return k
        }
        if kinds.contains(.mamba1) && Set(kinds) != [.mamba1] {
            throw MambaKitError(.usage, "--pattern '\(pattern)' mixes Mamba-1 (m) with other blocks, which no checkpoint layout holds; use M (Mamba-2) in a hybrid")
        }
        return kinds
    }

    public func config(vocabSize: Int) throws -> MambaConfig {
        if let src = source, ModelSpec(src) == self, src.vocabSize == vocabSize { return src }
        let kinds: [BlockKind]
        if let pattern {
            kinds = try Self.kinds(of: pattern)
            if let layers, layers != kinds.count {
                throw MambaKitError(.usage, "--layers \(layers) disagrees with --pattern '\(pattern)' (\(kinds.count) blocks); give one of them")
            }
        } else {
            kinds = Array(repeating: mixer ?? .mamba1, count: layers ?? 4)
        }
        let D = dModel ?? 256
        // Every size given (flag or pipeline key) in 1 ... 2^24, before any arithmetic on it.
        let given: [(String, Int?)] = [
            ("--d-model", D), ("--layers", kinds.count), ("--d-state", dState), ("--d-conv", dConv), ("--dt-rank", dtRank),
            ("--head-dim", headDim), ("--heads", heads), ("--kv-heads", kvHeads), ("--attn-head-dim", attnHeadDim),
            ("--mlp-width", mlpWidth), ("--groups", groups), ("--chunk-size", chunkSize),
        ]
        for case let (flag, v?) in given where !(1...(1 << 24)).contains(v) {
            throw MambaKitError(.usage, v < 1 ? "\(flag) must be positive (got \(v))"
                                              : "\(flag) \(v) is larger than this version supports (\(1 << 24))")
        }
        if let expand, !(expand.isFinite && expand > 0) {
            throw MambaKitError(.usage, "--expand must be a positive number (got \(expand))")
        }
        if unet == nil, poolExpand != nil { throw MambaKitError(.usage, "--pool-expand needs --unet") }
        if unet == nil, stageLayers != nil { throw MambaKitError(.usage, "--stage-layers needs --unet") }
        if let unet, let stageLayers {
            guard stageLayers.count == unet.count + 1, stageLayers.allSatisfy({ (0...4096).contains($0) }),
                  stageLayers.contains(where: { $0 > 0 }) else {
                throw MambaKitError(.usage, "--stage-layers needs \(unet.count + 1) counts in 0 ... 4096 (one per stage, outer first, at least one block), got \(stageLayers.map(String.init).joined(separator: ","))")
            }
        }
        if let unet {
            // The multi-scale backbone: Mamba-1 blocks, `layers` per stage.
            guard Set(kinds) == [.mamba1] else {
                throw MambaKitError(.usage, "--unet builds Mamba-1 stages; --mixer mamba2 or a --pattern of other blocks does not apply")
            }
            if let poolExpand, !(1...4).contains(poolExpand) {
                throw MambaKitError(.usage, "--pool-expand must be in 1 ... 4 (got \(poolExpand))")
            }
            let perStage = pattern != nil ? kinds.count : (layers ?? 4)
            guard perStage <= 4096 else { throw MambaKitError(.usage, "--layers \(perStage) per stage is more than 4096") }
            let stages = stageLayers ?? Array(repeating: perStage, count: unet.count + 1)
            var c = MambaConfig(vocabSize: vocabSize, dModel: D, layers: stages.reduce(0, +), dState: dState ?? 16,
                                dConv: dConv ?? 4, expand: expand ?? 2, dtRank: dtRank, tie: tie ?? true)
            c.modelType = .sashimi
            c.pooling = try Self.poolFactors(unet.map(String.init).joined(separator: ","))
            c.poolExpand = poolExpand ?? 2
            c.stageLayers = stages
            guard c.intermediateSize > 0 else { throw MambaKitError(.usage, "d_model × expand must be at least 1") }
            do { try c.validate() } catch let e as MambaKitError { throw MambaKitError(.usage, e.message) }
            return c
        }
        if Set(kinds) == [.mamba1] {
            let c = MambaConfig(vocabSize: vocabSize, dModel: D, layers: kinds.count, dState: dState ?? 16,
                                dConv: dConv ?? 4, expand: expand ?? 2, dtRank: dtRank, tie: tie ?? true)
            guard c.intermediateSize > 0 else { throw MambaKitError(.usage, "d_model × expand must be at least 1") }
            try c.validate()
            return c
        }
        var c = MambaConfig()
        c.vocabSize = vocabSize
        c.hiddenSize = D
        c.layerKinds = kinds
        c.stateSize = dState ?? 64
        c.convKernel = dConv ?? 4
        c.expand = expand ?? 2
        c.chunkSize = chunkSize ?? 64
        c.nGroups = groups ?? 1
        let ed = widthInt(c.expand * Double(D))
        guard ed <= 1 << 24 else {
            throw MambaKitError(.usage, "d_model × expand (\(ed)) is larger than this version supports (\(1 << 24))")
        }
        c.ssmHeadDim = headDim ?? min(64, max(ed, 1))
        if kinds.contains(.mamba2) {
            guard ed > 0, ed % c.ssmHeadDim == 0 else {
                throw MambaKitError(.usage, "d_model × expand (\(ed)) must be a multiple of --head-dim (\(c.ssmHeadDim))")
            }
        }
        c.ssmHeads = max(ed / max(c.ssmHeadDim, 1), 1)
        c.attentionHeadDim = attnHeadDim ?? 64
        c.attentionHeads = heads ?? max(1, D / c.attentionHeadDim)
        c.kvHeads = kvHeads ?? (c.attentionHeads % 2 == 0 ? c.attentionHeads / 2 : c.attentionHeads)
        c.mlpWidth = mlpWidth ?? 4 * D
        if Set(kinds) == [.mamba2] {
            c.modelType = .mamba2
            c.initializerRange = 0.1
            c.tieWordEmbeddings = tie ?? true
        } else {
            // transformers' NemotronH defaults; its head is never tied.
            c.modelType = .nemotronH
            c.initializerRange = 0.02
            c.rescalePrenormResidual = true
            c.residualInFp32 = false
            if tie == true { throw MambaKitError(.usage, "a hybrid stack (nemotron_h layout) cannot tie its head to the embeddings") }
            c.tieWordEmbeddings = false
        }
        try c.validate()
        return c
    }
}

public enum LanguageModelTask {
    /// The shape `train --format audio` uses when none is given: small enough to generate faster than real time
    /// at 16 kHz on two cores (BENCHMARKS.md), 4 layers of width 64.
    public static let defaultAudioModel = MambaConfig(vocabSize: 256, dModel: 64, layers: 4, dState: 16, dConv: 4, expand: 2)
    /// Only the width and depth: other fields (dt_rank "auto") follow whatever width is finally chosen.
    static var defaultAudioSpec: ModelSpec {
        var s = ModelSpec()
        s.dModel = defaultAudioModel.hiddenSize
        s.layers = defaultAudioModel.numHiddenLayers
        return s
    }

    /// The defaults an audio model's shape is completed with: `defaultAudioSpec`, or for the multi-scale backbone
    /// (`--unet` given) width 64 and 2 blocks per stage — 1.5 M parameters for `--unet 4,4`, generating at 0.6 of
    /// real time at 16 kHz on two cores, where 4 blocks per stage (2.7 M) ran at 1.2 (BENCHMARKS.md).
    static func audioDefaults(for spec: ModelSpec) -> ModelSpec {
        guard spec.unet != nil else { return defaultAudioSpec }
        var s = ModelSpec()
        s.dModel = 64
        s.layers = 2
        return s
    }

    /// Loads training streams for `format`; returns the corpus and a fingerprint (paths and sizes). Bytes: one stream
    /// per file. FASTA/FASTQ: one stream per record, tokenized by `tokenizer`, so windows never run from one record
    /// into the next (next-base prediction within each sequence).
    public static func corpus(format: DataFormat, paths: [String], valFraction: Double,
                              tokenizer: DNATokenizer = DNATokenizer(),
                              audio: AudioTokenizer = AudioTokenizer()) throws -> (TokenCorpus, [String]) {
        guard !paths.isEmpty else { throw MambaKitError(.usage, "no --data given") }
        guard valFraction >= 0 && valFraction < 1 else {
            throw MambaKitError(.usage, "--val-fraction must be in [0, 1) (got \(valFraction))")
        }
        switch format {
        case .bytes:
            var streams: [(name: String, tokens: [Int32])] = []
            var fp: [String] = []
            // Held in memory as 4-byte tokens (streaming from disk is issue 12's store): the files together may
            // take at most a fifth of the memory budget.
            var budget = MemoryBudget.available / 5 / 5
            for p in expandPaths(paths) {
                let bytes = try FileInput.readBytes(p, maxBytes: budget)
                budget -= bytes.count
                streams.append((p, ByteTokenizer.encode(bytes)))
                fp.append("\(p):\(bytes.count)")
            }
            guard !streams.isEmpty else { throw MambaKitError(.usage, "no files found in --data", at: paths.joined(separator: ", ")) }
            return (try TokenCorpus(streams: streams, valFraction: valFraction), fp)
        case .fasta:
            var streams: [(name: String, tokens: [Int32])] = []
            var fp: [String] = []
            for p in expandPaths(paths) {
                let reader = try SequenceReader(path: p)
                var i = 0
                while let r = try reader.next() {
                    i += 1
                    guard !r.sequence.isEmpty else { continue }
                    streams.append(("\(p):\(r.name)", try tokenizer.encode(r.sequence, location: "\(p), record \(i) '\(r.name)'")))
                }
                fp.append("\(p):\(fileSize(p))")
            }
            guard !streams.isEmpty else { throw MambaKitError(.usage, "no sequences found in --data", at: paths.joined(separator: ", ")) }
            return (try TokenCorpus(streams: streams, valFraction: valFraction), fp)
        case .audio:
            // One stream per file: the start token (silence), then the file's samples at the model's rate. Many
            // short clips hold out whole clips; a few long recordings hold out their tails.
            var streams: [(name: String, tokens: [Int32])] = []
            var fp: [String] = []
            for p in expandPaths(paths) where ClassificationDataset.audioExtensions.contains((p as NSString).pathExtension.lowercased()) {
                streams.append((p, [audio.silenceToken] + (try ClassificationDataset.audioTokens(p, tokenizer: audio))))
                fp.append("\(p):\(fileSize(p))")
            }
            guard !streams.isEmpty else {
                throw MambaKitError(.usage, "no audio files found in --data (\(ClassificationDataset.audioExtensions.sorted().joined(separator: ", ")))", at: paths.joined(separator: ", "))
            }
            return (try TokenCorpus(streams: streams, valFraction: valFraction, holdout: streams.count >= 10 ? .wholeStreams : .tails), fp)
        }
    }

    /// The training corpus of `paths` through a token store in `cacheDirectory` (default
    /// `TokenStore.defaultDirectory`): tokenized once, at one byte per token for bytes, DNA and 8-bit audio, and
    /// reused while the source files (path, size, mtime, inode) and the tokenizer settings are unchanged. The streams
    /// are those of `corpus(format:…)`, with directories walked recursively for bytes and audio. Returns the corpus
    /// and the data fingerprint (paths and sizes). `progress(done, total)` hears of the source bytes tokenized while
    /// a store is built; `note` of a store found damaged and rebuilt, and of a build's size and speed.
    public static func storedCorpus(format: DataFormat, paths: [String], valFraction: Double,
                                    tokenizer: DNATokenizer = DNATokenizer(), audio: AudioTokenizer = AudioTokenizer(),
                                    cacheDirectory: String? = nil, progress: ((Int, Int) -> Void)? = nil,
                                    note: (String) -> Void = { _ in }) throws -> (TokenCorpus, [String]) {
        guard !paths.isEmpty else { throw MambaKitError(.usage, "no --data given") }
        guard valFraction >= 0 && valFraction < 1 else {
            throw MambaKitError(.usage, "--val-fraction must be in [0, 1) (got \(valFraction))")
        }
        let files: [String]
        let vocabSize: Int
        let tokenizerJSON: Any
        switch format {
        case .bytes:
            files = try expandPathsRecursively(paths)
            vocabSize = ByteTokenizer.vocabSize
            tokenizerJSON = ByteTokenizer.name
        case .fasta:
            files = expandPaths(paths)
            vocabSize = tokenizer.vocabSize
            tokenizerJSON = tokenizer.toJSON()
        case .audio:
            files = try expandPathsRecursively(paths).filter {
                ClassificationDataset.audioExtensions.contains(($0 as NSString).pathExtension.lowercased())
            }
            vocabSize = audio.vocabSize
            tokenizerJSON = audio.toJSON()
        }
        guard !files.isEmpty else {
            let what = format == .audio ? "audio files (\(ClassificationDataset.audioExtensions.sorted().joined(separator: ", ")))" : "files"
            throw MambaKitError(.usage, "no \(what) found in --data", at: paths.joined(separator: ", "))
        }
        var sources: [[String: Any]] = []
        var totalBytes = 0
        for f in files {
            try FileInput.checkFile(f)
            let id = try TokenStore.identity(ofFile: f)
            totalBytes += id["size"] as? Int ?? 0
            sources.append(id)
        }
        let identityObject: [String: Any] = ["store": 1, "format": format.rawValue, "tokenizer": tokenizerJSON, "sources": sources]
        guard let idData = try? JSONSerialization.data(withJSONObject: identityObject, options: [.sortedKeys]) else {
            throw MambaKitError(.usage, "cannot describe the data for the token store", at: paths.joined(separator: ", "))
        }
        let identity = String(decoding: idData, as: UTF8.self)
        let clock = ContinuousClock()
        let t0 = clock.now
        var fingerprint: [String] = []
        let (store, built) = try TokenStore.openOrBuild(directory: cacheDirectory ?? TokenStore.defaultDirectory,
                                                        identity: identity, vocabSize: vocabSize, note: note) { w in
            var done = 0
            switch format {
            case .bytes:
                let named = Set(paths)
                for f in files {
                    let (fd, _) = try FileInput.openForReading(f)
                    defer { close(fd) }
                    let bytesRead = try FileInput.readBlocks(fd, path: f, blockSize: 1 << 20) { block in
                        try w.append(bytes: block)
                        done += block.count
                        progress?(done, totalBytes)
                    }
                    // An empty file named on its own is a mistake; one found in a directory is a stream of nothing.
                    guard bytesRead > 0 || !named.contains(f) else { throw MambaKitError(.io, "file is empty", at: f) }
                    w.endStream()
                }
                guard w.tokenCount > 0 else { throw MambaKitError(.io, "every file is empty", at: paths.joined(separator: ", ")) }
            case .fasta:
                for f in files {
                    let reader = try SequenceReader(path: f)
                    var i = 0
                    while let r = try reader.next() {
                        i += 1
                        guard !r.sequence.isEmpty else { continue }
                        let location = "\(f), record \(i) '\(r.name)'"
                        try w.append(try tokenizer.encode(r.sequence, location: location), location: location)
                        w.endStream()
                    }
                    done += fileSize(f)
                    progress?(done, totalBytes)
                }
                guard w.tokenCount > 0 else { throw MambaKitError(.usage, "no sequences found in --data", at: paths.joined(separator: ", ")) }
            case .audio:
                // One stream per file: the start token (silence), then the file's samples at the model's rate.
                for f in files {
                    try w.append([audio.silenceToken] + (try ClassificationDataset.audioTokens(f, tokenizer: audio)), location: f)
                    w.endStream()
                    done += fileSize(f)
                    progress?(done, totalBytes)
                }
            }
        }
        if built {
            let s = seconds(clock.now - t0)
            note(String(format: "tokenized %d files (%.1f MB) into %d tokens in %.1f s (%.0f MB/s): %@", files.count,
                        Double(totalBytes) / 1e6, store.tokenCount, s, Double(totalBytes) / 1e6 / max(s, 1e-9), store.path))
        }
        for (i, f) in files.enumerated() {
            // Bytes: the stream's length (the bytes read); FASTA and audio: the file's size.
            fingerprint.append("\(f):\(format == .bytes ? store.offsets[i + 1] - store.offsets[i] : (sources[i]["size"] as? Int ?? 0))")
        }
        // Many short clips hold out whole clips; a few long recordings hold out their tails.
        let holdout: TokenCorpus.Holdout = format == .audio && store.streamCount >= 10 ? .wholeStreams : .tails
        return (try TokenCorpus(store: store, valFraction: valFraction, holdout: holdout), fingerprint)
    }

    /// Files named directly, and files found by walking named directories (sorted, hidden ones skipped): audio
    /// datasets come as one folder per class or speaker.
    /// A directory reached again through a symlink is an error (a cycle would recurse forever); depth is capped.
    public static func expandPathsRecursively(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        var visiting = Set<[UInt64]>()
        func walk(_ p: String, depth: Int) throws {
            var st = stat()
            guard stat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { out.append(p); return }
            let id = [UInt64(st.st_dev), UInt64(st.st_ino)]
            guard visiting.insert(id).inserted else {
                throw MambaKitError(.io, "directory cycle: this directory contains itself through a symbolic link", at: p)
            }
            defer { visiting.remove(id) }
            guard depth < 64 else { throw MambaKitError(.io, "directories nested more than 64 deep", at: p) }
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: p).filter { !$0.hasPrefix(".") }.sorted() } catch {
                throw MambaKitError(.io, "cannot list the directory: \(ioReason(error))", at: p)
            }
            for n in names { try walk(p + "/" + n, depth: depth + 1) }
        }
        for p in paths { try walk(p, depth: 0) }
        return out
    }

    /// Files named directly, or every regular file (sorted, hidden ones skipped) of a named directory.
    public static func expandPaths(_ paths: [String]) -> [String] {
        var out: [String] = []
        for p in paths {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
                let names = ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted()
                for n in names where !n.hasPrefix(".") {
                    var sub: ObjCBool = false
                    let full = p + "/" + n
                    if FileManager.default.fileExists(atPath: full, isDirectory: &sub), !sub.boolValue { out.append(full) }
                }
            } else {
                out.append(p)
            }
        }
        return out
    }

    /// Trains (or resumes) a model on `data`, writing the run directory `out`. Unset model and training values
    /// take the defaults for a new run, and the saved run's values on `resume` (so `--resume` needs only the
    /// settings that change, typically `--steps`).
    public static func train(format: DataFormat, data: [String], out: String, model modelSpec: ModelSpec,
                             train trainSpec: PipelineSpec.TrainSpec, valFraction: Double?, resume: Bool, tokenizer: DNATokenizer = DNATokenizer(),
                             audio: AudioTokenizer = AudioTokenizer(), cacheDirectory: String? = nil,
                             tokenizing: ((Int, Int) -> Void)? = nil,
                             events: (Trainer.Event) -> Void, shouldStop: () -> Bool) throws -> Trainer {
        // The run directory is ours from before a resume reads it until training ends.
        let lock = try RunLock(directory: out)
        defer { withExtendedLifetime(lock) {} }
        var baseOptions = Trainer.Options()
        var baseSpec = ModelSpec()
        var tokenizer = tokenizer
        var audio = audio
        if resume {
            guard let saved = try Trainer.savedRun(outDir: out) else {
                throw MambaKitError(.io, "no checkpoint to resume from (checkpoints/latest is missing)", at: out)
            }
            baseOptions = saved.options
            baseSpec = ModelSpec(saved.config)
            let savedFormat = (saved.config.mambakit["format"] as? String) ?? DataFormat.bytes.rawValue
            guard savedFormat == format.rawValue else {
                throw MambaKitError(.usage, "the run was trained on --format \(savedFormat) data; resume it with --format \(savedFormat)", at: out)
            }
            if format == .fasta { tokenizer = try ClassificationTask.dnaTokenizer(of: saved.config, at: out) }
            if format == .audio, case let .audio(a) = try ModelTokenizer(config: saved.config, at: out) { audio = a }
        }
        if trainSpec.epochs != nil {
            throw MambaKitError(.usage, PipelineSpec.epochsForLanguageModel)
        }
        var options = trainSpec.apply(to: baseOptions)
        options.valFraction = valFraction ?? (resume ? baseOptions.valFraction : 0.05)
        // Audio: one second of sound per window unless told otherwise.
        if format == .audio && trainSpec.seqLen == nil && !resume { options.seqLen = audio.sampleRate }
        try options.validate(.api("train"))
        var spec = modelSpec.merged(over: baseSpec)
        if format == .audio { spec = spec.merged(over: audioDefaults(for: spec)) }
        var config: MambaConfig
        if format == .fasta {
            config = try spec.config(vocabSize: tokenizer.vocabSize)
            config.mambakit = ["format": format.rawValue, "tokenizer": tokenizer.toJSON()]
        } else if format == .audio {
            config = try spec.config(vocabSize: audio.vocabSize)
            config.mambakit = ["format": format.rawValue, "tokenizer": audio.toJSON(), "sample_rate": audio.sampleRate]
        } else {
            config = try spec.config(vocabSize: ByteTokenizer.vocabSize)
            config.mambakit = ["format": format.rawValue, "tokenizer": ByteTokenizer.name]
        }
        try checkTrainingMemory(config: config, options: options)
        // Under mpirun the first rank of each host tokenizes into the store while the others wait, then they
        // open it (instead of every rank tokenizing the same corpus at once).
        let group = ProcessGroup.world
        func corpusOfStore() throws -> (TokenCorpus, [String]) {
            try storedCorpus(format: format, paths: data, valFraction: options.valFraction, tokenizer: tokenizer,
                             audio: audio, cacheDirectory: cacheDirectory, progress: tokenizing,
                             note: { events(.note($0)) })
        }
        let first = group.localRank == 0 ? try corpusOfStore() : nil
        try group.barrier()
        let (corpus, fp) = try first ?? corpusOfStore()
        let model: MambaModel
        if resume {
            model = try MambaModel(config: config)
        } else {
            if FileManager.default.fileExists(atPath: out + "/checkpoints/latest") {
                throw MambaKitError(.usage, "the output directory already holds a training run; pass --resume to continue it or choose another --out", at: out)
            }
            model = try MambaModel(config: config, seed: options.seed)
        }
        if options.carryState && !model.trainsFromCarriedState { throw LanguageModelObjective.carryRefusal }
        if trainSpec.carryReset != nil && !options.carryState {
            throw MambaKitError(.usage, "--carry-reset (train.carry_reset) applies to stateful training: add --carry-state (train.carry_state: true)")
        }
        let trainer = try Trainer(model: model, corpus: corpus, options: options, outDir: out, dataFingerprint: fp)
        if resume { try trainer.resume() }
        try trainer.run(events: events, shouldStop: shouldStop)
        return trainer
    }

    /// Refuses a training run whose workspace, parameters, gradients and AdamW moments cannot fit in memory.
    public static func checkTrainingMemory(config: MambaConfig, options: Trainer.Options, lmHead: Bool = true) throws {
        // Parameters, gradients and the two AdamW moments: 16 bytes per parameter (checked first: the workspace
        // estimate builds small probes of the blocks).
        let state = MemoryBudget.product(config.parameterCount, 16)
        try MemoryBudget.check(bytes: state, "training \(config.parameterCount) parameters",
                               hint: "a smaller model: lower --d-model or --layers")
        let ws = Workspace.estimatedBytes(config: config, B: options.batchSize, L: options.seqLen, training: true,
                                          lmHead: lmHead)
        try MemoryBudget.check(bytes: MemoryBudget.affine(ws, 1, state),
                               "training \(config.parameterCount) parameters at batch \(options.batchSize) × \(options.seqLen) tokens",
                               hint: ws >= state ? "lower --batch-size or --seq-len" : "a smaller model: lower --d-model or --layers")
    }

    public struct EvalReport: Sendable {
        public var result: Evaluator.Result
        public var format: DataFormat
        public var seconds: Double
        /// FASTA/FASTQ: the records evaluated (each from a fresh state).
        public var records = 0
        public var json: [String: Any] {
            var o: [String: Any] = ["loss": result.meanLoss, "bits_per_token": result.bitsPerToken,
                                    "tokens": result.count, "seconds": seconds]
            if format == .bytes { o["bits_per_byte"] = result.bitsPerToken }
            if format == .fasta {
                o["bits_per_base"] = result.bitsPerToken
                o["records"] = records
            }
            if format == .audio {
                o["bits_per_sample"] = result.bitsPerToken
                o["files"] = records
            }
            if format == .bytes && records > 0 { o["files"] = records }
            if !result.byPosition.isEmpty {
                o["by_position"] = result.byPosition.map { b -> [String: Any] in
                    ["from": b.from, "to": b.to.map { $0 as Any } ?? NSNull(), "tokens": b.count,
                     "loss": b.count > 0 ? b.meanLoss : NSNull(), "bits_per_token": b.count > 0 ? b.bitsPerToken : NSNull()]
                }
            }
            return o
        }
    }

    /// Exact NLL of the whole file, streamed in constant memory. Bytes: a directory is every file under it (walked
    /// recursively), each a stream from a fresh state. With `buckets`, the sums per bucket of positions within each
    /// stream (record, file) as well (`Evaluator.Bucket`).
    public static func evaluate(model: MambaModel, path: String, format: DataFormat, chunk: Int = 2048,
                                buckets: [Int] = [], progress: ((Int) -> Void)? = nil) throws -> EvalReport {
        if format == .fasta { return try evaluateSequences(model: model, path: path, chunk: chunk, buckets: buckets) }
        if format == .audio { return try evaluateAudio(model: model, path: path, chunk: chunk, buckets: buckets) }
        guard format == .bytes else { throw format.unsupported() }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            let clock = ContinuousClock()
            let t0 = clock.now
            let files = try expandPathsRecursively([path])
            guard !files.isEmpty else { throw MambaKitError(.usage, "no files in the directory", at: path) }
            var total = Evaluator.Result(sum: 0, count: 0, byPosition: Evaluator.Bucket.from(boundaries: buckets))
            for f in files {
                let r = try evaluate(model: model, path: f, format: .bytes, chunk: chunk, buckets: buckets) { n in progress?(total.count + n) }
                total.add(r.result)
            }
            var report = EvalReport(result: total, format: .bytes, seconds: seconds(clock.now - t0))
            report.records = files.count
            return report
        }
        try FileInput.checkFile(path)
        guard let fh = FileHandle(forReadingAtPath: path) else { throw MambaKitError(.io, "cannot open", at: path) }
        defer { try? fh.close() }
        let clock = ContinuousClock()
        let t0 = clock.now
        var any = false
        let r = try Evaluator.nll(model: model, chunk: chunk, buckets: buckets, progress: progress) { maxCount in
            let d: Data
            do { d = try fh.read(upToCount: maxCount) ?? Data() } catch {
                throw MambaKitError(.io, "read failed: \(ioReason(error))", at: path)
            }
            if !d.isEmpty { any = true }
            return d.map { Int32($0) }
        }
        guard any else { throw MambaKitError(.io, "file is empty", at: path) }
        guard r.count > 0 else { throw MambaKitError(.usage, "file has a single token: nothing to predict", at: path) }
        return EvalReport(result: r, format: format, seconds: seconds(clock.now - t0))
    }

    /// Exact NLL of an audio file, or of every audio file under a folder, each from a fresh state after the start
    /// token, at the model's sample rate: every sample is predicted (bits per sample).
    static func evaluateAudio(model: MambaModel, path: String, chunk: Int, buckets: [Int]) throws -> EvalReport {
        guard case let .audio(t) = try ModelTokenizer(config: model.config, at: "model config.json") else {
            throw MambaKitError(.usage, "the model is not an audio model", at: path)
        }
        let clock = ContinuousClock()
        let t0 = clock.now
        var total = Evaluator.Result(sum: 0, count: 0, byPosition: Evaluator.Bucket.from(boundaries: buckets))
        let files = try expandPathsRecursively([path]).filter {
            ClassificationDataset.audioExtensions.contains(($0 as NSString).pathExtension.lowercased())
        }
        guard !files.isEmpty else { throw MambaKitError(.usage, "no audio files", at: path) }
        for f in files {
            total.add(try Evaluator.nll(model: model, tokens: [t.silenceToken] + ClassificationDataset.audioTokens(f, tokenizer: t),
                                        chunk: chunk, buckets: buckets))
        }
        var report = EvalReport(result: total, format: .audio, seconds: seconds(clock.now - t0))
        report.records = files.count
        return report
    }

    /// Exact NLL of every record of a FASTA/FASTQ file, each from a fresh state (records are independent
    /// sequences), tokenized as the model was trained; one record in memory at a time.
    static func evaluateSequences(model: MambaModel, path: String, chunk: Int, buckets: [Int]) throws -> EvalReport {
        let tokenizer = try ClassificationTask.dnaTokenizer(of: model.config, at: "model config.json")
        let reader = try SequenceReader(path: path)
        let clock = ContinuousClock()
        let t0 = clock.now
        var total = Evaluator.Result(sum: 0, count: 0, byPosition: Evaluator.Bucket.from(boundaries: buckets))
        var records = 0
        while let r = try reader.next() {
            records += 1
            let tokens = try tokenizer.encode(r.sequence, location: "\(path), record \(records) '\(r.name)'")
            guard tokens.count >= 2 else { continue }
            total.add(try Evaluator.nll(model: model, tokens: tokens, chunk: chunk, buckets: buckets))
        }
        guard records > 0 else { throw MambaKitError(.usage, "no records in the file", at: path) }
        guard total.count > 0 else { throw MambaKitError(.usage, "no record has two or more bases: nothing to predict", at: path) }
        var report = EvalReport(result: total, format: .fasta, seconds: seconds(clock.now - t0))
        report.records = records
        return report
    }
}
