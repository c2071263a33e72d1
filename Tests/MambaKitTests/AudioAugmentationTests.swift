import Foundation
import MambaKit
import Testing

/// Audio augmentation for classification: each transform does what it says, draws from the RNG it is given (so a
/// resumed run repeats it), and with every range at zero gives the clip back.
@Suite struct AudioAugmentationTests {
    /// A 440 Hz tone at 8 kHz, 0.25 of full scale, as mu-law tokens.
    static let tokenizer = AudioTokenizer(quantizer: .mulaw, sampleRate: 8000)
    static let tone = tokenizer.encode((0..<4000).map { Float(0.25 * sin(2 * Double.pi * 440 * Double($0) / 8000)) })

    static func rms(_ x: [Float]) -> Double { (x.reduce(0.0) { $0 + Double($1 * $1) } / Double(max(x.count, 1))).squareRoot() }

    @Test func nothingDrawnGivesTheClipBack() {
        var a = AudioAugmentation(tokenizer: Self.tokenizer)
        a.gainDB = 0; a.speed = 0; a.shift = 0
        var rng = RNG(seed: 1)
        #expect(a.apply(Self.tone, rng: &rng) == Self.tone)
    }

    @Test func gainScalesTheLevel() {
        var a = AudioAugmentation(tokenizer: Self.tokenizer)
        a.speed = 0; a.shift = 0; a.gainDB = 6
        let base = Self.rms(Self.tokenizer.decode(Self.tone))
        var rng = RNG(seed: 2)
        var ratios: [Double] = []
        for _ in 0..<20 {
            let out = a.apply(Self.tone, rng: &rng)
            #expect(out.count == Self.tone.count)
            ratios.append(Self.rms(Self.tokenizer.decode(out)) / base)
        }
        // Within ±6 dB (×0.5 … ×2, plus quantisation), and both louder and quieter drawn.
        #expect(ratios.allSatisfy { $0 > 0.48 && $0 < 2.05 }, "\(ratios)")
        #expect(ratios.contains { $0 > 1.2 } && ratios.contains { $0 < 0.8 }, "\(ratios)")
    }

    /// Speed perturbation resamples: the length scales by 1/factor, and the tone's period with it (zero crossings
    /// counted), within ±10 %.
    @Test func speedMovesLengthAndPitchTogether() {
        var a = AudioAugmentation(tokenizer: Self.tokenizer)
        a.gainDB = 0; a.shift = 0; a.speed = 0.1
        var rng = RNG(seed: 3)
        func crossings(_ x: [Float]) -> Int { zip(x, x.dropFirst()).filter { $0.0 < 0 && $0.1 >= 0 }.count }
        let baseCrossings = Double(crossings(Self.tokenizer.decode(Self.tone)))
        var lengths = Set<Int>()
        for _ in 0..<20 {
            let out = a.apply(Self.tone, rng: &rng)
            let factor = Double(Self.tone.count) / Double(out.count)
            #expect(factor > 0.89 && factor < 1.11, "factor \(factor)")
            // The same number of cycles in the new length: crossings per sample scale by the factor.
            let perSample = Double(crossings(Self.tokenizer.decode(out))) / Double(out.count)
            let want = baseCrossings / Double(Self.tone.count) * factor
            #expect(abs(perSample - want) < 0.02 * want + 1.0 / Double(out.count), "\(perSample) vs \(want)")
            lengths.insert(out.count)
        }
        #expect(lengths.count > 5)
    }

    @Test func shiftPadsWithSilenceOrDrops() {
        var a = AudioAugmentation(tokenizer: Self.tokenizer)
        a.gainDB = 0; a.speed = 0; a.shift = 400
        var rng = RNG(seed: 4)
        var sawPad = false, sawDrop = false
        for _ in 0..<20 {
            let out = a.apply(Self.tone, rng: &rng)
            let d = out.count - Self.tone.count
            #expect(abs(d) <= 400)
            if d > 0 {
                sawPad = true
                #expect(out[0..<d].allSatisfy { $0 == Self.tokenizer.silenceToken })
                #expect(Array(out[d...]) == Self.tone)
            } else if d < 0 {
                sawDrop = true
                #expect(out == Array(Self.tone[(-d)...]))
            }
        }
        #expect(sawPad && sawDrop)
    }

    @Test func sameSeedSameDraws() {
        let a = AudioAugmentation(tokenizer: Self.tokenizer)
        var r1 = RNG(seed: 9), r2 = RNG(seed: 9)
        #expect(a.apply(Self.tone, rng: &r1) == a.apply(Self.tone, rng: &r2))
    }
}
