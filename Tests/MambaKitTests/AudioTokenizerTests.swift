import Foundation
import MambaKit
import Testing

// The formulas written out again from FACTS.md / torchaudio / state-spaces/s4, in Double, independent of the
// implementation's tables.
private let mu = 255.0

private func sgn(_ v: Double) -> Double { v > 0 ? 1 : (v < 0 ? -1 : 0) }

/// torchaudio `mu_law_encoding` (plus clipping): q = floor((y + 1)/2·mu + 0.5), y = sign(x)·ln(1 + mu|x|)/ln(1 + mu).
private func muLawToken(_ x: Double) -> Int32 {
    let c = min(max(x, -1), 1)
    let y = sgn(c) * log1p(mu * abs(c)) / log1p(mu)
    return Int32(((y + 1) / 2 * mu + 0.5).rounded(.down))
}

/// Mu-law expansion x = sign(y)·((1 + mu)^|y| − 1)/mu, written with `pow` (the implementation uses expm1).
private func expand(_ y: Double) -> Double { sgn(y) * (pow(1 + mu, abs(y)) - 1) / mu }

/// state-spaces/s4 `mu_law_encode` on one clip, step by step as the Python code does it.
private func sashimiTokens(_ clip: [Float]) -> [Int32] {
    guard !clip.isEmpty else { return [] }
    let v = clip.map { Double($0) }
    let lo = v.min()!, hi = v.max()!
    return v.map { x in
        let s = -1 + 2 * (x - lo) / (hi - lo + 1e-6)                  // minmax_scale(range -1, 1)
        let y = sgn(s) * log1p(mu * abs(s + 1e-8)) / log1p(mu)      // sign(audio)·log1p(mu·|audio + 1e-8|)/log1p(mu)
        let u = (y + 1) / 2                                          // shift to [0, 1]
        return Int32((u * (256 - 0.01) + 0.005).rounded(.down))     // quantize: ·(q_levels − eps) + eps/2, .long()
    }
}

/// The smallest Float ≥ t.
private func floatCeil(_ t: Double) -> Float {
    let f = Float(t)
    return Double(f) < t ? f.nextUp : f
}

/// A seeded uniform Float in [a, b).
private func uniform(_ rng: inout RNG, _ a: Float, _ b: Float) -> Float {
    a + (b - a) * Float(rng.int(below: 1 << 24)) / Float(1 << 24)
}

@Suite struct AudioTokenizerTests {
    // MARK: Settings

    @Test func defaultsAndConstants() {
        let tok = AudioTokenizer()
        #expect(tok.quantizer == .mulaw && tok.sampleRate == 16000)
        for q in AudioQuantizer.allCases {
            let t = AudioTokenizer(quantizer: q, sampleRate: 8000)
            #expect(t.vocabSize == 256)
            #expect(t.silenceToken == 128)
            #expect(t.encode([]) == [] && t.decode([]) == [])
        }
        // Silence is 128 under every quantiser's decoding convention: mu-law and linear encode 0 as 128 (0 is the
        // lower edge of bin 128); SaShiMi decodes 128 as exactly 0.
        #expect(AudioTokenizer(quantizer: .mulaw).encode([0]) == [128])
        #expect(AudioTokenizer(quantizer: .linear).encode([0]) == [128])
        #expect(AudioTokenizer(quantizer: .sashimi).decode([128]) == [0])
    }

    // MARK: Mu-law, values derived by hand

