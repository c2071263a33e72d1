import Foundation
import MambaKit
import Testing

/// Golden tests against HF transformers' `MambaForCausalLM` (fixtures from scripts/make_fixtures.py): logits, loss,
/// every parameter gradient, and three AdamW steps with gradient clipping.
@Suite struct ModelGoldenTests {
    static let cases = ["tiny_tied", "untied_bias", "deep_n16", "rank_wide"]

    struct Case {
        let model: MambaModel
        let file: SafeTensorsFile
        let meta: [String: Any]
        let B: Int, L: Int
        let ids: [Int32]
        let targets: [Int32]
    }

    static func load(_ name: String) throws -> Case {
        let meta = try Fixtures.json(name + ".json")
        let cfgJSON = meta["config"] as! [String: Any]
        let config = try MambaConfig(json: cfgJSON)
        let model = try MambaModel(config: config)
        let file = try SafeTensorsFile(path: Fixtures.path(name + ".safetensors"))
        for view in model.params.layout.views {
            try file.copyFloats(view.name, into: model.params.ptr(view), count: view.count)
        }
        let B = meta["batch"] as! Int, L = meta["seq_len"] as! Int
        let ids = try file.int64s("input_ids").map { Int32($0) }
        // HF's labels = input_ids: position t predicts token t+1; the last position is ignored.
        var targets = [Int32](repeating: CrossEntropy.ignoreIndex, count: B * L)
        for b in 0..<B { for t in 0..<(L - 1) { targets[b * L + t] = ids[b * L + t + 1] } }
        return Case(model: model, file: file, meta: meta, B: B, L: L, ids: ids, targets: targets)
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
            let ref = try c.file.floats("grad." + view.name)
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
            #expect(view.decay == !noDecay.contains(view.name), "decay group of \(view.name)")
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
        for view in c.model.params.layout.views {
            // Adam divides by √v: after 3 steps an element moves by ≤ 3·lr, and small gradient differences move it
            // by a small fraction of that.
            expectClose("\(name) final \(view.name)", c.model.params.values(view.name),
                        try c.file.floats("final." + view.name), atol: 2e-4, rtol: 1e-4)
        }
    }
}
