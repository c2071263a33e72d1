import Foundation
import MambaKit
import Testing

/// The on-disk token store behind language-model training: the same streams, windows and held-out tails as the
/// in-memory corpus; reuse, rebuild on change, damage detected; stale stores removed.
@Suite struct TokenStoreTests {
    /// Three byte files of different lengths (one in a subdirectory) with recognisable contents.
    static func byteFiles(_ dir: TempDir) throws -> [String] {
        var rng = RNG(seed: 7)
        try FileManager.default.createDirectory(atPath: dir.file("data/sub"), withIntermediateDirectories: true)
        let names = ["data/a.txt", "data/b.txt", "data/sub/c.txt"]
        for (i, n) in names.enumerated() {
            let bytes = (0..<(700 + 900 * i)).map { _ in UInt8(rng.int(below: 256)) }
            try Data(bytes).write(to: URL(fileURLWithPath: dir.file(n)))
        }
        return names.map(dir.file)
    }

    static func stored(_ paths: [String], cache: String, format: DataFormat = .bytes, valFraction: Double = 0.1,
                       notes: inout [String]) throws -> TokenCorpus {
        var seen: [String] = []
        let c = try LanguageModelTask.storedCorpus(format: format, paths: paths, valFraction: valFraction,
                                                   cacheDirectory: cache, note: { seen.append($0) }).0
        notes += seen
        return c
    }

