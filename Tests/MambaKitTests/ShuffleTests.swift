import Foundation
import MambaKit
import Testing

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// Count of each letter (index = byte).
private func letterCounts(_ s: [UInt8]) -> [Int] {
    var c = [Int](repeating: 0, count: 256)
    for b in s { c[Int(b)] += 1 }
    return c
}

/// Count of each adjacent pair (index = 256 · first + second).
private func pairCounts(_ s: [UInt8]) -> [Int] {
    var c = [Int](repeating: 0, count: 65536)
    if s.count >= 2 { for i in 0..<(s.count - 1) { c[256 * Int(s[i]) + Int(s[i + 1])] += 1 } }
    return c
}

/// The pairs whose counts differ, for failure messages ("CG 12 vs 11").
private func pairDiff(_ a: [UInt8], _ b: [UInt8]) -> String {
    let ca = pairCounts(a), cb = pairCounts(b)
    return (0..<65536).filter { ca[$0] != cb[$0] }.prefix(5)
        .map { "\(text([UInt8($0 >> 8), UInt8($0 & 255)])) \(ca[$0]) vs \(cb[$0])" }.joined(separator: ", ")
}

/// Checks that `shuffled` is a dinucleotide shuffle of `seq`: same pair counts, same first and last byte.
private func expectDinucleotideShuffle(_ shuffled: [UInt8], of seq: [UInt8], _ label: String,
                                       sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(shuffled.count == seq.count, "\(label): length", sourceLocation: sourceLocation)
    #expect(pairCounts(shuffled) == pairCounts(seq), "\(label): \(pairDiff(shuffled, seq))",
            sourceLocation: sourceLocation)
    #expect(shuffled.first == seq.first && shuffled.last == seq.last, "\(label): ends", sourceLocation: sourceLocation)
}

/// Every sequence with the pair counts, first and last byte of `seq`, by depth-first search over the unused pairs
/// (independent of the Euler-tree construction). Distinct by construction: each branch appends a different letter.
private func allDinucleotideArrangements(_ seq: [UInt8]) -> [[UInt8]] {
    guard seq.count > 2 else { return [seq] }
    var remaining = pairCounts(seq)
    let letters = (0..<256).filter { letterCounts(seq)[$0] > 0 }.map { UInt8($0) }
    var out: [[UInt8]] = []
    var path = [seq[0]]
    func extend() {
        if path.count == seq.count {
            if path.last == seq.last { out.append(path) }
            return
        }
        for b in letters where remaining[256 * Int(path.last!) + Int(b)] > 0 {
            remaining[256 * Int(path.last!) + Int(b)] -= 1
            path.append(b)
            extend()
            path.removeLast()
            remaining[256 * Int(path.last!) + Int(b)] += 1
        }
    }
    extend()
    return out
}

/// Pearson's chi-square statistic of `counts` against equal expected counts.
private func chiSquare(_ counts: [Int]) -> Double {
    let expected = Double(counts.reduce(0, +)) / Double(counts.count)
    return counts.reduce(0) { $0 + (Double($1) - expected) * (Double($1) - expected) / expected }
}

/// Upper 10⁻⁶ quantile of chi-square with `df` degrees of freedom, by the Wilson–Hilferty cube-root approximation
/// with z = 4.7534 (the standard normal's upper 10⁻⁶ quantile). For df = 5, 20, 29, 59 it gives 37.5, 66.2, 81.0,
/// 126.1 against exact values 35.9, 65.4, 80.4, 125.7 (scipy.stats.chi2.isf): slightly above, so a uniform sampler
/// fails one check with probability below 10⁻⁶ (the seeds are fixed, so the outcome is reproducible).
private func chiSquareBound(df: Int) -> Double {
    let d = Double(df), z = 4.7534
    let c = 1 - 2 / (9 * d) + z * (2 / (9 * d)).squareRoot()
    return d * c * c * c
}

