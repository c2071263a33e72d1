import Foundation
import MambaKit
import Testing

/// The linear baseline of `classify baseline` (Sources/MambaKit/Baselines): the FFT against the plain DFT, the
/// spectral features against an independent numpy implementation (scripts/spectral_features_reference.py), k-mer
/// counts by hand, the regression's optimality, and the command on the samples.
@Suite struct BaselineTests {
    @Test(arguments: [2, 8, 256])
    func powerSpectrumIsTheDFT(size: Int) throws {
        let fft = try PowerSpectrum(size: size)
        var rng = RNG(seed: UInt64(size))
        let x = (0..<size).map { _ in rng.uniform() * 2 - 1 }
        var re = [Double](repeating: 0, count: size), im = re
        var out = [Double](repeating: 0, count: fft.bins)
        x.withUnsafeBufferPointer { xb in out.withUnsafeMutableBufferPointer { fft(xb.baseAddress!, out: $0.baseAddress!, re: &re, im: &im) } }
        for k in 0..<fft.bins {
            var a = 0.0, b = 0.0
            for n in 0..<size {
                a += x[n] * cos(2 * .pi * Double(k * n) / Double(size))
                b -= x[n] * sin(2 * .pi * Double(k * n) / Double(size))
            }
            #expect(abs(out[k] - (a * a + b * b)) <= 1e-9 * max(1, a * a + b * b), "bin \(k)")
        }
        #expect(throws: MambaKitError.self) { _ = try PowerSpectrum(size: 12) }
    }

