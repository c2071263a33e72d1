import Foundation

/// Learning-rate schedule: linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to `minimum` at
/// step `total` (the schedule of the Mamba and MambaByte papers; GPT-3 style).
public struct CosineSchedule: Equatable, Sendable {
    public var peak: Double
    public var minimum: Double
    public var warmup: Int
    public var total: Int

    public init(peak: Double, minimum: Double, warmup: Int, total: Int) {
        self.peak = peak; self.minimum = minimum; self.warmup = warmup; self.total = total
    }

    /// The rate for step `step` (1-based: the first update is step 1).
    public func rate(step: Int) -> Double {
        if warmup > 0 && step <= warmup { return peak * Double(step) / Double(warmup) }
        if total <= warmup { return peak }
        let progress = min(1, Double(step - warmup) / Double(total - warmup))
        return minimum + 0.5 * (peak - minimum) * (1 + cos(Double.pi * progress))
    }
}
