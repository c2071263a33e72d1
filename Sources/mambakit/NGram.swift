import ArgumentParser
import Foundation
import MambaKit

struct NGramBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ngram",
        abstract: "An interpolated Kneser-Ney n-gram baseline: bits per token on --data of a model counted on --train (bytes, DNA or audio samples).")

    @Option(parsing: .upToNextOption, help: "Files or directories to count.") var train: [String]
    @Option(parsing: .upToNextOption, help: "Files or directories to measure.") var data: [String]
    @Option(help: "How to read them: bytes (default), fasta or audio.") var format: String = "bytes"
    @Option(help: "n (default 3: a trigram).") var order: Int = 3
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup(title: "DNA (--format fasta)") var dna: DNATokenizerOptions
    @OptionGroup(title: "Audio (--format audio)") var audio: AudioTokenizerOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors {
            try common.apply()
            try Settings.check("ngram_order", order, .flags)
            guard let firstTrain = train.first, !data.isEmpty else { throw MambaKitError(.usage, "--train and --data each need at least one path") }
            let f = try DataFormat.parse(format)
            // Audio at the data's own rate, as classify train reads it.
            let audioTokenizer = f == .audio ? try audio.tokenizer(forDataStartingWith: try DataKind.recognise(firstTrain).file).0
                                             : try audio.tokenizer()
            let dnaTokenizer = try dna.tokenizer()
            func streams(_ paths: [String]) throws -> [[Int32]] {
                let p = f == .audio ? try LanguageModelTask.expandPathsRecursively(paths) : paths
                return try LanguageModelTask.corpus(format: f, paths: p, valFraction: 0, tokenizer: dnaTokenizer,
                                                    audio: audioTokenizer).0.allStreams()
            }
            let vocabulary: Int
            switch f {
            case .bytes: vocabulary = ByteTokenizer.vocabSize
            case .fasta: vocabulary = dnaTokenizer.vocabSize
            case .audio: vocabulary = audioTokenizer.vocabSize
            }
            let clock = ContinuousClock()
            let t0 = clock.now
            let model = try NGramModel(order: order, vocabulary: vocabulary)
            try model.fit(try streams(train))
            let (bits, tokens) = model.bitsPerToken(try streams(data))
            let seconds = secs(clock.now - t0)
            guard bits.isFinite else { throw MambaKitError(.usage, "nothing to measure (every stream of --data is shorter than two tokens)", at: data.joined(separator: ", ")) }
            var o: [String: Any] = ["order": order, "bits_per_token": bits, "tokens": tokens, "format": f.rawValue,
                                    "discounts": model.discounts, "seconds": seconds]
            switch f {
            case .bytes: o["bits_per_byte"] = bits
            case .fasta: o["bits_per_base"] = bits
            case .audio: o["bits_per_sample"] = bits; o["sample_rate"] = audioTokenizer.sampleRate
            }
            if json {
                try printJSON(o)
            } else {
                try say(String(format: "%d-gram (interpolated Kneser-Ney): %.4f bits per token over %d tokens (%.1f s)", order, bits, tokens, seconds))
            }
        }
    }
}
