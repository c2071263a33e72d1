import Foundation
import MambaKit

/// One fuzz target: its name (MAMBAKIT_FUZZ_TARGET), the extension of the file its input is written to, the
/// `-max_len` scripts/fuzz.sh gives it, and what it does with the input: the file's path, and the same bytes in
/// memory for the one target whose API takes no file.
struct FuzzTarget {
    let name: String
    let fileExtension: String
    let maxLength: Int
    let run: (String, Data) throws -> Void

    static let all: [FuzzTarget] = [
        FuzzTarget(name: "safetensors", fileExtension: "safetensors", maxLength: 65536, run: fuzzSafeTensors),
        FuzzTarget(name: "config", fileExtension: "json", maxLength: 16384, run: fuzzConfig),
        FuzzTarget(name: "trainer-state", fileExtension: "json", maxLength: 16384, run: fuzzTrainerState),
        FuzzTarget(name: "token-store", fileExtension: "tokens", maxLength: 16384, run: fuzzTokenStore),
        FuzzTarget(name: "fasta", fileExtension: "fa", maxLength: 65536, run: fuzzFasta),
        FuzzTarget(name: "faidx", fileExtension: "fa", maxLength: 65536, run: fuzzFaidx),
        FuzzTarget(name: "fai", fileExtension: "fai", maxLength: 4096, run: fuzzFai),
        FuzzTarget(name: "gzi", fileExtension: "gzi", maxLength: 4096, run: fuzzGzi),
        FuzzTarget(name: "pipeline", fileExtension: "yaml", maxLength: 8192, run: fuzzPipeline),
        FuzzTarget(name: "labels", fileExtension: "tsv", maxLength: 4096, run: fuzzLabels),
        FuzzTarget(name: "tokenizer", fileExtension: "json", maxLength: 2048, run: fuzzTokenizer),
        FuzzTarget(name: "audio", fileExtension: "wav", maxLength: 65536, run: fuzzAudio),
    ]
}

/// A logic bug the harness detected (a differential check failed): traps, so libFuzzer saves the input.
func mismatch(_ message: String) -> Never {
    fatalError("MambaKitFuzz mismatch: \(message)")
}

// MARK: - Model files

/// `SafeTensorsFile(path:)`, then every tensor as the model loader reads it (`copyFloats` into a buffer of its
/// element count) and through `floats` / `int64s`.
func fuzzSafeTensors(_ path: String, _: Data) throws {
    let file = try SafeTensorsFile(path: path)
    for info in file.tensors {
        switch info.dtype {
        case .F16, .BF16, .F32, .F64:
            let values = try file.floats(info.name)
            guard values.count == info.elementCount else {
                mismatch("floats('\(info.name)') gave \(values.count) values for \(info.elementCount) elements")
            }
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(info.elementCount, 1))
            defer { buffer.deallocate() }
            try file.copyFloats(info.name, into: buffer, count: info.elementCount)
            for i in 0..<info.elementCount where buffer[i].bitPattern != values[i].bitPattern {
                mismatch("copyFloats('\(info.name)') differs from floats at element \(i)")
            }
        default:
            _ = try file.int64s(info.name)
        }
    }
}

/// `MambaConfig.load(path:)`, then the tokenizer the CLI reads from the same config.
func fuzzConfig(_ path: String, _: Data) throws {
    let config = try MambaConfig.load(path: path)
    _ = try ModelTokenizer(config: config, at: path)
}

/// trainer_state.json: `TrainerState(path:)`, the parser `--resume` and `classify train --resume` use.
func fuzzTrainerState(_ path: String, _: Data) throws {
    _ = try TrainerState(path: path)
}

/// A token store (`<cache>/<key>.tokens`, which training reads its corpus from): `TokenStore.open` with the
/// identity the file says it has (so an intact trailer reaches every check), then every stream read back through
/// `TokenCorpus`, each token within the width's range.
func fuzzTokenStore(_ path: String, _: Data) throws {
    let identity = TokenStore.storedIdentity(path: path) ?? ""
    guard case .success(let store) = try TokenStore.open(path: path, identity: identity) else { return }
    let corpus = try TokenCorpus(store: store, valFraction: 0.1)
    let limit = store.width == 4 ? Int64(Int32.max) : Int64(1) << (8 * store.width)
    var total = 0
    for s in 0..<corpus.streamCount {
        let n = corpus.count(ofStream: s)
        total += n
        guard corpus.trainEnds[s] <= n else { mismatch("stream \(s): training part \(corpus.trainEnds[s]) of \(n) tokens") }
        for t in try corpus.tokens(ofStream: s, 0..<n) where t < 0 || Int64(t) >= limit {
            mismatch("stream \(s): token \(t) outside width \(store.width)")
        }
    }
    guard total == store.tokenCount else { mismatch("streams hold \(total) tokens, the store \(store.tokenCount)") }
}

// MARK: - Sequences and their indexes

/// `SequenceReader(path:)` and every record (plain, gzip or BGZF; FASTA or FASTQ).
func fuzzFasta(_ path: String, _: Data) throws {
    let reader = try SequenceReader(path: path)
    while let record = try reader.next() {
        if let quality = record.quality, quality.count != record.sequence.count {
            mismatch("record '\(record.name)' has \(record.sequence.count) bases but \(quality.count) qualities")
        }
    }
}

