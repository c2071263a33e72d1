import Foundation

/// `trainer_state.json` of a checkpoint, parsed and checked before anything is restored from it: the step counts,
/// the RNG words, the options (through `Settings`, like flags and pipeline files), the data fingerprint and the
/// early-stopping record. Every value of the wrong type or out of range is an error naming the file and key.
public struct TrainerState {
    public var step: Int
    public var adamStep: Int
    public var rngWords: [UInt64]
    public var elapsed: Double
    /// The options object as saved (nil in states written before options were saved), and those options parsed.
    public var optionsJSON: [String: Any]?
    public var options: Trainer.Options?
    public var data: [String]?
    public var bestLoss: Double
    public var bestStep: Int
    public var sinceBest: Int
    /// The objective's own state (stateful training's lanes), unchecked: the objective's `restore` checks it.
    public var objective: Any? = nil

    /// Largest accepted trainer_state.json: it holds a few dozen numbers and the data file names.
    public static let maxBytes = 16 << 20

    public init(path: String) throws {
        let size = try FileInput.checkFile(path)
        guard size <= Self.maxBytes else {
            throw MambaKitError(.format, "trainer state is \(size) bytes, more than the \(Self.maxBytes) accepted", at: path)
        }
        try self.init(bytes: try FileInput.readBytes(path, maxBytes: Self.maxBytes), path: path)
    }

    public init(bytes: [UInt8], path: String) throws {
        guard let root = try? JSONSerialization.jsonObject(with: Data(bytes)), let o = root as? [String: Any] else {
            throw MambaKitError(.format, "trainer state is not a JSON object", at: path)
        }
        func fail(_ what: String) -> MambaKitError { MambaKitError(.format, what, at: path) }
        objective = o["objective"]
        func int(_ k: String, required: Bool, in range: ClosedRange<Int>) throws -> Int? {
            guard let v = o[k], !(v is NSNull) else {
                if required { throw fail("\(k) is missing") }
                return nil
            }
            guard let n = v as? NSNumber, !jsonIsBool(v), n.doubleValue.isFinite, n.doubleValue == n.doubleValue.rounded(),
                  abs(n.doubleValue) <= 9e15, range.contains(Int(n.doubleValue)) else {
                throw fail("\(k) must be an integer from \(range.lowerBound) to \(range.upperBound) (got \(v))")
            }
            return Int(n.doubleValue)
        }
        func double(_ k: String) throws -> Double? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !jsonIsBool(v), n.doubleValue.isFinite else {
                throw fail("\(k) must be a finite number (got \(v))")
            }
            return n.doubleValue
        }
        let maxSteps = Settings.maxSteps
        step = try int("step", required: true, in: 0...maxSteps)!
        adamStep = try int("adam_step", required: true, in: 0...maxSteps)!
        guard let words = o["rng"] as? [Any], words.count == 4 else { throw fail("rng must be a list of 4 hex words") }
        rngWords = try words.map { w in
            guard let s = w as? String, !s.isEmpty, s.count <= 16, let u = UInt64(s, radix: 16) else {
                throw fail("rng must be a list of 4 hex words (got \(w))")
            }
            return u
        }
        guard rngWords.contains(where: { $0 != 0 }) else { throw fail("rng words are all zero") }
        elapsed = try double("elapsed_s") ?? 0
        guard elapsed >= 0 else { throw fail("elapsed_s must be ≥ 0 (got \(elapsed))") }
        if let v = o["options"], !(v is NSNull) {
            guard let opts = v as? [String: Any] else { throw fail("options must be an object") }
            optionsJSON = opts
            options = try Trainer.Options(json: opts, source: .file(path, section: "options"))
        }
        if let v = o["data"], !(v is NSNull) {
            guard let list = v as? [Any], list.allSatisfy({ $0 is String }) else {
                throw fail("data must be a list of strings")
            }
            data = list.compactMap { $0 as? String }
        }
        bestLoss = try double("best_val_loss") ?? .infinity
        bestStep = try int("best_step", required: false, in: 0...step) ?? 0
        sinceBest = try int("since_best", required: false, in: 0...maxSteps) ?? 0
    }
}
