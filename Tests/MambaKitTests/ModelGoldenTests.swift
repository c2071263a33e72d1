import Foundation
import MambaKit
import Testing

/// Golden tests against HF transformers' `MambaForCausalLM` (fixtures from scripts/make_fixtures.py), and
/// `Mamba2ForCausalLM` and `NemotronHForCausalLM` (scripts/make_fixtures_blocks.py: n_groups 1 and 2, L not a
/// multiple of the chunk, a Δ clamp that binds, KV heads < heads, hybrid and attention-only stacks): logits, loss,
/// every parameter gradient, and three AdamW steps with gradient clipping.
@Suite struct ModelGoldenTests {
    static let cases = ["tiny_tied", "untied_bias", "deep_n16", "rank_wide",
                        "mamba2_g1", "mamba2_g2", "nemotron_h_mix", "nemotron_h_attn"]

    struct Case {
        let model: MambaModel
        let file: SafeTensorsFile
        let meta: [String: Any]
        let B: Int, L: Int
        let ids: [Int32]
        let targets: [Int32]
        /// Our (checkpoint) name → the fixture's name, where they differ.
        let fixtureName: [String: String]
        func name(_ view: TensorView) -> String { fixtureName[view.name] ?? view.name }
    }

    static func load(_ name: String) throws -> Case {
        let meta = try Fixtures.json(name + ".json")
        // The newer fixtures hold config.json as save_pretrained writes it, and name tensors as named_parameters()
        // does (NemotronH: `model.…`), with `checkpoint_keys` mapping those names to the checkpoint's.
        let cfgJSON = (meta["hf_config"] ?? meta["config"]) as! [String: Any]
        let config = try MambaConfig(json: cfgJSON)
        let model = try MambaModel(config: config)
        let file = try SafeTensorsFile(path: Fixtures.path(name + ".safetensors"))
        var fixtureName: [String: String] = [:]
        for (k, v) in meta["checkpoint_keys"] as? [String: String] ?? [:] { fixtureName[v] = k }
        let names = file.tensors.map(\.name)
        for view in model.params.layout.views {
            let n = fixtureName[view.name] ?? view.name
            try #require(names.contains(n), "\(name): no tensor \(n) in the fixture")
            try file.copyFloats(n, into: model.params.ptr(view), count: view.count)
        }
        let B = meta["batch"] as! Int, L = meta["seq_len"] as! Int
        let ids = try file.int64s("input_ids").map { Int32($0) }
        // HF's labels = input_ids: position t predicts token t+1; the last position is ignored.
        var targets = [Int32](repeating: CrossEntropy.ignoreIndex, count: B * L)
        for b in 0..<B { for t in 0..<(L - 1) { targets[b * L + t] = ids[b * L + t + 1] } }
        return Case(model: model, file: file, meta: meta, B: B, L: L, ids: ids, targets: targets, fixtureName: fixtureName)
    }

    @Test(arguments: cases)
    func logitsLossAndGradients(name: String) throws {
        let c = try Self.load(name)
        let ws = Workspace(config: c.model.config, B: c.B, L: c.L, training: true)
        c.ids.withUnsafeBufferPointer { c.model.forward(ids: $0.baseAddress!, ws: ws) }
        // Float32 through a few layers: the logits agree with PyTorch to within a few ulp (≤ 1e-6 seen).
        expectClose("\(name) logits", ws.logits.array, try c.file.floats("logits"), atol: 1e-5, rtol: 1e-5)
        c.model.zeroGradients()
        let (sum, count) = c.ids.withUnsafeBufferPointer { ids in
            c.targets.withUnsafeBufferPointer { t in c.model.backward(ids: ids.baseAddress!, targets: t.baseAddress!, ws: ws) }
        }
        let loss = sum / Double(count)
        let want = c.meta["loss"] as! Double
        #expect(abs(loss - want) < 1e-5 * max(1, abs(want)), "\(name) loss \(loss) vs \(want)")
        for view in c.model.grads.layout.views {
            let ref = try c.file.floats("grad." + c.name(view))
            let scale = ref.reduce(0) { max($0, abs($1)) }
            // Gradients sum over B·L terms in another order than PyTorch: relative to the tensor's largest entry.
            expectClose("\(name) grad \(view.name)", c.model.grads.values(view.name), ref,
                        atol: 1e-4 * max(scale, 1e-3), rtol: 1e-3)
        }
    }

    @Test(arguments: cases)
    func adamWStepsWithClipping(name: String) throws {
        let c = try Self.load(name)
        let tr = c.meta["train"] as! [String: Any]
        let betas = tr["betas"] as! [Double]
        let hyper = AdamW.Hyper(beta1: Float(betas[0]), beta2: Float(betas[1]), eps: Float(tr["eps"] as! Double),
                                weightDecay: Float(tr["weight_decay"] as! Double))
        let noDecay = Set(tr["no_decay"] as! [String])
        for view in c.model.params.layout.views {
            #expect(view.decay == !noDecay.contains(c.name(view)), "decay group of \(view.name)")
        }
        let opt = AdamW(layout: c.model.params.layout, hyper: hyper)
        let ws = Workspace(config: c.model.config, B: c.B, L: c.L, training: true)
        let wantLosses = tr["losses"] as! [Double]
        let wantNorms = tr["grad_norms"] as! [Double]
        for step in 0..<(tr["steps"] as! Int) {
            c.model.zeroGradients()
            c.ids.withUnsafeBufferPointer { c.model.forward(ids: $0.baseAddress!, ws: ws) }
            let (sum, count) = c.ids.withUnsafeBufferPointer { ids in
                c.targets.withUnsafeBufferPointer { t in
                    c.model.backward(ids: ids.baseAddress!, targets: t.baseAddress!, ws: ws)
                }
            }
            let loss = sum / Double(count)
            #expect(abs(loss - wantLosses[step]) < 2e-5 * max(1, wantLosses[step]), "\(name) step \(step) loss \(loss) vs \(wantLosses[step])")
            let norm = AdamW.clipGradients(c.model.grads, maxNorm: Float(tr["max_grad_norm"] as! Double))
            #expect(abs(norm - wantNorms[step]) < 1e-4 * wantNorms[step], "\(name) step \(step) grad norm \(norm) vs \(wantNorms[step])")
            opt.update(params: c.model.params, grads: c.model.grads, lr: Float(tr["lr"] as! Double))
        }
        let lr = Float(tr["lr"] as! Double)
        let steps = tr["steps"] as! Int
        for view in c.model.params.layout.views {
            // Adam divides by √v: after 3 steps an element moves by ≤ 3·lr, and small gradient differences move it
            // by a small fraction of that. An element whose first gradient is rounding noise (below 1e-6 of its
            // tensor's largest; e.g. 2e-9 beside 2.5e-2 in nemotron_h_attn's q_proj) takes a first step of ±lr
            // whatever its sign and size, in PyTorch as here: it is held only to that bound.
            let grad0 = try c.file.floats("grad." + c.name(view))
            let noise = 1e-6 * grad0.reduce(0) { max($0, abs($1)) }
            var got = c.model.params.values(view.name), want = try c.file.floats("final." + c.name(view))
            let initial = try c.file.floats(c.name(view))
            for i in got.indices where abs(grad0[i]) < noise {
                #expect(abs(got[i] - initial[i]) <= Float(steps) * lr * 1.01, "\(name) \(view.name)[\(i)] moved too far")
                (got[i], want[i]) = (0, 0)
            }
            expectClose("\(name) final \(view.name)", got, want, atol: 2e-4, rtol: 1e-4)
        }
    }
}
