import Foundation
import MambaKit
import Testing

/// The two labelled-data layouts, their errors, the stratified split and the fragment sampler.
@Suite struct ClassificationDatasetTests {
    func write(_ dir: TempDir, _ name: String, _ text: String) throws -> String {
        let p = dir.file(name)
        try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: p, atomically: false, encoding: .utf8)
        return p
    }

    func error(_ body: () throws -> Void) -> MambaKitError? {
        do { try body(); return nil } catch let e as MambaKitError { return e } catch { return nil }
    }

    @Test func classNamesComeFromFileStems() {
        #expect(ClassificationDataset.className(ofFile: "h_sapiens.fa.gz") == "h_sapiens")
        #expect(ClassificationDataset.className(ofFile: "Promoter.FASTQ") == "Promoter")
        #expect(ClassificationDataset.className(ofFile: "x.fna.bgz") == "x")
        #expect(ClassificationDataset.className(ofFile: "noext") == "noext")
    }

    @Test func directoryLayout() throws {
        let d = TempDir()
        _ = try write(d, "data/b.fa", ">r1\nACGT\n>r2\nAC\nGT\n")
        _ = try write(d, "data/a.fq", "@q1\nACGTA\n+\nIIIII\n")
        _ = try write(d, "data/c/part1.fa", ">c1\nTTTT\n")
        _ = try write(d, "data/c/part2.fa", ">c2\nGGGG\n")
        let ds = try ClassificationDataset.load(directory: d.file("data"), tokenizer: DNATokenizer())
        #expect(ds.classes == ["a", "b", "c"])
        #expect(ds.examples.map(\.id) == ["q1", "r1", "r2", "c1", "c2"])
        #expect(ds.examples.map(\.label) == [0, 1, 1, 2, 2])
        #expect(ds.examples[2].tokens == Array("ACGT".utf8).map { Int32($0) })
        #expect(ds.classCounts == [1, 2, 2])
        // With a model's classes, an unknown class file is refused, a missing class is fine.
        let known = try ClassificationDataset.load(directory: d.file("data"), tokenizer: DNATokenizer(),
                                                   classes: ["a", "b", "c", "d"])
        #expect(known.examples.map(\.label) == [0, 1, 1, 2, 2])
        let e = error { _ = try ClassificationDataset.load(directory: d.file("data"), tokenizer: DNATokenizer(), classes: ["a", "b"]) }
        #expect(e?.message.contains("class 'c' is not one the model knows") == true, "\(String(describing: e))")
        // An empty record is an error naming it.
        _ = try write(d, "data/b.fa", ">r1\nACGT\n>empty\n>r3\nAC\n")
        let e2 = error { _ = try ClassificationDataset.load(directory: d.file("data"), tokenizer: DNATokenizer()) }
        #expect(e2?.message == "record 'empty' has no sequence" && e2?.location?.hasSuffix("b.fa, record 2") == true,
                "\(String(describing: e2))")
    }

    @Test func fileAndLabelsLayout() throws {
        let d = TempDir()
        let fa = try write(d, "x.fa", ">s1 desc\nACGT\n>s2\nGGCC\n>s3\nTTAA\n")
        let ok = try write(d, "ok.tsv", "id\tlabel\ns2\tneg\ns1\tpos\ns3\tneg\n")
        let ds = try ClassificationDataset.load(fa, labels: ok, tokenizer: .dna(DNATokenizer()))
        #expect(ds.classes == ["neg", "pos"])
        #expect(ds.examples.map(\.label) == [1, 0, 0])
        let cases: [(String, String, String)] = [
            ("s1\tpos\ns2\tneg\n", "record 's3' has no label", "x.fa, record 3"),
            ("s1\tpos\ns1\tneg\ns2\tneg\ns3\tneg\n", "id 's1' is labelled twice", "line 2"),
            ("s1\tpos\ns2 neg\n", "expected 'id<TAB>label'", "line 2"),
            ("s1\tpos\ns2\tneg\ns3\tneg\ns4\tpos\n", "'s4' is labelled", "x.fa"),
        ]
        for (i, (tsv, message, place)) in cases.enumerated() {
            let p = try write(d, "bad\(i).tsv", tsv)
            let e = error { _ = try ClassificationDataset.load(fa, labels: p, tokenizer: .dna(DNATokenizer())) }
            #expect(e?.message.contains(message) == true && e?.location?.hasSuffix(place) == true,
                    "case \(i): \(String(describing: e))")
        }
        // A sequence file without labels, and labels with a directory, are usage errors.
        #expect(error { _ = try ClassificationDataset.load(fa, labels: nil, tokenizer: .dna(DNATokenizer())) }?.kind == .usage)
    }

    @Test func stratifiedSplitKeepsEveryClassOnBothSides() throws {
        var examples: [LabeledSequence] = []
        for i in 0..<50 { examples.append(LabeledSequence(id: "a\(i)", tokens: [65], label: 0)) }
        for i in 0..<7 { examples.append(LabeledSequence(id: "b\(i)", tokens: [67], label: 1)) }
        let ds = ClassificationDataset(classes: ["a", "b"], examples: examples)
        let (train, held) = ds.stratifiedSplit(fraction: 0.1, seed: 4)
        #expect(held.classCounts == [5, 1])
        #expect(train.classCounts == [45, 6])
        #expect(Set(train.examples.map(\.id)).isDisjoint(with: held.examples.map(\.id)))
        // Seeded: the same split again, another with another seed.
        #expect(ds.stratifiedSplit(fraction: 0.1, seed: 4).held.examples == held.examples)
        #expect(ds.stratifiedSplit(fraction: 0.1, seed: 5).held.examples != held.examples)
    }

    @Test func fragmentsComeFromDisjointStretches() throws {
        let d = TempDir()
        var rng = RNG(seed: 1)
        let genome = (0..<10_000).map { _ in Array("ACGT".utf8)[rng.int(below: 4)] }
        let src = try write(d, "g.fa", ">chr\n" + String(decoding: genome, as: UTF8.self) + "\n")
        let counts = try FragmentSampler.write(
            sources: [src], length: 100,
            splits: [.init(name: "train", fraction: 0.8, count: 50), .init(name: "test", fraction: 0.2, count: 20)],
            seed: 9, out: d.file("out"))
        #expect(counts["train"]?["g"] == 50 && counts["test"]?["g"] == 20)
        for (split, lo, hi) in [("train", 0, 8000), ("test", 8000, 10_000)] {
            for r in try SequenceReader(path: d.file("out/\(split)/g.fa")).readAll() {
                let se = r.name.split(separator: ":").last!.split(separator: "-").map { Int($0)! }
                #expect(se[0] - 1 >= lo && se[1] <= hi, "\(split) fragment \(r.name) outside [\(lo), \(hi))")
                #expect(r.sequence == Array(genome[(se[0] - 1)..<se[1]]))
            }
        }
        // Fractions that do not sum to 1 are refused.
        let e = error {
            try FragmentSampler.write(sources: [src], length: 100, splits: [.init(name: "train", fraction: 0.5, count: 1)],
                                      seed: 0, out: d.file("o2"))
        }
        #expect(e?.kind == .usage)
    }
}
