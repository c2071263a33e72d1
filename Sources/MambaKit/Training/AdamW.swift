/// AdamW (Loshchilov & Hutter; PyTorch `torch.optim.AdamW`, `foreach=False`) over the parameter arena, with
/// decoupled weight decay applied only to the views whose layout says `decay` (the owning block decides: not norms,
/// biases, A_log, D or dt_bias), and
/// global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`.
///
/// Per element, in PyTorch's order and in Float: `p ← p·(1 − lr·wd)`; `m ← β1·m + (1−β1)·g`;
/// `v ← β2·v + (1−β2)·g²`; `p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + eps)`.
public final class AdamW {
    public struct Hyper: Equatable, Sendable {
        public var beta1: Float = 0.9
        public var beta2: Float = 0.95
        public var eps: Float = 1e-8
        public var weightDecay: Float = 0.1
        public init(beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weightDecay: Float = 0.1) {
            self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        }
    }

    public let hyper: Hyper
    /// The part of the arena this optimizer updates (all of it; with sharded training, this rank's slice) and
    /// its first and second moments, `range.count` floats each.
    public let range: Range<Int>
    public let m: FloatBuffer
    public let v: FloatBuffer
    /// Steps taken so far (PyTorch's `state['step']`).
    public var step: Int = 0
    let decayMask: [Bool]

    public init(layout: ArenaLayout, hyper: Hyper, range: Range<Int>? = nil) {
        self.hyper = hyper
        let r = range ?? 0..<layout.total
        precondition(r.lowerBound >= 0 && r.upperBound <= layout.total, "optimizer range outside the arena")
        self.range = r
        m = FloatBuffer(count: r.count)
        v = FloatBuffer(count: r.count)
        decayMask = layout.views.map(\.decay)
    }

    /// The part of `view` inside `range`, as arena offsets (empty when they do not meet).
    public func part(of view: TensorView) -> Range<Int> {
        let lo = max(view.offset, range.lowerBound), hi = min(view.offset + view.count, range.upperBound)
        return lo < hi ? lo..<hi : lo..<lo
    }

    /// One update of `params` over `range` from `grads` at learning rate `lr`.
    public func update(params: Arena, grads: Arena, lr: Float) {
        step += 1
        let (b1, b2, eps) = (hyper.beta1, hyper.beta2, hyper.eps)
        let bc1 = 1 - Float(pow(Double(b1), Double(step)))
        let bc2 = 1 - Float(pow(Double(b2), Double(step)))
        let stepSize = lr / bc1
        let bc2Sqrt = bc2.squareRoot()
        for (vi, view) in params.layout.views.enumerated() {
            let r = part(of: view)
            if r.isEmpty { continue }
            let p = params.base + r.lowerBound, g = grads.base + r.lowerBound
            let mm = m.ptr + (r.lowerBound - range.lowerBound), vv = v.ptr + (r.lowerBound - range.lowerBound)
            let decay: Float = decayMask[vi] ? 1 - lr * hyper.weightDecay : 1
            for i in 0..<r.count {
                p[i] *= decay
                mm[i] = b1 * mm[i] + (1 - b1) * g[i]
                vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i]
                let denom = vv[i].squareRoot() / bc2Sqrt + eps
                p[i] -= stepSize * (mm[i] / denom)
            }
        }
    }

    /// Σ g² over the views' parts inside `range`, in Double, view by view (over the whole arena, the square of
    /// `gradientNorm`).
    public static func squaredNorm(_ grads: Arena, range: Range<Int>) -> Double {
        var total = 0.0
        for view in grads.layout.views {
            let lo = max(view.offset, range.lowerBound), hi = min(view.offset + view.count, range.upperBound)
            if lo >= hi { continue }
            let g = grads.base + lo
            var s = 0.0
            for i in 0..<(hi - lo) { s += Double(g[i]) * Double(g[i]) }
            total += s
        }
        return total
    }

    /// The clipping coefficient for a gradient of norm `norm` (`clip_grad_norm_`'s), 1 when no clipping.
    public static func clipCoefficient(norm: Double, maxNorm: Float) -> Double {
        min(1, Double(maxNorm) / (norm + 1e-6))
    }

    /// Multiplies `grads` over `range` by `coefficient` (when below 1).
    public static func scale(_ grads: Arena, range: Range<Int>, by coefficient: Double) {
        guard coefficient < 1 else { return }
        let c = Float(coefficient)
        let p = grads.base
        for i in range { p[i] *= c }
    }

    /// Scales `grads` so that their global L2 norm is at most `maxNorm` (coefficient `maxNorm / (norm + 1e-6)`,
    /// clamped to 1) and returns the norm before clipping. Accumulated in Double.
    @discardableResult
    public static func clipGradients(_ grads: Arena, maxNorm: Float) -> Double {
        let n = gradientNorm(grads)
        scale(grads, range: 0..<grads.layout.total, by: clipCoefficient(norm: n, maxNorm: maxNorm))
        return n
    }

    public static func gradientNorm(_ grads: Arena) -> Double {
        squaredNorm(grads, range: 0..<grads.layout.total).squareRoot()
    }
}

#if canImport(Glibc)
import Glibc
#endif
