/// A backbone is an embedding, a list of blocks and a final norm (DESIGN.md §1, §3). Every block is a pre-norm
/// residual unit `x + f(RMSNorm(x))`: the backbone owns the residual stream, each layer's `norm.weight` and the
/// RMSNorm around it, and a `Block` owns `f` (the layer's `mixer`) — its parameters, what it saves for backward, its
/// recurrent state, `forward`, `backward`, `step` and a plain `forwardReference`, side by side in one file under
/// `Blocks/`. A new kind of block is one new file and one case of `BlockKind`.
///
/// Blocks work on `(B, L, D)` rows: `forward` reads the normed input and writes `f` of it; `backward` accumulates
/// ∂loss/∂input and the parameter gradients from ∂loss/∂output.
public protocol Block: AnyObject {
    var kind: BlockKind { get }
    /// The layer's index in the stack (its checkpoint keys are `backbone.layers.<layer>.mixer.*`).
    var layer: Int { get }
    /// Blocks with equal keys have activations of the same shapes, so evaluation can share one set between them.
    var shareKey: String { get }

    /// Fills this block's parameters as its reference implementation initialises them.
    func initialize(_ params: Arena, rng: inout RNG)
    /// What `forward` keeps for `backward` (per layer when training; shared by `shareKey` otherwise).
    func makeActivations(B: Int, L: Int, training: Bool) -> BlockActivations
    /// Scratch that `forward` and `backward` use and do not keep (shared by `shareKey`).
    func makeScratch(B: Int, L: Int, training: Bool) -> BlockScratch
    /// The state carried from one chunk or token to the next, zeroed.
    func makeState(batch: Int) -> BlockState
    /// The per-token step for generation, with the weights laid out as it reads them.
    func makeStepper(params: Arena, batch: Int, weights: StepWeights) -> BlockStepper
    /// Parameters read by the step's projections (what `StepWeights.bf16` rounds).
    var projectionParameters: Int { get }
    /// Whether `backward` holds after a training `forward` from a carried state (the state treated as a constant:
    /// truncated backpropagation through time). Attention, whose state is the whole past, does not.
    var trainsFromCarriedState: Bool { get }

    /// `out (B, L, D) = f(inp (B, L, D))`. With `state`, the sequences continue from it and it is advanced.
    /// `observe` sees what the block can show of its inner working per position (Mamba's selective Δ), as
    /// `(values (B, L, channels), channels)`.
    func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, B: Int, L: Int, params: Arena,
                 acts: BlockActivations, scratch: BlockScratch, state: BlockState?, training: Bool,
                 observe: ((_ values: UnsafePointer<Float>, _ channels: Int) -> Void)?)
    /// Accumulates ∂loss/∂inp into `dinp` and the parameter gradients into `grads`, from ∂loss/∂out `dout`; `inp` is
    /// the input `forward` saw (the backbone recomputes it).
    func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                  B: Int, L: Int, params: Arena, grads: Arena, acts: BlockActivations, scratch: BlockScratch)
    /// The plain version of `forward`: token by token, one sequence at a time, no SIMD, no BLAS, no threads,
    /// in Double from the Float parameters and input to the output; the tests hold `forward`, `step` and (by finite
    /// differences) `backward` to it.
    func forwardReference(out: UnsafeMutablePointer<Double>, inp: UnsafePointer<Float>, B: Int, L: Int, params: Arena)
}

extension Block {
    public var trainsFromCarriedState: Bool { kind != .attention }
}

/// The kinds of block, written as in arXiv 2406.07887's pattern notation.
public enum BlockKind: String, CaseIterable, Sendable {
    /// Mamba-1 (selective scan); `m` in a pattern.
    case mamba1
    /// Mamba-2 (SSD); `M`.
    case mamba2
    /// Causal grouped-query attention; `*`.
    case attention
    /// relu² MLP; `-`.
    case mlp

    public var symbol: Character {
        switch self {
        case .mamba1: return "m"
        case .mamba2: return "M"
        case .attention: return "*"
        case .mlp: return "-"
        }
    }

    public init?(symbol: Character) {
        guard let k = BlockKind.allCases.first(where: { $0.symbol == symbol }) else { return nil }
        self = k
    }
}

/// Saved activations of one block for one `(B, L)`.
public protocol BlockActivations: AnyObject {
    /// Floats held.
    var floats: Int { get }
}

/// Scratch of one block kind for one `(B, L)`.
public protocol BlockScratch: AnyObject {
    var floats: Int { get }
}

/// A block's recurrent state for `batch` sequences.
public protocol BlockState: AnyObject {
    func reset()
    /// Bytes held (for generation's memory report).
    var bytes: Int { get }
    /// The state's tensors, each batch-major (sequence b is the b-th of `batch` equal slices): what a checkpoint of
    /// stateful training saves, and what restarting one sequence zeroes. Empty for blocks without a fixed-size state.
    var tensors: [FloatBuffer] { get }
}

extension BlockState {
    public var tensors: [FloatBuffer] { [] }
}

/// The one-token step of a block: `out (B, D) = f(inp (B, D))`, advancing `state`.
public protocol BlockStepper: AnyObject {
    func step(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, state: BlockState, ctx: StepContext)
    /// Bytes of weights laid out for the step and of its scratch.
    var bytes: Int { get }
    /// Weight bytes one step reads in its projections.
    var projectionWeightBytes: Int { get }
}

/// A block with no activations, scratch or state (e.g. stateless blocks in inference).
final class NoActivations: BlockActivations, BlockScratch {
    var floats: Int { 0 }
}

/// What every block step shares: the thread team that splits each pass, the batch, and the projection of rows by a
/// weight matrix in Float32 or bfloat16.
public final class StepContext {
    public let team: SpinTeam
    public let batch: Int
    /// The input rows split into bfloat16 pairs for `MatVec.rowsBF16` (`(B, stride)`), grown on first use.
    let split = Scratch()

    init(team: SpinTeam, batch: Int) {
        self.team = team
        self.batch = batch
    }

    /// A context of its own team of `threads` members, for steppers driven one block at a time (tests).
    public convenience init(threads: Int, batch: Int) { self.init(team: SpinTeam(size: threads), batch: batch) }

    /// out (B, O) = x (B, I) · Wᵀ + b, output rows split over the team; `half` replaces W when the step reads
    /// bfloat16 weights.
    func project(_ out: UnsafeMutablePointer<Float>, _ ldo: Int, _ x: UnsafePointer<Float>, _ ldx: Int,
                 _ w: UnsafePointer<Float>, _ half: BF16Matrix?, _ bias: UnsafePointer<Float>?, I: Int, O: Int) {
        let B = batch
        if let half {
            let xs = split.floats(B * half.stride)
            MatVec.splitPairs(x, ldx: ldx, B: B, I: I, stride: half.stride, into: xs)
            team.forRanges((O + 3) / 4) { lo, hi in
                MatVec.rowsBF16(out: out, ldo: ldo, xs: xs, weight: half, bias: bias, B: B,
                                from: lo * 4, to: min(O, hi * 4))
            }
            return
        }
        team.forRanges((O + 3) / 4) { lo, hi in
            MatVec.rows(out: out, ldo: ldo, x: x, ldx: ldx, weight: w, bias: bias, B: B, I: I,
                        from: lo * 4, to: min(O, hi * 4))
        }
    }
}
