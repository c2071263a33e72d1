import CFuzzSupport
import Foundation
import MambaKit

/// Writes the seed inputs MambaKit itself can make under `root/<target>/` (scripts/fuzz.sh adds copies of the
/// repository's fixtures, samples and pipelines beside them): the fixed FASTA/FASTQ in every encoding and their
/// indexes, small safetensors files of every dtype, tokenizer objects, label TSVs, a trainer_state.json, and short
/// audio files in the containers libsndfile writes.
func writeSeeds(to root: String, fixtures: FuzzFixtures) throws {
    func put(_ target: String, _ name: String, _ bytes: [UInt8]) throws {
        let dir = root + "/" + target
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
    }
    func read(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    // Sequences: plain, CRLF, gzip and BGZF, FASTA and FASTQ; for fasta and faidx alike.
    for (name, text) in [("fixed.fa", FuzzFixtures.fastaText), ("fixed.fq", FuzzFixtures.fastqText)] {
        let plain = Array(text.utf8)
        let crlf = Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8)
        let variants: [(String, [UInt8])] = [
            (name, plain), (name + ".crlf", crlf), (name + ".gz", try Gzip.compress(plain)),
            (name + ".bgzf.gz", try bgzf(plain, blockSize: 256)), (name + ".crlf.bgzf.gz", try bgzf(crlf, blockSize: 100)),
        ]
        for (file, bytes) in variants {
            try put("fasta", file, bytes)
            try put("faidx", file, bytes)
        }
    }
    try put("fasta", "labels.fa", Array(FuzzFixtures.labelsFastaText.utf8))

    // The indexes of the fixed files.
    try put("fai", "fixed.fa.fai", Array(fixtures.fasta.index.faiText.utf8))
    try put("fai", "fixed.fq.fai", Array(fixtures.fastq.index.faiText.utf8))
    try put("gzi", "fixed.fa.gz.gzi", fixtures.fasta.gzi.gziBytes)
    try put("gzi", "fixed.fq.gz.gzi", fixtures.fastq.gzi.gziBytes)
    try put("gzi", "empty.gzi", try BGZFIndex(blocks: []).gziBytes)

    // Label TSVs for the fixed labels.fa.
    try put("labels", "header.tsv", Array("id\tlabel\ns1\tpos\ns2\tneg\ns3\tpos\ns4\tneg\n".utf8))
    try put("labels", "plain.tsv", Array("s4\ta\ns3\tb\n# comment\ns2\tc\ns1\ta\n".utf8))
    try put("labels", "crlf.tsv", Array("id\tlabel\r\ns1\tx\r\ns2\ty\r\ns3\tx\r\ns4\ty\r\n".utf8))

    // safetensors of every dtype, with metadata, a 0-d scalar and an empty tensor.
    var tensors: [SafeTensorOut] = [
        SafeTensorOut(name: "f32", shape: [2, 3], floats: [1, -2, 0.5, .infinity, -0, 3e-39]),
        SafeTensorOut(name: "f16", shape: [3], floats: [1, 65504, 6e-8], dtype: .F16),
        SafeTensorOut(name: "bf16", shape: [2], floats: [-1, 3.5e38], dtype: .BF16),
        SafeTensorOut(name: "f64", shape: [1, 1], floats: [0.1], dtype: .F64),
        SafeTensorOut(name: "scalar", shape: [], floats: [7]),
        SafeTensorOut(name: "empty", shape: [0, 4], floats: []),
        SafeTensorOut(name: "i64", shape: [2], int64s: [-1, Int.max]),
    ]
    for dtype in [SafeTensorDType.BOOL, .U8, .I8, .I16, .U16, .I32, .U32, .U64] {
        tensors.append(SafeTensorOut(name: dtype.rawValue.lowercased(), dtype: dtype, shape: [2],
                                     bytes: [UInt8](repeating: 0xFF, count: 2 * dtype.byteSize)))
    }
    let safetensors = fixtures.labelsFasta + ".safetensors"
    try SafeTensorsFile.write(tensors, metadata: ["format": "pt", "note": "\u{1}é\"\\"], to: safetensors)
    try put("safetensors", "all-dtypes.safetensors", read(safetensors))
    try SafeTensorsFile.write([tensors[0]], to: safetensors)
    try put("safetensors", "one.safetensors", read(safetensors))
    try SafeTensorsFile.write([], to: safetensors)
    try put("safetensors", "none.safetensors", read(safetensors))

    // Tokenizer objects, and configs that carry them.
    var tokenizers: [[String: Any]] = []
    for vocabulary in DNAVocabulary.allCases {
        for casePolicy in CasePolicy.allCases {
            for iupac in IUPACPolicy.allCases {
                tokenizers.append(DNATokenizer(vocabulary: vocabulary, casePolicy: casePolicy, iupacPolicy: iupac).toJSON())
            }
        }
    }
    for quantizer in AudioQuantizer.allCases {
        tokenizers.append(AudioTokenizer(quantizer: quantizer, sampleRate: 22050).toJSON())
    }
    for (i, tokenizer) in tokenizers.enumerated() {
        let json = try JSONSerialization.data(withJSONObject: tokenizer, options: [.sortedKeys])
        try put("tokenizer", "tokenizer-\(i).json", Array(json))
        if i % 4 == 0 {
            var config = try JSONSerialization.jsonObject(with: Data(FuzzFixtures.configJSON.utf8)) as! [String: Any]
            config["vocab_size"] = tokenizer["vocab_size"]
            config["mambakit"] = ["format": "fasta", "tokenizer": tokenizer]
            try put("config", "tokenizer-\(i).json",
                    Array(try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])))
        }
    }
    try put("config", "fixed.json", Array(FuzzFixtures.configJSON.utf8))

    // trainer_state.json as Trainer.saveCheckpoint writes it.
    let options: [String: Any] = [
        "steps": 300, "batch_size": 8, "seq_len": 256, "lr": 0.003, "min_lr_ratio": 0.1, "warmup": 30,
        "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0, "seed": "0",
        "val_fraction": 0.05, "eval_every": 200, "eval_tokens": 65536, "checkpoint_every": 500, "log_every": 10,
        "keep_best": false, "patience": 0,
    ]
    let state: [String: Any] = [
        "step": 1, "adam_step": 1, "rng": ["9e3779b97f4a7c15", "1", "2", "3"], "elapsed_s": 0.25,
        "options": options, "data": ["samples/text/genesis.txt:123"], "best_val_loss": NSNull(), "best_step": 0,
        "since_best": 0,
    ]
    try put("trainer-state", "trainer_state.json",
            Array(try JSONSerialization.data(withJSONObject: state, options: [.prettyPrinted, .sortedKeys])))

    // Token stores: byte tokens in three streams (one empty), and 2-byte tokens.
    let storeDir = NSTemporaryDirectory() + "mambakit-fuzz-seeds-\(getpid())"
    try FileManager.default.createDirectory(atPath: storeDir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: storeDir) }
    for (name, vocab, streams) in [("bytes.tokens", 256, [Array("In the beginning".utf8).map(Int32.init), [], [10, 65, 0, 255]]),
                                   ("wide.tokens", 300, [[0, 299, 17], [5]])] as [(String, Int, [[Int32]])] {
        let path = storeDir + "/" + name
        _ = try TokenStore.build(path: path, identity: "{\"sources\":[],\"store\":1}", vocabSize: vocab) { w in
            for s in streams {
                try w.append(s, location: name)
                w.endStream()
            }
        }
        try put("token-store", name, try read(path))
    }

    // Audio: 50 ms of a chirp in each container and encoding libsndfile can write here.
    let formats: [(String, Int, Int32)] = [
        ("pcm16.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 1), ("float.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, 1),
        ("stereo-u8.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_U8, 2), ("ima.wav", SF_FORMAT_WAV | SF_FORMAT_IMA_ADPCM, 1),
        ("msadpcm.wav", SF_FORMAT_WAV | SF_FORMAT_MS_ADPCM, 1), ("ulaw.wav", SF_FORMAT_WAV | SF_FORMAT_ULAW, 1),
        ("pcm24.wavex", SF_FORMAT_WAVEX | SF_FORMAT_PCM_24, 2), ("pcm16.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 1),
        ("stereo-pcm24.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_24, 2),
        ("vorbis.ogg", SF_FORMAT_OGG | SF_FORMAT_VORBIS, 1), ("opus.ogg", SF_FORMAT_OGG | SF_FORMAT_OPUS, 1),
        ("pcm16.aiff", SF_FORMAT_AIFF | SF_FORMAT_PCM_16, 1), ("float.au", SF_FORMAT_AU | SF_FORMAT_FLOAT, 1),
        ("alac.caf", SF_FORMAT_CAF | SF_FORMAT_ALAC_16, 1), ("pcm16.w64", SF_FORMAT_W64 | SF_FORMAT_PCM_16, 1),
        ("pcm16.rf64", SF_FORMAT_RF64 | SF_FORMAT_PCM_16, 1), ("mp3.mp3", SF_FORMAT_MPEG | SF_FORMAT_MPEG_LAYER_III, 1),
    ]
    let rate = 16000
    for (name, format, channels) in formats {
        var info = SF_INFO()
        info.samplerate = Int32(rate)
        info.channels = channels
        info.format = Int32(format)
        guard sf_format_check(&info) != 0 else { continue }
        let path = fixtures.labelsFasta + "." + name
        guard let handle = sf_open(path, Int32(SFM_WRITE), &info) else { continue }
        let frames = rate / 20
        var samples = [Float](repeating: 0, count: frames * Int(channels))
        for f in 0..<frames {
            let t = Double(f) / Double(rate)
            for c in 0..<Int(channels) {
                samples[f * Int(channels) + c] = Float(0.5 * sin(2 * Double.pi * (300 + 4000 * t) * t + Double(c)))
            }
        }
        let wrote = sf_writef_float(handle, samples, sf_count_t(frames))
        sf_close(handle)
        if wrote == sf_count_t(frames) { try put("audio", name, read(path)) }
        try? FileManager.default.removeItem(atPath: path)
    }
    try? FileManager.default.removeItem(atPath: safetensors)
}