    @Test func muLawEncodeKnownValues() {
        let tok = AudioTokenizer(quantizer: .mulaw)
        // x → (y, (y + 1)/2·255 + 0.5) → floor, with ln(1 + 255) = ln 256 = 5.545177444479562:
        let cases: [(Float, Int32)] = [
            (0, 128),        // y = 0, 128.0 → 128 exactly on the boundary: 0 belongs to bin 128
            (1, 255),        // y = 1, 255.5
            (-1, 0),         // y = −1, 0.5
            (0.5, 239),      // y = ln 128.5/ln 256 = 0.875703, 239.652
            (-0.5, 16),      // 16.348
            (0.25, 223),     // y = ln 64.75/ln 256 = 0.752101, 223.893
            (0.1, 203),      // y = ln 26.5/ln 256 = 0.590990, 203.351
            (-0.1, 52),      // 52.649
            (0.01, 157),     // y = ln 3.55/ln 256 = 0.228477, 157.131
            (1e-3, 133),     // y = ln 1.255/ln 256 = 0.040961, 133.223
            (-1e-3, 122),    // 122.777
            (1e-5, 128),     // y = 0.000459, 128.059
            (-1e-5, 127),    // 127.941: anything below 0 leaves bin 128
            (2, 255), (-3, 0),                                       // clipped to ±1
            (.nan, 128), (.infinity, 255), (-.infinity, 0),          // NaN reads as 0, ±∞ as ±1
        ]
        for (x, q) in cases {
            #expect(tok.encode([x]) == [q], "mu-law encode(\(x))")
            #expect(tok.encodeReference([x]) == [q], "mu-law encodeReference(\(x))")
            if x.isFinite { #expect(muLawToken(Double(x)) == q, "formula in the test, x = \(x)") }
        }
        // Exactly, x < 0 would leave bin 128; in Double (and in torchaudio's float32) y + 1 rounds to 1 for tiny
        // negative x, so bin 128 starts at −1.2·10⁻¹⁸: −10⁻¹⁷ is in 127, −10⁻³⁰ and −0 are in 128.
        let tiny: [Float] = [-1e-17, -1e-30, -Float.leastNonzeroMagnitude, -0.0, Float.leastNonzeroMagnitude]
        #expect(tok.encode(tiny) == [127, 128, 128, 128, 128])
        #expect(tiny.map { muLawToken(Double($0)) } == [127, 128, 128, 128, 128])
    }

    @Test func muLawDecodeKnownValues() {
        let tok = AudioTokenizer(quantizer: .mulaw)
        // q → y = 2q/255 − 1 → x = sign(y)·(256^|y| − 1)/255:
        let cases: [(Int32, Double)] = [
            (0, -1), (255, 1),                                  // y = ∓1: 255/255
            (127, -8.621159565072e-5), (128, 8.621159565072e-5), // y = ±1/255: (256^(1/255) − 1)/255
            (1, -0.9572737086635956), (254, 0.9572737086635956), // y = ±253/255
            (64, -0.05814500388034754), (192, 0.06090393801358017),
        ]
        for (q, x) in cases {
            #expect(tok.decode([q]) == [Float(x)], "mu-law decode(\(q))")
            #expect(abs(expand(2 * Double(q) / mu - 1) - x) <= 1e-15, "formula in the test, q = \(q)")
        }
        // Symmetry: level(255 − q) = −level(q).
        let levels = tok.decode((0...255).map { Int32($0) })
        for q in 0...255 { #expect(levels[255 - q] == -levels[q]) }
    }

    // MARK: Exactness at every bin boundary, and against the reference

    @Test func thresholdsAreTheAnalyticBinBoundaries() {
        let tm = AudioTokenizer.thresholds(.mulaw)
        let tl = AudioTokenizer.thresholds(.linear)
        let ts = AudioTokenizer.thresholds(.sashimi)
        for t in [tm, tl, ts] {
            #expect(t.count == 256 && t[0] == -.infinity)
            #expect(zip(t.dropLast(), t.dropFirst()).allSatisfy { $0 < $1 }, "thresholds increase")
        }
        for k in 1...255 {
            // mu-law: q ≥ k ⟺ (y + 1)/2·255 + 0.5 ≥ k ⟺ y ≥ (2k − 1)/255 − 1.
            let xm = expand(Double(2 * k - 1) / mu - 1)
            #expect(abs(tm[k] - xm) <= 1e-13 * abs(xm) + 1e-16, "mu-law boundary \(k): \(tm[k]) vs \(xm)")
            // linear: q ≥ k ⟺ (x + 1)·128 ≥ k.
            #expect(tl[k] == Double(k) / 128 - 1, "linear boundary \(k)")
            // SaShiMi: q ≥ k ⟺ u ≥ (k − 0.005)/255.99, and y = G(s + 1e-8) off [−1e-8, 0] with G the compander.
            if k != 128 {
                let ss = expand(2 * (Double(k) - 0.005) / 255.99 - 1) - 1e-8
                #expect(abs(ts[k] - ss) <= 1e-13 * abs(ss) + 1e-16, "SaShiMi boundary \(k): \(ts[k]) vs \(ss)")
            }
        }
        // Bin 128 starts at 0 for linear and SaShiMi (sign(s) = 0 there, while s in (−1e-8, 0) gives 127), and at
        // −1.2·10⁻¹⁸ for mu-law, where y + 1 stops rounding to 1.
        #expect(tl[128] == 0 && ts[128] == 0)
        #expect(tm[128] < -1.1e-18 && tm[128] > -1.3e-18, "mu-law bin 128 starts at \(tm[128])")
    }

    @Test func encodeMatchesTheFormulaOnBothSidesOfEveryBoundary() {
        for q in AudioQuantizer.allCases {
            let t = AudioTokenizer.thresholds(q)
            for k in 1...255 {
                // In Double: the boundary and its neighbour below, and 300 ulps either side, by the formula and by
                // the table.
                #expect(AudioTokenizer.referenceToken(t[k], q) == Int32(k), "\(q) k=\(k)")
                #expect(AudioTokenizer.referenceToken(t[k].nextDown, q) == Int32(k - 1), "\(q) k=\(k)")
                var v = t[k]
                for _ in 0..<300 { v = v.nextDown }
                var previous = AudioTokenizer.referenceToken(v, q)
                for _ in 0..<600 {
                    v = v.nextUp
                    let r = AudioTokenizer.referenceToken(v, q)
                    #expect(r == previous || (r == previous + 1 && v == t[k]), "\(q): formula not monotone at \(v)")
                    #expect(AudioTokenizer.token(v, q) == r, "\(q): table vs formula at \(v)")
                    previous = r
                }
                // SaShiMi and normalized encode scale the clip first: see sashimiIslandIsReproduced and
                // normalizedRemovesOffsetAndLevel.
                if q == .sashimi || q == .normalized { continue }
                let tok = AudioTokenizer(quantizer: q)
                // In Float (what `encode` takes): the first Float at or above the boundary, and the one below it.
                let f = floatCeil(t[k])
                let x: [Float] = [f.nextDown, f, f.nextUp]
                let want: [Int32] = [Int32(k - 1), Int32(k), Int32(k)]
                #expect(tok.encode(x) == want, "\(q) encode at boundary \(k) (x = \(f))")
                #expect(tok.encodeReference(x) == want, "\(q) encodeReference at boundary \(k)")
                if q == .mulaw { #expect(x.map { muLawToken(Double($0)) } == want, "test formula at boundary \(k)") }
            }
        }
    }

    @Test func encodeMatchesReferenceOnRandomAndSpecialSamples() {
        var rng = RNG(seed: 7)
        var x: [Float] = (0..<200_000).map { _ in uniform(&rng, -1.25, 1.25) }
        // Small magnitudes across many octaves, where mu-law's bins are finest.
        x += (0..<50_000).map { _ in
            let m = Float(rng.int(below: 1 << 20)) / Float(1 << 20) * Float(pow(2.0, -Double(rng.int(below: 40))))
            return rng.int(below: 2) == 0 ? m : -m
        }
        let special: [Float] = [0, -0.0, 1, -1, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .leastNormalMagnitude,
                                .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .nan, .infinity, -.infinity,
                                Float(1).nextUp, -Float(1).nextUp]
        x += special
        for q in AudioQuantizer.allCases {
            let tok = AudioTokenizer(quantizer: q)
            let fast = tok.encode(x)
            let ref = tok.encodeReference(x)
            let bad = zip(fast, ref).enumerated().first { $0.element.0 != $0.element.1 }
            #expect(bad == nil, "\(q): encode \(bad.map { "\($0.element.0) vs \($0.element.1) at x = \(x[$0.offset])" } ?? "")")
            #expect(fast.allSatisfy { (0...255).contains($0) })
            if q == .mulaw {
                let clean = x.filter { $0.isFinite }
                #expect(tok.encode(clean) == clean.map { muLawToken(Double($0)) }, "mu-law vs the test's formula")
            }
        }
        // SaShiMi on many short clips (the min-max changes with each clip).
        let tok = AudioTokenizer(quantizer: .sashimi)
        for _ in 0..<300 {
            let n = 1 + rng.int(below: 400)
            let gain = Float(rng.int(below: 1000) + 1) / 1000
            let clip = (0..<n).map { _ in gain * uniform(&rng, -1, 1) }
            #expect(tok.encode(clip) == tok.encodeReference(clip))
            #expect(tok.encode(clip) == sashimiTokens(clip))
        }
    }

    /// Every Float in [−1.01, 1.01] (2.1·10⁹ values), `encode` against `encodeReference`. Off by default (about two
    /// minutes in a release build): `MAMBAKIT_EXHAUSTIVE=1 swift test -c release --filter everyFloat`.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MAMBAKIT_EXHAUSTIVE"] != nil))
    func everyFloatEncodesAsTheFormulaSays() {
        let chunk = 1 << 20
        let last: UInt32 = 0x3F81_47AE  // 1.01
        for q in [AudioQuantizer.mulaw, .linear] {
            let tok = AudioTokenizer(quantizer: q)
            var mismatches = 0
            for sign: UInt32 in [0, 0x8000_0000] {
                var bits: UInt32 = 0
                while bits <= last {
                    let n = min(chunk, Int(last - bits) + 1)
                    let x = (0..<n).map { Float(bitPattern: sign | (bits + UInt32($0))) }
                    let fast = tok.encode(x), ref = tok.encodeReference(x)
                    if fast != ref {
                        for i in 0..<n where fast[i] != ref[i] {
                            mismatches += 1
                            if mismatches <= 5 { Issue.record("\(q) x = \(x[i]): encode \(fast[i]), reference \(ref[i])") }
                        }
                    }
                    bits += UInt32(n)
                }
            }
            #expect(mismatches == 0, "\(q)")
        }
    }

    @Test func encodeIsMonotone() {
        var grid: [Float] = (0...400_000).map { -1.1 + 2.2 * Float($0) / 400_000 }
        grid += (0..<2000).flatMap { i -> [Float] in let m = Float(pow(2.0, -Double(i) / 50)); return [m, -m] }
        grid.sort()
        for q in [AudioQuantizer.mulaw, .linear, .sashimi] {
            // For SaShiMi the sorted grid is one clip: its min-max scaling is monotone too.
            let ids = AudioTokenizer(quantizer: q).encode(grid)
            #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 <= $1 }, "\(q) encode is not monotone")
            #expect(Set(ids).count == 256, "\(q) reaches every token")
            #expect(ids.first == 0 && ids.last == 255)
        }
    }

    // MARK: Round-trip error bounds

    /// Mu-law: with y = compand(x), ŷ = 2q/mu − 1 is y rounded to the grid of step 2/mu, so |ŷ − y| ≤ 1/mu, and ŷ has
    /// the sign of y (ŷ = ±1/255 next to 0; x = 0 gives ŷ = +1/255). With a = 1 + mu|x| = (1 + mu)^|y| and
    /// â = (1 + mu)^|ŷ|: â/a = (1 + mu)^±|ŷ − y| ≤ r := (1 + mu)^(1/mu) = 256^(1/255), so
    /// |x̂ − x| = |â − a|/mu ≤ (r − 1)·a/mu = (r − 1)·(|x| + 1/mu), r − 1 = 0.0219840 (equality at x = 0, where
    /// x̂ = (r − 1)/mu = 8.62·10⁻⁵). Storing x̂ as Float adds at most half an ulp, ≤ 2⁻²⁴|x̂|.
    @Test func muLawRoundTripWithinTheCompandingBound() {
        let tok = AudioTokenizer(quantizer: .mulaw)
        let c: Double = pow(256.0, 1.0 / 255) - 1
        #expect(abs(c - 0.02198395689093391) < 1e-15)
        var rng = RNG(seed: 11)
        var x: [Float] = (0...200_000).map { -1 + 2 * Float($0) / 200_000 }
        x += (0..<100_000).map { _ in uniform(&rng, -1, 1) * Float(pow(2.0, -Double(rng.int(below: 20)))) }
        let back = tok.decode(tok.encode(x))
        var worstRatio = 0.0
        for (xi, bi) in zip(x, back) {
            let err = abs(Double(bi) - Double(xi))
            let bound = c * (abs(Double(xi)) + 1 / mu)
            #expect(err <= bound + 0x1p-24 * abs(Double(bi)), "x = \(xi): |x̂ − x| = \(err) > \(bound)")
            worstRatio = max(worstRatio, err / bound)
        }
        // The bound is attained (at x = 0 and at the bin edges), so it cannot be tightened.
        #expect(worstRatio > 0.99, "worst |x̂ − x|/bound = \(worstRatio)")
        #expect(tok.decode(tok.encode([0])) == [Float(c / mu)])
    }

    @Test func linearKnownValuesAndBound() {
        let tok = AudioTokenizer(quantizer: .linear)
        // q = floor((x + 1)·128), clipped to 0…255.
        let cases: [(Float, Int32)] = [(0, 128), (0.5, 192), (-0.5, 64), (1, 255), (-1, 0), (1e-3, 128),
                                      (-1e-3, 127), (1.0 / 128, 129), (-1.0 / 128, 127), (-1.0 / 128 - 1e-6, 126),
                                      (0.99, 254), (2, 255), (-2, 0), (.nan, 128)]
        for (x, q) in cases { #expect(tok.encode([x]) == [q], "linear encode(\(x))") }
        // Bin centres (q + 0.5)/128 − 1.
        let centres: [Float] = [-255.0 / 256, 1.0 / 256, 255.0 / 256, -127.0 / 256]
        #expect(tok.decode([0, 128, 255, 64]) == centres)
        // |x̂ − x| ≤ half a bin = 1/256 (< 1/255) on [−1, 1], attained at the bin edges.
        let x: [Float] = (0...100_000).map { -1 + 2 * Float($0) / 100_000 }
        let back = tok.decode(tok.encode(x))
        let worst = zip(x, back).map { abs(Double($0) - Double($1)) }.max()!
        #expect(worst <= 1.0 / 256 && worst > 0.999 / 256, "worst linear error \(worst)")
    }

    // MARK: SaShiMi

    @Test func sashimiIslandIsReproduced() {
        // Around s = −1e-8, |s + 1e-8| is so small that y + 1 rounds to 1: token 128 amid 127s.
        let (lo, hi) = AudioTokenizer.sashimiIsland
        #expect(lo < -1e-8 && hi > -1e-8)
        #expect(abs(lo + 1e-8 + 1.2071e-18) < 1e-21 && abs(hi + 1e-8 - 1.2071e-18) < 1e-21, "island [\(lo), \(hi)]")
        for v in [lo.nextDown, lo, -1e-8, hi, hi.nextUp, -0.5e-8, -Double.leastNonzeroMagnitude, 0] {
            #expect(AudioTokenizer.token(v, .sashimi) == AudioTokenizer.referenceToken(v, .sashimi), "s = \(v)")
        }
        #expect(AudioTokenizer.referenceToken(lo, .sashimi) == 128 && AudioTokenizer.referenceToken(hi, .sashimi) == 128)
        #expect(AudioTokenizer.referenceToken(lo.nextDown, .sashimi) == 127)
        #expect(AudioTokenizer.referenceToken(hi.nextUp, .sashimi) == 127)
        // The island is one piece (every 101st Double across it, and the 2000 at each end).
        var v = lo
        var checked = 0
        while v <= hi {
            #expect(AudioTokenizer.referenceToken(v, .sashimi) == 128, "hole in the island at \(v)")
            checked += 1
            v = checked < 2000 || (hi - v) < 2000 * v.ulp ? v.nextUp : v + 101 * v.ulp
        }
        #expect(checked > 10_000)
    }

    @Test func sashimiScalesEachClip() {
        let tok = AudioTokenizer(quantizer: .sashimi)
        // min −0.2, max 0.3: s = −1 + 2(x + 0.2)/(0.5 + 1e-6) = −1, −0.6000008, −0.2000016, −0.0000020, 0.999996;
        // y = sign(s)·ln(1 + 255|s + 1e-8|)/ln 256 = −1, −0.9141, −0.7183, −0.000459, 0.99999929;
        // floor((y + 1)/2·255.99 + 0.005) = 0, 11, 36, 127, 255.
        let clip: [Float] = [-0.2, -0.1, 0, 0.05, 0.3]
        #expect(tok.encode(clip) == [0, 11, 36, 127, 255])
        #expect(sashimiTokens(clip) == [0, 11, 36, 127, 255])
        // Loudness is scaled away: half or twice as loud gives the same tokens ...
        #expect(tok.encode(clip.map { $0 * 0.5 }) == [0, 11, 36, 127, 255])
        #expect(tok.encode(clip.map { $0 * 2 }) == [0, 11, 36, 127, 255])
        // ... until the range is small enough for the 1e-6 in the denominator to count (range 0.005: 2·10⁻⁴).
        let quiet: [Float] = [-0.002, -0.001, 0, 0.0005, 0.003]
        #expect(tok.encode(quiet) == [0, 11, 36, 126, 255])
        #expect(sashimiTokens(quiet) == [0, 11, 36, 126, 255])
        // A quiet tone spans every token under SaShiMi, a narrow band under standard mu-law.
        let tone = (0..<1600).map { Float(0.01 * sin(2 * Double.pi * 440 * Double($0) / 16000)) }
        let s = tok.encode(tone), m = AudioTokenizer(quantizer: .mulaw).encode(tone)
        #expect(s.min() == 0 && s.max() == 255)
        #expect(m.min()! >= 98 && m.max()! <= 157)
        // A constant clip (silence) scales to −1 everywhere: token 0, not 128 (the reference code's behaviour).
        #expect(tok.encode([0, 0, 0]) == [0, 0, 0])
        #expect(tok.encode([0.25]) == [0])
        // NaN reads as 0 before the min-max scaling.
        #expect(tok.encode([-1, .nan, 1]) == tok.encode([-1, 0, 1]))
    }

    @Test func sashimiDecodesToTheLowerBinEdge() {
        let tok = AudioTokenizer(quantizer: .sashimi)
        // y = q/128 − 1, then the expansion: q = 0 → −1, 128 → 0 exactly, 255 → (256^(127/128) − 1)/255.
        let want: [(Int32, Double)] = [(0, -1), (64, -0.0588235294117647), (128, 0), (192, 0.0588235294117647),
                                       (255, 0.957437019054254)]
        for (q, x) in want {
            #expect(abs(Double(tok.decode([q])[0]) - x) <= 1e-7, "SaShiMi decode(\(q))")
        }
        // In the companded domain bin q is y ∈ [2(q − 0.005)/255.99 − 1, 2(q + 0.995)/255.99 − 1) and ŷ = q/128 − 1
        // is within 3.91·10⁻⁵ of its lower edge (0 at q = 128.0), so −3.91·10⁻⁵ ≤ y − ŷ ≤ 2/255.99 + 3.91·10⁻⁵.
        for q in 0...255 {
            let edge = 2 * (Double(q) - 0.005) / 255.99 - 1
            #expect(abs(Double(q) / 128 - 1 - edge) <= 3.91e-5)
        }
        var rng = RNG(seed: 3)
        let clip = (0..<20_000).map { _ in uniform(&rng, -0.7, 0.9) }
        let ids = tok.encode(clip)
        let lo = Double(clip.min()!), hi = Double(clip.max()!)
        for (x, q) in zip(clip, ids) {
            let s = -1 + 2 * (Double(x) - lo) / (hi - lo + 1e-6)
            let y = sgn(s) * log1p(mu * abs(s + 1e-8)) / log1p(mu)
            let d = y - (Double(q) / 128 - 1)
            let edge = 2 * (Double(q) - 0.005) / 255.99 - 1
            #expect(y >= edge && y < edge + 2 / 255.99, "y = \(y) outside bin \(q)")
            #expect(d >= -3.91e-5 && d <= 2 / 255.99 + 3.91e-5, "y − ŷ = \(d) at s = \(s)")
        }
    }

    /// `normalized` is mu-law of the clip with its mean removed and its peak scaled to 1: an offset and a gain give
    /// the same tokens, a silent clip is all 128, and the tokens are mu-law's of the normalised samples.
    @Test func normalizedRemovesOffsetAndLevel() {
        let tok = AudioTokenizer(quantizer: .normalized)
        var rng = RNG(seed: 5)
        let x: [Float] = (0..<4000).map { i in Float(0.3 * sin(Double(i) * 0.05) + 0.05 * rng.normal()) }
        let t = tok.encode(x)
        #expect(t == tok.encodeReference(x))
        let shifted = x.map { 0.25 * $0 - 0.007 }
        let ts = tok.encode(shifted)
        // Equal but for samples that fall within rounding of a bin boundary.
        #expect(zip(t, ts).filter { abs($0 - $1) > 1 }.isEmpty && zip(t, ts).filter { $0 != $1 }.count < 8)
        let mean = x.reduce(0.0) { $0 + Double($1) } / Double(x.count)
        let peak = x.reduce(0.0) { max($0, abs(Double($1) - mean)) }
        #expect(t == AudioTokenizer(quantizer: .mulaw).encode(x.map { Float((Double($0) - mean) / peak) }))
        #expect(t.contains(255) || t.contains(0))
        #expect(tok.encode([Float](repeating: 0.01, count: 100)) == [Int32](repeating: 128, count: 100))
        #expect(tok.encode([]) == [])
    }

    // MARK: Decoding

    @Test func decodeMatchesReferenceAndHandlesBadIDs() {
        let all = (0...255).map { Int32($0) }
        for q in AudioQuantizer.allCases {
            let tok = AudioTokenizer(quantizer: q)
            let levels = tok.decode(all)
            #expect(levels == tok.decodeReference(all), "\(q) decode vs reference")
            #expect(levels == AudioTokenizer.levels(q))
            #expect(zip(levels, levels.dropFirst()).allSatisfy { $0 < $1 }, "\(q) levels increase")
            #expect(levels.allSatisfy { $0 >= -1 && $0 <= 1 })
            // Every level encodes back to its own token (mu-law and linear; SaShiMi rescales the clip).
            if q != .sashimi && q != .normalized { #expect(tok.encode(levels) == all, "\(q) encode(decode(q)) == q") }
            // Ids outside the vocabulary decode as the silence token.
            #expect(tok.decode([-1, 256, .max, .min]) == [Float](repeating: levels[128], count: 4))
        }
    }

    // MARK: JSON

    @Test func jsonRoundTrip() throws {
        for q in AudioQuantizer.allCases {
            for rate in [8000, 16000, 44100] {
                let tok = AudioTokenizer(quantizer: q, sampleRate: rate)
                let json = tok.toJSON()
                #expect(json["type"] as? String == "audio")
                #expect(json["quantizer"] as? String == q.rawValue)
                #expect(json["sample_rate"] as? Int == rate)
                #expect(json["vocab_size"] as? Int == 256)
                #expect(try AudioTokenizer(json: json, location: "t") == tok)
                // Through serialised JSON, as config.json holds it.
                let data = try JSONSerialization.data(withJSONObject: json)
                let back = try JSONSerialization.jsonObject(with: data) as! [String: Any]
                #expect(try AudioTokenizer(json: back, location: "t") == tok)
            }
        }
        // Only quantizer and sample_rate are required; unknown keys are ignored; 16000.0 is an integer.
        let min: [String: Any] = ["quantizer": "linear", "sample_rate": 16000.0, "comment": "x"]
        #expect(try AudioTokenizer(json: min, location: "t") == AudioTokenizer(quantizer: .linear, sampleRate: 16000))
    }

    @Test func badJSONIsAConfigErrorThatNamesTheSetting() throws {
        let good: [String: Any] = ["type": "audio", "quantizer": "mulaw", "sample_rate": 16000, "vocab_size": 256]
        func with(_ key: String, _ value: Any?) -> [String: Any] {
            var j = good
            j[key] = value
            return j
        }
        let jsonTrue = try JSONSerialization.jsonObject(with: Data(#"{"v": true}"#.utf8)) as! [String: Any]
        let cases: [([String: Any], String)] = [
            (with("quantizer", nil), "'quantizer' is missing"),
            (with("quantizer", "mu-law"), "'quantizer' is mu-law (expected one of mulaw, sashimi, linear, normalized)"),
            (with("quantizer", 8), "'quantizer' is 8"),
            (with("sample_rate", nil), "'sample_rate' is missing"),
            (with("sample_rate", 0), "sample_rate must be an integer from 1000 to 384000 (got 0)"),
            (with("sample_rate", -16000), "sample_rate must be an integer from 1000 to 384000 (got -16000)"),
            (with("sample_rate", 1_000_000_000_000), "sample_rate must be an integer from 1000 to 384000"),
            (with("sample_rate", 16000.5), "'sample_rate' is 16000.5"),
            (with("sample_rate", "16000"), "'sample_rate' is 16000"),
            (with("sample_rate", jsonTrue["v"]!), "'sample_rate' is"),
            (with("sample_rate", true), "'sample_rate' is"),
            (with("type", "dna"), "tokenizer type is dna (expected audio)"),
            (with("vocab_size", 255), "vocab_size is 255 but audio quantizer 'mulaw' has 256 tokens"),
            (with("vocab_size", "256"), "vocab_size is 256 but"),
        ]
        for (json, message) in cases {
            let e = thrown { _ = try AudioTokenizer(json: json, location: "run/config.json, mambakit.tokenizer") }
            #expect(e?.kind == .config, "\(json)")
            #expect(e?.description.contains(message) == true, "\(e?.description ?? "no error") lacks \(message)")
            #expect(e?.description.hasSuffix(", run/config.json, mambakit.tokenizer") == true)
        }
    }
}