    /// The features of real clips (8 kHz speech, 16 kHz synthetic; one shorter than a frame) equal numpy's.
    @Test func spectralFeaturesMatchTheNumpyReference() throws {
        let python = "/usr/bin/python3"
        try #require(FileManager.default.isExecutableFile(atPath: python), "\(python) is missing: \(NotebookTests.installHint)")
        let files = ["samples/audio/asterisk-digits/zero/allison.wav", "samples/audio/asterisk-digits/seven/allison.wav",
                     "samples/audio/digits/one/en+f2_35_190.wav"]
        let tmp = TempDir()
        // A clip of 100 samples: shorter than one frame.
        let short = tmp.file("short.wav")
        let samples = (0..<100).map { Float(sin(Double($0) * 0.3)) * 0.5 }
        try AudioFile.writeWAV(samples, sampleRate: 8000, to: short)
        let r = try NotebookTests.run(python, ["scripts/spectral_features_reference.py"] + files + [short], timeout: 120)
        try #require(r.status == 0, "\(r.stderr)")
        let reference = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: [Double]])
        for f in files + [short] {
            let info = try AudioFile.info(f.hasPrefix("/") ? f : CLI.root + "/" + f)
            let x = try AudioFile.readMono(f.hasPrefix("/") ? f : CLI.root + "/" + f, sampleRate: info.sampleRate)
            let ours = try SpectralFeatures(sampleRate: info.sampleRate)(x)
            let theirs = try #require(reference[f])
            #expect(ours.count == theirs.count)
            let worst = zip(ours, theirs).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? .infinity
            #expect(worst < 1e-6, "\(f): largest difference \(worst)")
        }
    }

    @Test func kmerFrequenciesByHand() throws {
        let f = try KmerFeatures(k: 2)
        // AC CG GT TA, then N breaks the run: ta (lower case) counts as TA.
        let v = f(Array("ACGTANta".utf8))
        func code(_ s: String) -> Int { s.utf8.reduce(0) { $0 * 4 + ["A": 0, "C": 1, "G": 2, "T": 3][String(UnicodeScalar($1))]! } }
        #expect(v[code("AC")] == 0.2 && v[code("CG")] == 0.2 && v[code("GT")] == 0.2 && v[code("TA")] == 0.4)
        #expect(abs(v.reduce(0, +) - 1) < 1e-12)
        #expect(f(Array("NNNA".utf8)).allSatisfy { $0 == 0 })
        #expect(throws: MambaKitError.self) { _ = try KmerFeatures(k: 9) }
    }

    /// At the fitted parameters the penalised objective's gradient vanishes (recomputed here from its definition).
    @Test func softmaxRegressionReachesTheOptimum() throws {
        var rng = RNG(seed: 11)
        let (n, F, C) = (120, 6, 3)
        var x: [[Double]] = [], y: [Int] = []
        for i in 0..<n {
            let c = i % C
            x.append((0..<F).map { j in rng.uniform() * 4 + (j == c ? 3 : 0) + Double(j) })
            y.append(c)
        }
        let l2 = 0.05
        var m = SoftmaxRegression(classes: C, features: F)
        try m.fit(x, y, l2: l2, maxIterations: 2000, tolerance: 1e-9)
        // Gradient in the standardised space, from the probabilities the model reports.
        var gW = [Double](repeating: 0, count: C * F), gb = [Double](repeating: 0, count: C)
        let mean = (0..<F).map { j in x.reduce(0) { $0 + $1[j] } / Double(n) }
        let sd = (0..<F).map { j in (x.reduce(0) { $0 + ($1[j] - mean[j]) * ($1[j] - mean[j]) } / Double(n)).squareRoot() }
        for (row, label) in zip(x, y) {
            let p = m.probabilities(row)
            for c in 0..<C {
                let d = (p[c] - (c == label ? 1 : 0)) / Double(n)
                gb[c] += d
                for j in 0..<F { gW[c * F + j] += d * (row[j] - mean[j]) / sd[j] }
            }
        }
        for i in 0..<(C * F) { gW[i] += l2 * m.parameters[i] }
        let worst = (gW + gb).map(abs).max()!
        #expect(worst < 1e-7, "gradient \(worst) after \(m.iterations) iterations")
        // The classes are separable enough to learn.
        let acc = Double(zip(x, y).filter { row, c in let p = m.probabilities(row); return p.indices.max { p[$0] < p[$1] } == c }.count) / Double(n)
        #expect(acc > 0.8)
    }

    @Test(.serialized) func baselineCommandOnTheSamples() throws {
        let tmp = TempDir()
        let frag = try CLI.run(["fragments", "--from", "samples/dna/origin/lambda_phage.fa.gz", "samples/dna/origin/s_aureus.fa.gz",
                                "--length", "200", "--counts", "60,40", "--fractions", "0.7,0.3", "--splits", "train,test",
                                "--out", tmp.file("f"), "--seed", "2"])
        try #require(frag.status == 0, "\(frag.stderr)")
        let dna = try CLI.run(["classify", "baseline", "--train", tmp.file("f/train"), "--data", tmp.file("f/test"), "--json"])
        #expect(dna.status == 0, "\(dna.stderr)")
        let j = try #require(try JSONSerialization.jsonObject(with: dna.stdout) as? [String: Any])
        #expect((j["accuracy"] as? Double ?? 0) > 0.8, "\(j)")
        #expect(j["feature_count"] as? Int == 1024 && j["train_examples"] as? Int == 120)
        // Audio: synthetic digits train, the real speaker tests; 10 classes.
        let audio = try CLI.run(["classify", "baseline", "--train", "samples/audio/digits", "--data",
                                 "samples/audio/asterisk-digits", "--sample-rate", "8000", "--json"])
        #expect(audio.status == 0, "\(audio.stderr)")
        let a = try #require(try JSONSerialization.jsonObject(with: audio.stdout) as? [String: Any])
        #expect((a["features"] as? String)?.contains("mel") == true && a["count"] as? Int == 10, "\(a)")
        let bad = try CLI.run(["classify", "baseline", "--train", "samples/audio/digits", "--data", "samples/audio/digits",
                               "--l2", "nan"])
        #expect(bad.status != 0 && bad.stderr.contains("--l2"), "\(bad.stderr)")
    }
}
