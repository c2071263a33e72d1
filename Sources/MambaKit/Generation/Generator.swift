/// Autoregressive generation with the recurrent state: the prompt is prefilled with the parallel forward (which
/// hands its final conv and SSM states over), then each new token costs one recurrent step — O(1) memory and time
/// per token, whatever the length generated.
public final class Generator {
    public let model: MambaModel
    public let batch: Int
    public let state: RecurrentState
    public let stepper: RecurrentStepper

    /// Snapshots what the step reads transposed (see `RecurrentStepper`): make a new generator after training on.
    /// `weights` is the precision the step reads its projections in (the prefill always runs in Float32).
    public init(model: MambaModel, batch: Int = 1, weights: StepWeights = .f32) {
        self.model = model
        self.batch = batch
        state = RecurrentState(config: model.config, batch: batch)
        stepper = RecurrentStepper(model: model, batch: batch, weights: weights)
    }

    /// Runs the prompts (`batch` rows of equal length) from zero state; returns the logits `(batch, V)` of the
    /// last position.
    public func prefill(_ prompts: [[Int32]]) throws -> [Float] {
        precondition(prompts.count == batch)
        let L = prompts[0].count
        guard L > 0 else { throw MambaKitError(.usage, "the prompt is empty; give at least one token") }
        guard prompts.allSatisfy({ $0.count == L }) else { throw MambaKitError(.shape, "prompts of a batch must have equal length") }
        let V = model.config.vocabSize
        for p in prompts { for id in p where id < 0 || Int(id) >= V {
            throw MambaKitError(.usage, "prompt token \(id) is outside the vocabulary of \(V)")
        } }
        state.reset()
        // In chunks whose workspace stays within 256 MB, the state carried from one to the next: a long prompt
        // costs time, not memory. The multi-scale backbone's forward continues only from multiples of P: the last
        // L mod P tokens are stepped.
        let c = model.config
        let whole = L / c.stateBoundary * c.stateBoundary
        let chunk = c.chunkLength(min(max(whole, 1), Workspace.maxTokens(config: c, B: batch)))
        var ws: Workspace? = nil
        var t0 = 0
        while t0 < whole {
            let n = min(chunk, whole - t0)
            if n != ws?.L { ws = Workspace(config: c, B: batch, L: n, training: false) }
            let ids = prompts.flatMap { $0[t0..<(t0 + n)] }
            ids.withUnsafeBufferPointer { model.forward(ids: $0.baseAddress!, ws: ws!, state: state, lastOnly: true) }
            t0 += n
        }
        if t0 == L, let ws { return Array(UnsafeBufferPointer(start: ws.logits.ptr, count: batch * V)) }
        var last: [Float] = []
        while t0 < L {
            last = Array(step(prompts.map { $0[t0] }))
            t0 += 1
        }
        return last
    }

    /// Feeds one token per sequence; returns the next logits `(batch, V)` (a view valid until the next call).
    public func step(_ tokens: [Int32]) -> UnsafeBufferPointer<Float> {
        precondition(tokens.count == batch)
        let V = model.config.vocabSize
        tokens.withUnsafeBufferPointer { stepper.step(ids: $0.baseAddress!, state: state) }
        return UnsafeBufferPointer(start: stepper.logits.ptr, count: batch * V)
    }

    /// Generates `count` tokens after `prompt` (batch 1), calling `emit` with each as soon as it is drawn
    /// (return false from `emit` to stop early).
    public func generate(prompt: [Int32], count: Int, sampler: Sampler, rng: inout RNG,
                         emit: (Int32) throws -> Bool) throws {
        precondition(batch == 1)
        let V = model.config.vocabSize
        guard count > 0 else { return }
        var logits = try prefill([prompt])
        var produced = 0
        while true {
            let next = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress!, V: V, rng: &rng) }
            produced += 1
            if try !emit(next) || produced == count { return }
            logits = Array(step([next]))
        }
    }
}
