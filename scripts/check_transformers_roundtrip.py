"""Loads a model directory written by `mambakit` into transformers and prints the mean next-byte loss (nats) of a file,
to compare with `mambakit eval --model DIR --data FILE --json`.

    python3 scripts/check_transformers_roundtrip.py runs/bytes-lm samples/text/ruth.txt [--max-bytes N]

The class follows config.json's `model_type`: `mamba` → MambaForCausalLM, `mamba2` → Mamba2ForCausalLM, `nemotron_h` →
NemotronHForCausalLM (the hybrid Mamba-2 / attention / MLP stacks). The printed JSON is the same for all three.

Tests/MambaKitTests/Fixtures/mambakit_saved_transformers.json is this script's output for the committed model
Tests/MambaKitTests/Fixtures/mambakit_saved (saved by `mambakit train`) on the first 2000 bytes of ruth.txt.

Needs torch and transformers (scripts/requirements-fixtures.txt). Runs the pure-PyTorch path on the CPU (no hub
kernels, no mamba_ssm / causal_conv1d), over the whole file in one forward pass (use --max-bytes to cap it), which is
what the chunked evaluation must equal.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("USE_HUB_KERNELS", "0")
# the optional CUDA packages stay unimportable even if installed: transformers then takes its PyTorch path
for _blocked in ("mamba_ssm", "causal_conv1d"):
    sys.modules.setdefault(_blocked, None)

import torch  # noqa: E402
from transformers import Mamba2ForCausalLM, MambaForCausalLM, NemotronHForCausalLM  # noqa: E402

MODEL_CLASSES = {
    "mamba": MambaForCausalLM,
    "mamba2": Mamba2ForCausalLM,
    "nemotron_h": NemotronHForCausalLM,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--max-bytes", type=int, default=0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    if "model_type" not in config and "ssm_cfg" in config:
        sys.exit(f"error: a mamba_ssm checkpoint (config.json has ssm_cfg, no model_type), {args.model}")
    model_type = config.get("model_type", "mamba")  # as before: a config without model_type is read as Mamba-1
    if model_type not in MODEL_CLASSES:
        sys.exit(f"error: config.json's model_type {model_type!r} is not one of {', '.join(MODEL_CLASSES)}, "
                 f"{args.model}")
    model = MODEL_CLASSES[model_type].from_pretrained(args.model, dtype=torch.float32).eval()
    data = open(args.data, "rb").read()
    if args.max_bytes:
        data = data[: args.max_bytes]
    ids = torch.tensor(list(data), dtype=torch.long)[None, :]
    out = model(ids, labels=ids, use_cache=False)
    loss = out.loss.item()
    import transformers
    print(json.dumps({"loss": loss, "tokens": ids.shape[1] - 1, "data": args.data, "max_bytes": args.max_bytes,
                      "transformers_class": type(model).__name__, "transformers": transformers.__version__,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    sys.exit(main())
