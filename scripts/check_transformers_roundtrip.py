"""Loads a model directory written by `mambakit` into transformers' MambaForCausalLM and prints the mean next-byte
loss (nats) of a file, to compare with `mambakit eval --model DIR --data FILE --json`.

    python3 scripts/check_transformers_roundtrip.py runs/bytes-lm samples/text/ruth.txt [--max-bytes N]

Tests/MambaKitTests/Fixtures/mambakit_saved_transformers.json is this script's output for the committed model
Tests/MambaKitTests/Fixtures/mambakit_saved (saved by `mambakit train`) on the first 2000 bytes of ruth.txt.

Needs torch and transformers (scripts/requirements-fixtures.txt). Runs the pure-PyTorch path on the CPU, over the
whole file in one forward pass (use --max-bytes to cap it), which is what the chunked evaluation must equal.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("USE_HUB_KERNELS", "0")

import torch  # noqa: E402
from transformers import MambaForCausalLM  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--max-bytes", type=int, default=0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = MambaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
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