/// Random sequence over `alphabet`.
private func randomSequence(_ n: Int, _ alphabet: String, rng: inout RNG) -> [UInt8] {
    let a = bytes(alphabet)
    return (0..<n).map { _ in a[rng.int(below: a.count)] }
}

/// A promoter-like sequence with skewed composition: AT-rich, CpG-depleted background, homopolymer runs, a
/// soft-masked (lower-case) repeat stretch and a run of N, as upstream regions of a fly or human genome look.
private func skewedSequence(_ n: Int, rng: inout RNG) -> [UInt8] {
    var s: [UInt8] = []
    while s.count < n {
        let r = rng.uniform()
        if r < 0.05 {
            s += [UInt8](repeating: bytes("AT")[rng.int(below: 2)], count: 5 + rng.int(below: 15))
        } else if r < 0.07 {
            s += randomSequence(20 + rng.int(below: 60), "aattaattgcat", rng: &rng)
        } else if r < 0.075 {
            s += [UInt8](repeating: UInt8(ascii: "N"), count: 10 + rng.int(below: 40))
        } else {
            // C is rarely followed by G: CpG depletion.
            let prev = s.last
            var b = bytes("AAATTTCGCG")[rng.int(below: 10)]
            if prev == UInt8(ascii: "C") && b == UInt8(ascii: "G") && rng.uniform() < 0.8 { b = UInt8(ascii: "A") }
            s.append(b)
        }
    }
    return Array(s.prefix(n))
}

@Suite struct ShuffleTests {
    // MARK: Counts and ends

    @Test func dinucleotideKeepsPairCountsAndEndsOnRandomDNA() {
        var rng = RNG(seed: 11)
        for (alphabet, lengths) in [("ACGT", [3, 4, 5, 10, 50, 2000]), ("ACGTacgt", [3, 7, 100, 2000, 5000]),
                                    ("ACGTNacgtn", [2000])] {
            for n in lengths {
                for trial in 0..<20 {
                    let seq = randomSequence(n, alphabet, rng: &rng)
                    let shuffled = SequenceShuffle.dinucleotide(seq, rng: &rng)
                    expectDinucleotideShuffle(shuffled, of: seq, "\(alphabet) n=\(n) trial \(trial)")
                }
            }
        }
    }

    @Test func dinucleotideKeepsPairCountsOnSkewedSequences() {
        var rng = RNG(seed: 12)
        for trial in 0..<50 {
            let seq = skewedSequence(2000, rng: &rng)
            let shuffled = SequenceShuffle.dinucleotide(seq, rng: &rng)
            expectDinucleotideShuffle(shuffled, of: seq, "skewed trial \(trial)")
            #expect(shuffled != seq, "skewed trial \(trial) came back unchanged")
        }
    }