    static func storeFiles(_ cache: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: cache).filter { $0.hasSuffix(".tokens") && !$0.hasPrefix(".") }
    }

    @Test func storedCorpusEqualsTheInMemoryOne() throws {
        let dir = TempDir()
        let files = try Self.byteFiles(dir)
        var notes: [String] = []
        // A directory is walked recursively: the same files in the same order as naming them.
        let stored = try Self.stored([dir.file("data")], cache: dir.file("cache"), notes: &notes)
        let memory = try TokenCorpus(streams: try files.map { ($0, ByteTokenizer.encode(try FileInput.readBytes($0))) },
                                     valFraction: 0.1)
        #expect(stored.streamCount == 3)
        #expect(stored.trainEnds == memory.trainEnds)
        #expect(try stored.allStreams() == memory.allStreams())
        // The same RNG draws give the same windows.
        var r1 = RNG(seed: 3), r2 = RNG(seed: 3)
        let (B, L) = (5, 64)
        var i1 = [Int32](repeating: 0, count: B * L), t1 = i1, i2 = i1, t2 = i1
        for _ in 0..<20 {
            try stored.sampleBatch(B: B, L: L, rng: &r1, ids: &i1, targets: &t1)
            try memory.sampleBatch(B: B, L: L, rng: &r2, ids: &i2, targets: &t2)
            #expect(i1 == i2 && t1 == t2)
        }
        // Held-out tails read from the store.
        for s in 0..<3 {
            let end = stored.trainEnds[s], n = stored.count(ofStream: s)
            #expect(try stored.tokens(ofStream: s, end..<n) == memory.tokens(ofStream: s, end..<n))
        }
        #expect(notes.count == 1 && notes[0].contains("tokenized 3 files"), "\(notes)")
    }

    @Test func aStoreIsReusedAndRebuiltWhenASourceChanges() throws {
        let dir = TempDir()
        let files = try Self.byteFiles(dir)
        let cache = dir.file("cache")
        var notes: [String] = []
        _ = try Self.stored(files, cache: cache, notes: &notes)
        #expect(notes.count == 1)
        let first = try Self.storeFiles(cache)
        #expect(first.count == 1)
        // Unchanged sources and settings: the store is opened, not rebuilt.
        _ = try Self.stored(files, cache: cache, notes: &notes)
        #expect(notes.count == 1, "\(notes)")
        // Other settings (the split is not part of the store): still reused.
        _ = try Self.stored(files, cache: cache, valFraction: 0.3, notes: &notes)
        #expect(notes.count == 1)
        // A changed source: a new store, and the old one (its source changed) is removed.
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: files[1]))
        try h.seekToEnd()
        try h.write(contentsOf: Data([65, 66, 67]))
        try h.close()
        let after = try Self.stored(files, cache: cache, notes: &notes)
        #expect(notes.count == 2, "\(notes)")
        #expect(after.count(ofStream: 1) == 1600 + 3)
        let second = try Self.storeFiles(cache)
        #expect(second.count == 1 && second != first, "\(first) → \(second)")
    }

    @Test(arguments: ["truncated", "token", "table", "trailer"])
    func aDamagedStoreIsDetectedAndRebuilt(damage: String) throws {
        let dir = TempDir()
        let files = try Self.byteFiles(dir)
        let cache = dir.file("cache")
        var notes: [String] = []
        let good = try Self.stored(files, cache: cache, notes: &notes).allStreams()
        let path = cache + "/" + (try Self.storeFiles(cache))[0]
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let total = bytes.count
        switch damage {
        case "truncated": bytes.removeLast(100)
        case "token": bytes[1000] ^= 0x10
        case "table": bytes[total - 64 - 200] ^= 0x01      // inside the identity
        default: bytes[total - 30] ^= 0x01                 // the CRC in the trailer
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let identityMiss = try TokenStore.open(path: path, identity: TokenStore.storedIdentity(path: path) ?? "?")
        guard case .failure(.damaged(let why)) = identityMiss else {
            Issue.record("\(damage): expected a damaged store, got \(identityMiss)")
            return
        }
        #expect(!why.isEmpty)
        let again = try Self.stored(files, cache: cache, notes: &notes)
        #expect(notes.contains { $0.contains("rebuilding") }, "\(notes)")
        #expect(try again.allStreams() == good)
    }

    @Test func fastaAndAudioStoresEqualTheirInMemoryCorpora() throws {
        let dir = TempDir()
        var notes: [String] = []
        let genome = ["samples/dna/genome/h_pylori_f32.fa.gz"].map { CLI.root + "/" + $0 }
        let dna = DNATokenizer()
        let s1 = try Self.stored(genome, cache: dir.file("cache"), format: .fasta, notes: &notes)
        let m1 = try LanguageModelTask.corpus(format: .fasta, paths: genome, valFraction: 0.1, tokenizer: dna).0
        #expect(s1.streamCount == m1.streamCount && s1.trainEnds == m1.trainEnds)
        #expect(try s1.allStreams() == m1.allStreams())
        let clips = CLI.root + "/samples/audio/fsdd/train"
        let s2 = try Self.stored([clips], cache: dir.file("cache"), format: .audio, notes: &notes)
        let m2 = try LanguageModelTask.corpus(format: .audio, paths: LanguageModelTask.expandPathsRecursively([clips]),
                                              valFraction: 0.1).0
        #expect(s2.streamCount == m2.streamCount && s2.trainEnds == m2.trainEnds)
        #expect(s2.streamCount >= 10)
        #expect(try s2.allStreams() == m2.allStreams())
    }

    @Test func widerVocabulariesStoreTwoOrFourBytesPerToken() throws {
        let dir = TempDir()
        for vocab in [300, 70_000] {
            let tokens: [[Int32]] = [[0, 299, 17, 5], [], [Int32(vocab - 1), 1]]
            let path = dir.file("w\(vocab).tokens")
            let store = try TokenStore.build(path: path, identity: "v\(vocab)", vocabSize: vocab) { w in
                for t in tokens {
                    try w.append(t, location: "test")
                    w.endStream()
                }
            }
            #expect(store.width == (vocab == 300 ? 2 : 4))
            let corpus = try TokenCorpus(store: store, valFraction: 0)
            #expect(try corpus.allStreams() == tokens)
            // A token outside the vocabulary is refused while writing.
            #expect(throws: MambaKitError.self) {
                _ = try TokenStore.build(path: dir.file("bad.tokens"), identity: "x", vocabSize: vocab) { w in
                    try w.append([Int32(vocab)], location: "test")
                }
            }
            #expect(!FileManager.default.fileExists(atPath: dir.file("bad.tokens")), "a failed build leaves nothing")
        }
    }

    @Test func positionBucketsSumToTheWholeStream() throws {
        let model = try MambaModel(config: MambaConfig(vocabSize: 256, dModel: 16, layers: 2, dState: 4, dConv: 3, expand: 2), seed: 2)
        var rng = RNG(seed: 9)
        let tokens = (0..<3000).map { _ in Int32(rng.int(below: 256)) }
        let whole = try Evaluator.nll(model: model, tokens: tokens, chunk: 700)
        let split = try Evaluator.nll(model: model, tokens: tokens, chunk: 700, buckets: [100, 1024, 2999, 4096])
        #expect(split.count == whole.count && split.sum == whole.sum)
        #expect(split.byPosition.map(\.count) == [99, 924, 1975, 1, 0])
        #expect(split.byPosition.map { $0.to } == [100, 1024, 2999, 4096, nil])
        let bucketSum = split.byPosition.reduce(0) { $0 + $1.sum }
        #expect(abs(bucketSum - whole.sum) <= 1e-9 * whole.sum)
        // Each bucket is the loss of its own positions: the first equals a stream cut after position 99.
        // (A 99-token forward rounds differently from a 700-token one in float32: logits agree to ~1e-7.)
        let head = try Evaluator.nll(model: model, tokens: Array(tokens[0..<100]), chunk: 700)
        #expect(abs(head.sum - split.byPosition[0].sum) <= 1e-5 * head.sum)
        #expect(throws: MambaKitError.self) { try Evaluator.Bucket.parseBoundaries("4k,1k") }
        #expect(throws: MambaKitError.self) { try Evaluator.Bucket.parseBoundaries("0") }
        #expect(throws: MambaKitError.self) { try Evaluator.Bucket.parseBoundaries("1k,,2k") }
        #expect(try Evaluator.Bucket.parseBoundaries("1k, 4k,1M") == [1024, 4096, 1 << 20])
    }

    @Test func sequenceLengthWarmupGrowsTheWindowAndResumesBitForBit() throws {
        var o = TrainerTests.options(steps: 7)
        o.seqLen = 200
        o.seqLenWarmup = 5
        let lengths = (0..<8).map(o.windowLength(at:))
        #expect(lengths == [64, 64, 64, 128, 128, 200, 200, 200], "\(lengths)")
        // A step trains on (and reports) B windows of its own length.
        let objective = LanguageModelObjective(corpus: try TrainerTests.corpus(), config: TrainerTests.config,
                                               batchSize: 2, seqLen: 200, evalTokens: 100, windowLength: o.windowLength(at:))
        let model = try MambaModel(config: TrainerTests.config, seed: 5)
        var rng = RNG(seed: 1)
        #expect(try objective.trainStep(model: model, rng: &rng, step: 0).tokens == 2 * 64)
        #expect(try objective.trainStep(model: model, rng: &rng, step: 4).tokens == 2 * 128)
        #expect(try objective.trainStep(model: model, rng: &rng, step: 6).tokens == 2 * 200)
        try withThreadSettingsLock {
            let a = TempDir(), b = TempDir()
            let corpus = try TrainerTests.corpus()
            let full = try Trainer(model: try MambaModel(config: TrainerTests.config, seed: 5), corpus: corpus, options: o,
                               outDir: a.path, dataFingerprint: ["x"])
            try full.run()
            var polls = 0
            let first = try Trainer(model: try MambaModel(config: TrainerTests.config, seed: 5), corpus: corpus, options: o,
                                outDir: b.path, dataFingerprint: ["x"])
            #expect(throws: MambaKitError.self) { try first.run(shouldStop: { polls += 1; return polls == 4 }) }
            let second = try Trainer(model: try MambaModel(config: TrainerTests.config, seed: 1), corpus: corpus, options: o,
                                 outDir: b.path, dataFingerprint: ["x"])
            try second.resume()
            try second.run()
            for v in full.model.params.layout.views {
                #expect(full.model.params.values(v.name) == second.model.params.values(v.name), "\(v.name)")
            }
            #expect(try TrainerTests.losses(a.path) == TrainerTests.losses(b.path))
        }
    }
}
