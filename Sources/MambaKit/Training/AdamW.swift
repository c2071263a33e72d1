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
    public let m: Arena
    public let v: Arena
    /// Steps taken so far (PyTorch's `state['step']`).
    public var step: Int = 0
    let decayMask: [Bool]

    public init(layout: ArenaLayout, hyper: Hyper) {
        self.hyper = hyper
        m = Arena(layout: layout)
        v = Arena(layout: layout)
        decayMask = layout.views.map(\.decay)
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    public func update(params: Arena, grads: Arena, lr: Float) {
        step += 1
        let (b1, b2, eps) = (hyper.beta1, hyper.beta2, hyper.eps)
        let bc1 = 1 - Float(pow(Double(b1), Double(step)))
        let bc2 = 1 - Float(pow(Double(b2), Double(step)))
        let stepSize = lr / bc1
        let bc2Sqrt = bc2.squareRoot()
        for (vi, view) in params.layout.views.enumerated() {
            let p = params.ptr(view), g = grads.ptr(view), mm = m.ptr(view), vv = v.ptr(view)
            let decay: Float = decayMask[vi] ? 1 - lr * hyper.weightDecay : 1
            for i in 0..<view.count {
                p[i] *= decay
                mm[i] = b1 * mm[i] + (1 - b1) * g[i]
                vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i]
                let denom = vv[i].squareRoot() / bc2Sqrt + eps
                p[i] -= stepSize * (mm[i] / denom)
            }
        }
    }

    /// Scales `grads` so that their global L2 norm is at most `maxNorm` (coefficient `maxNorm / (norm + 1e-6)`,
    /// clamped to 1) and returns the norm before clipping. Accumulated in Double.
    @discardableResult
    public static func clipGradients(_ grads: Arena, maxNorm: Float) -> Double {
        let n = gradientNorm(grads)
        let coef = min(1, Double(maxNorm) / (n + 1e-6))
        if coef < 1 {
            let c = Float(coef)
            let p = grads.base
            for i in 0..<grads.layout.total { p[i] *= c }
        }
        return n
    }

    public static func gradientNorm(_ grads: Arena) -> Double {
        var total = 0.0
        for view in grads.layout.views {
            let g = grads.ptr(view)
            var s = 0.0
            for i in 0..<view.count { s += Double(g[i]) * Double(g[i]) }
            total += s
        }
        return total.squareRoot()
    }
}

#if canImport(Glibc)
import Glibc
#endif