    /// The promoters of samples/dna (dm3 upstream 2000 bp, soft-masked, some with N runs): the intended use.
    @Test func dinucleotideKeepsPairCountsOnSamplePromoters() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("samples/dna/promoters/dm3_upstream2000_subset.fa.gz")
            .path
        let reader = try SequenceReader(path: path)
        var rng = RNG(seed: 13)
        var n = 0
        while let r = try reader.next(), n < 200 {
            n += 1
            let shuffled = SequenceShuffle.dinucleotide(r.sequence, rng: &rng)
            expectDinucleotideShuffle(shuffled, of: r.sequence, r.name)
        }
        #expect(n == 200)
    }

    @Test func dinucleotideWorksOnEveryByteValue() {
        var rng = RNG(seed: 14)
        let all = (0...255).map { UInt8($0) }
        for trial in 0..<20 {
            let seq = (0..<3000).map { _ in all[rng.int(below: 256)] } + all
            let shuffled = SequenceShuffle.dinucleotide(seq, rng: &rng)
            expectDinucleotideShuffle(shuffled, of: seq, "bytes trial \(trial)")
        }
        // Lower and upper case are different letters: "aA" pairs must stay "aA".
        let mixed = bytes("aAaAAaaAAAaaaAaA")
        for _ in 0..<100 {
            expectDinucleotideShuffle(SequenceShuffle.dinucleotide(mixed, rng: &rng), of: mixed, "aA")
        }
    }

    /// Sequences whose walk has to bounce many times before it reaches the last letter still shuffle correctly.
    @Test func dinucleotideSlowWalkCases() {
        var rng = RNG(seed: 15)
        let cases = [String(repeating: "AB", count: 1000) + "C", String(repeating: "A", count: 2000) + "C",
                     String(repeating: "AAB", count: 600) + String(repeating: "BA", count: 100) + "CA",
                     "C" + String(repeating: "ACGTTGCA", count: 250)]
        for s in cases {
            let seq = bytes(s)
            expectDinucleotideShuffle(SequenceShuffle.dinucleotide(seq, rng: &rng), of: seq, String(s.prefix(12)))
        }
    }

    @Test func mononucleotideKeepsLetterCounts() {
        var rng = RNG(seed: 16)
        for n in [0, 1, 2, 3, 10, 2000] {
            for _ in 0..<20 {
                let seq = randomSequence(n, "ACGTacgtN", rng: &rng)
                let shuffled = SequenceShuffle.mononucleotide(seq, rng: &rng)
                #expect(letterCounts(shuffled) == letterCounts(seq), "n=\(n)")
                #expect(shuffled.count == seq.count)
            }
        }
        let seq = skewedSequence(2000, rng: &rng)
        #expect(letterCounts(SequenceShuffle.mononucleotide(seq, rng: &rng)) == letterCounts(seq))
    }

    // MARK: Seeds

    @Test func sameSeedSameOutput() {
        var gen = RNG(seed: 17)
        let seq = randomSequence(2000, "ACGTacgt", rng: &gen)
        for seed: UInt64 in [0, 1, 42, 0xDEAD_BEEF] {
            var a = RNG(seed: seed), b = RNG(seed: seed)
            #expect(SequenceShuffle.dinucleotide(seq, rng: &a) == SequenceShuffle.dinucleotide(seq, rng: &b))
            #expect(SequenceShuffle.mononucleotide(seq, rng: &a) == SequenceShuffle.mononucleotide(seq, rng: &b))
            #expect(a == b, "both generators advanced by the same draws")
        }
    }

    @Test func differentSeedsGiveDifferentOutputs() {
        var gen = RNG(seed: 18)
        let seqs = [randomSequence(2000, "ACGT", rng: &gen), skewedSequence(2000, rng: &gen)]
        for seq in seqs {
            var di = Set<[UInt8]>(), mono = Set<[UInt8]>()
            for seed: UInt64 in 0..<20 {
                var rng = RNG(seed: seed)
                di.insert(SequenceShuffle.dinucleotide(seq, rng: &rng))
                mono.insert(SequenceShuffle.mononucleotide(seq, rng: &rng))
            }
            #expect(di.count == 20 && !di.contains(seq))
            #expect(mono.count == 20 && !mono.contains(seq))
        }
        // The calls of one generator differ from each other too.
        var rng = RNG(seed: 19)
        let seq = seqs[0]
        #expect(SequenceShuffle.dinucleotide(seq, rng: &rng) != SequenceShuffle.dinucleotide(seq, rng: &rng))
    }

    // MARK: Edge cases

    @Test func edgeCases() {
        var rng = RNG(seed: 20)
        #expect(SequenceShuffle.dinucleotide([], rng: &rng) == [])
        #expect(SequenceShuffle.mononucleotide([], rng: &rng) == [])
        #expect(SequenceShuffle.dinucleotide(bytes("G"), rng: &rng) == bytes("G"))
        #expect(SequenceShuffle.mononucleotide(bytes("G"), rng: &rng) == bytes("G"))
        // Length 2: the pair is the sequence. Its letters alone can come in either order.
        #expect(SequenceShuffle.dinucleotide(bytes("AC"), rng: &rng) == bytes("AC"))
        var seen = Set<String>()
        for _ in 0..<100 { seen.insert(text(SequenceShuffle.mononucleotide(bytes("AC"), rng: &rng))) }
        #expect(seen == ["AC", "CA"])
        // Sequences with a single arrangement come back unchanged, whatever the seed.
        for s in ["AA", "AAA", String(repeating: "A", count: 2000), "aaaa", "ABA", "ABAB", "ABABA", "acacacacac",
                  String(repeating: "GC", count: 1000), "AaAaAaA", "AAAC", "CAAA", "ACCCCG"] {
            #expect(allDinucleotideArrangements(bytes(s)).count == 1, "\(s.prefix(12))")
            for _ in 0..<10 {
                #expect(SequenceShuffle.dinucleotide(bytes(s), rng: &rng) == bytes(s), "\(s.prefix(12))")
            }
        }
    }

    // MARK: Uniformity

    /// Every sequence with the same pair counts and ends appears, and with frequencies a chi-square test accepts.
    /// "aAcAacAAca" (30 arrangements, case-sensitive) needs the tree drawn with multiplicity weights: a tree drawn
    /// uniformly among distinct successor letters gives a statistic in the thousands there.
    @Test(arguments: ["AACGTTACGA", "aAcAacAAca", "ABCABACBCA", "GATTACAGATCA"])
    func dinucleotideIsUniform(_ s: String) {
        let seq = bytes(s)
        let all = allDinucleotideArrangements(seq)
        #expect(all.count > 1)
        #expect(all.contains(seq))
        for a in all { #expect(pairCounts(a) == pairCounts(seq) && a.last == seq.last) }
        let index = Dictionary(uniqueKeysWithValues: all.enumerated().map { ($1, $0) })
        var counts = [Int](repeating: 0, count: all.count)
        var rng = RNG(seed: 21)
        let draws = 2000 * all.count
        for _ in 0..<draws {
            let shuffled = SequenceShuffle.dinucleotide(seq, rng: &rng)
            guard let k = index[shuffled] else {
                Issue.record("\(s): \(text(shuffled)) is not an arrangement of it")
                return
            }
            counts[k] += 1
        }
        #expect(counts.allSatisfy { $0 > 0 }, "\(s): some arrangements never drawn: \(counts)")
        let x2 = chiSquare(counts), bound = chiSquareBound(df: all.count - 1)
        #expect(x2 < bound, "\(s): chi-square \(x2) over \(all.count - 1) df exceeds \(bound); counts \(counts)")
    }

    @Test func mononucleotideIsUniform() {
        // "AACGT": 5!/2! = 60 distinct permutations.
        let seq = bytes("AACGT")
        var counts: [String: Int] = [:]
        var rng = RNG(seed: 22)
        for _ in 0..<120_000 { counts[text(SequenceShuffle.mononucleotide(seq, rng: &rng)), default: 0] += 1 }
        #expect(counts.count == 60)
        let x2 = chiSquare(Array(counts.values)), bound = chiSquareBound(df: 59)
        #expect(x2 < bound, "chi-square \(x2) over 59 df exceeds \(bound)")
    }

    @Test func bruteForceEnumeratorAgreesWithHandCount() {
        // "AACGTTACGA" has pairs AA AC AC CG CG GA GT TA TT. C is always followed by G, and T only occurs in "TTA",
        // so the sequence is A followed by A's three out-edges {A, CG, CG} in some order (3 orders), where the two CGs
        // continue with A and TTA in either order (2 orders): 6 arrangements.
        let all = allDinucleotideArrangements(bytes("AACGTTACGA")).map(text).sorted()
        #expect(all == ["AACGACGTTA", "AACGTTACGA", "ACGAACGTTA", "ACGACGTTAA", "ACGTTAACGA", "ACGTTACGAA"], "\(all)")
    }
}