/// `FastaIndex.build(scanning:)` (as `samtools faidx`; plain or BGZF, with the `.gzi`), then every record fetched
/// through `IndexedSequenceFile` with the index just built: when both succeed, the fetched bases and qualities must
/// equal what `SequenceReader` reads.
func fuzzFaidx(_ path: String, _: Data) throws {
    let (fai, gzi) = try FastaIndex.build(scanning: path)
    let file = try IndexedSequenceFile(path: path, index: fai, bgzfIndex: gzi)
    let records: [SequenceRecord]
    do { records = try SequenceReader(path: path).readAll() } catch { return }
    guard records.count == fai.entries.count else {
        mismatch("the index has \(fai.entries.count) entries, SequenceReader read \(records.count) records")
    }
    for (record, entry) in zip(records, fai.entries) {
        guard record.name == entry.name else { mismatch("record '\(record.name)' is indexed as '\(entry.name)'") }
        guard try file.fetch(record.name) == record.sequence else {
            mismatch("fetch('\(record.name)') differs from the record's sequence")
        }
        if entry.length > 1 {
            let range = (entry.length / 3)..<(entry.length - 1)
            guard try file.fetch(record.name, range) == Array(record.sequence[range]) else {
                mismatch("fetch('\(record.name)', \(range)) differs from the record's sequence")
            }
        }
        if let quality = record.quality, try file.fetchQuality(record.name) != quality {
            mismatch("fetchQuality('\(record.name)') differs from the record's quality")
        }
    }
}

/// `FastaIndex(contentsOf:)`, then, as a .fai beside the fixed FASTA (or FASTQ) file, plain and BGZF, every entry
/// fetched through `IndexedSequenceFile`: a wrong index must give an error, not a crash.
func fuzzFai(_ path: String, _: Data) throws {
    let index = try FastaIndex(contentsOf: path)
    let files = index.format == .fasta ? fixtures.fasta : fixtures.fastq
    for (file, gzi) in [(files.plain, nil), (files.bgzf, files.gzi)] {
        let indexed = try IndexedSequenceFile(path: file, index: index, bgzfIndex: gzi)
        for entry in index.entries.prefix(32) {
            do {
                _ = try indexed.fetch(entry.name)
                if entry.length > 2 { _ = try indexed.fetch(entry.name, 1..<(entry.length - 1)) }
                if index.format == .fastq { _ = try indexed.fetchQuality(entry.name) }
            } catch is MambaKitError {
                continue
            }
        }
    }
}

/// `BGZFIndex(contentsOf:)`, then, as the .gzi of the fixed BGZF FASTA (with its correct .fai), every record
/// fetched through `IndexedSequenceFile`.
func fuzzGzi(_ path: String, _: Data) throws {
    let gzi = try BGZFIndex(contentsOf: path)
    let indexed = try IndexedSequenceFile(path: fixtures.fasta.bgzf, index: fixtures.fasta.index, bgzfIndex: gzi)
    for name in indexed.names {
        do {
            _ = try indexed.fetch(name)
        } catch is MambaKitError {
            continue
        }
    }
}

// MARK: - Settings and labels

/// `PipelineSpec.load(path:)` (`mambakit run`, and `--config` of train and classify train).
func fuzzPipeline(_ path: String, _: Data) throws {
    _ = try PipelineSpec.load(path: path)
}

/// The label TSV of `classify train/eval --labels`: `ClassificationDataset.load` on the fixed FASTA with the input as
/// labels, once finding the classes and once with a model's classes.
func fuzzLabels(_ path: String, _: Data) throws {
    let tokenizer = ModelTokenizer.dna(DNATokenizer())
    let found = try ClassificationDataset.load(fixtures.labelsFasta, labels: path, tokenizer: tokenizer)
    _ = try ClassificationDataset.load(fixtures.labelsFasta, labels: path, tokenizer: tokenizer,
                                       classes: found.classes.reversed())
}

/// `DNATokenizer(json:)` and `AudioTokenizer(json:)` on the input parsed with JSONSerialization, when it is an object
/// (the `mambakit.tokenizer` object of config.json and of a classify pipeline).
func fuzzTokenizer(_: String, _ data: Data) throws {
    guard let json = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) as? [String: Any]
    else { return }
    var failure: Error? = nil
    do { _ = try DNATokenizer(json: json) } catch { failure = error }
    do { _ = try AudioTokenizer(json: json) } catch { failure = error }
    if let failure { throw failure }
}

// MARK: - Audio

/// `AudioFile.readMono(_:sampleRate:)` at 16 kHz, the default rate of an audio model (libsndfile detects the
/// container from the bytes, whatever the file's extension).
func fuzzAudio(_ path: String, _: Data) throws {
    let samples = try AudioFile.readMono(path, sampleRate: 16000)
    if let bad = samples.firstIndex(where: { !($0 >= -1 && $0 <= 1) }) {
        mismatch("sample \(bad) is \(samples[bad]), outside [-1, 1]")
    }
}
