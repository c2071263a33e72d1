"""Generate golden test fixtures for MambaKit from the PyTorch reference.

The reference is Hugging Face transformers' ``MambaForCausalLM`` running its
pure-PyTorch ("slow") path on CPU in float32 with a single thread.

Run from the repository root:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py

Everything is written to ``Tests/MambaKitTests/Fixtures/``:

``<case>.json`` / ``<case>.safetensors`` for the cases ``tiny_tied``,
``untied_bias``, ``deep_n16`` and ``rank_wide``:
    The JSON holds the HF config subset, batch/seq_len, the HF loss for
    ``labels=input_ids`` (shifted next-token mean cross-entropy), a record of
    a short AdamW run (hyper-parameters, the loss and the pre-clipping total
    gradient L2 norm before each step, and the names of the parameters that
    are excluded from weight decay) and the library versions.
    The safetensors file (all floats F32) holds ``input_ids`` (I64 [B, L]),
    every parameter under its ``named_parameters()`` name (a tied LM head
    appears only once, as ``backbone.embeddings.weight``), ``logits``
    [B, L, V], ``grad.<name>`` (gradient of the loss at the initial
    parameters, before clipping) and ``final.<name>`` (parameters after the
    AdamW steps).

``hf_tiny/``, ``hf_tiny_f16/``, ``hf_tiny_bf16/``:
    ``save_pretrained`` output (config.json + model.safetensors) of one
    byte-level model in F32, F16 and BF16.
``hf_tiny_expected.json``:
    A text and its loss (UTF-8 bytes as ids, batch 1), a prompt, 24 greedy
    tokens from ``generate`` and the same 24 tokens from an argmax loop over
    full forward passes, and the losses of the F32 model loaded with the F16
    and BF16 weights upcast to F32.
``mamba_ssm_tiny/``:
    The F32 ``hf_tiny`` model in the original ``mamba_ssm`` checkpoint layout
    (``MambaLMHeadModel`` config.json and key names).
``mamba_ssm_pad/`` + ``mamba_ssm_pad_expected.json``:
    A separate small model in ``mamba_ssm`` layout whose config vocabulary
    (61) is not a multiple of ``pad_vocab_size_multiple`` (8); the embedding
    and LM head therefore carry 64 rows. The expected JSON holds the input
    ids and the cross-entropy over the 64-way logits (what a mamba_ssm model
    computes) as well as over the first 61 logits.

Initial parameters are the HF initialisation followed by a deterministic
perturbation (noise on A_log, D, norm weights, dt_proj bias, conv weights and
biases; non-zero in_proj/out_proj biases; dt_proj bias shifted up and x_proj
scaled up so that the time steps, A and the scan are not dwarfed by the D
skip path), so that every term of the forward pass influences the outputs.
``hf_tiny`` is additionally fitted for a few AdamW steps to a short corpus so
that its greedy continuation is varied and free of near-ties.

After writing, the script reloads every file and re-checks the recorded
numbers against a fresh HF model built from the saved weights.
"""

import os
import sys

# Force the pure-PyTorch path: never look up hub kernels, and make the optional
# CUDA packages unimportable even if they happen to be installed.
os.environ["USE_HUB_KERNELS"] = "0"
for _blocked in ("mamba_ssm", "causal_conv1d", "kernels"):
    sys.modules[_blocked] = None

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "MambaKitTests" / "Fixtures"

BASE_SEED = 20240611

CONFIG_KEYS = [
    "vocab_size",
    "hidden_size",
    "state_size",
    "num_hidden_layers",
    "conv_kernel",
    "expand",
    "intermediate_size",
    "time_step_rank",
    "use_conv_bias",
    "use_bias",
    "layer_norm_epsilon",
    "residual_in_fp32",
    "tie_word_embeddings",
]

TRAIN = {
    "lr": 1e-2,
    "betas": [0.9, 0.95],
    "eps": 1e-8,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "steps": 3,
}

CASES = [
    dict(
        name="tiny_tied",
        seq_len=12,
        config=dict(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            state_size=4,
            conv_kernel=4,
            expand=2,
            time_step_rank="auto",
            use_conv_bias=True,
            use_bias=False,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="untied_bias",
        seq_len=9,
        config=dict(
            vocab_size=48,
            hidden_size=24,
            num_hidden_layers=2,
            state_size=8,
            conv_kernel=3,
            expand=1.5,
            time_step_rank=5,
            use_conv_bias=False,
            use_bias=True,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="deep_n16",
        seq_len=16,
        config=dict(
            vocab_size=256,
            hidden_size=32,
            num_hidden_layers=3,
            state_size=16,
            conv_kernel=2,
            expand=2,
            time_step_rank="auto",
            use_conv_bias=True,
            use_bias=False,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="rank_wide",
        seq_len=11,
        config=dict(
            vocab_size=32,
            hidden_size=20,
            num_hidden_layers=1,
            state_size=3,
            conv_kernel=5,
            expand=3,
            time_step_rank=7,
            use_conv_bias=True,
            use_bias=True,
            tie_word_embeddings=False,
        ),
    ),
]

HF_TINY_CONFIG = dict(
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=2,
    state_size=8,
    conv_kernel=4,
    expand=2,
    tie_word_embeddings=True,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
HF_TINY_TEXT = "Mamba reads bytes: the quick brown fox jumps over 13 lazy dogs."
# hf_tiny is fitted briefly to this corpus so that greedy decoding produces a
# varied continuation with clear argmax margins (a random model repeats one
# byte with near-ties, which makes a fragile generation test).
HF_TINY_CORPUS = (
    "Hello, Mamba! Selective state spaces scan the sequence one step at a time. "
    "Hello, Mamba! The state decays and the input is gated."
)
HF_TINY_FIT_STEPS = 50
MIN_ARGMAX_MARGIN = 0.05
HF_TINY_PROMPT = "Hello, Mamba"
HF_TINY_NEW_TOKENS = 24

PAD_VOCAB = 61
PAD_MULTIPLE = 8
PAD_CONFIG = dict(
    hidden_size=16,
    num_hidden_layers=2,
    state_size=4,
    conv_kernel=4,
    expand=2,
    tie_word_embeddings=True,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def setup_determinism():
    torch.manual_seed(BASE_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def make_config(**kwargs):
    """Build a MambaConfig on the pure-torch path.

    Recent transformers releases declare ``expand`` as an int and validate it,
    while the architecture itself only needs ``intermediate_size``. A
    fractional ``expand`` is therefore applied after construction, mirroring
    what ``__post_init__`` does (``intermediate_size = int(expand * hidden)``).
    """
    kwargs = dict(kwargs)
    kwargs.setdefault("use_mambapy", False)
    expand = kwargs.pop("expand", 2)
    fractional = not float(expand).is_integer()
    config = MambaConfig(expand=2 if fractional else int(expand), **kwargs)
    if fractional:
        object.__setattr__(config, "expand", float(expand))
        object.__setattr__(config, "intermediate_size", int(expand * config.hidden_size))
    return config


def config_subset(config):
    d = config.to_dict()
    return {k: d[k] for k in CONFIG_KEYS}


@torch.no_grad()
def perturb(model, gen):
    """Move every parameter away from its initialisation, deterministically."""

    def noise(p, std):
        return torch.randn(p.shape, generator=gen, dtype=torch.float32) * std

    for name, p in model.named_parameters():
        if name.endswith("mixer.A_log"):
            p.add_(noise(p, 0.2))
        elif name.endswith("mixer.D"):
            p.add_(noise(p, 0.3))
        elif "norm" in name:
            p.add_(noise(p, 0.2))
        elif name.endswith("dt_proj.bias"):
            # HF draws softplus(bias) in [1e-3, 1e-1]; shift it up so that the
            # time steps (and with them A and the state decay) matter.
            p.add_(3.0 + noise(p, 0.3))
        elif name.endswith("conv1d.weight"):
            p.mul_(1.0 + noise(p, 0.2)).add_(noise(p, 0.1 * float(p.std())))
        elif name.endswith("conv1d.bias"):
            p.add_(noise(p, 0.2))
        elif name.endswith("in_proj.bias") or name.endswith("out_proj.bias"):
            p.add_(noise(p, 0.1))
        elif name.endswith("x_proj.weight"):
            # larger B, C and time-step inputs so the scan is not dwarfed by D
            p.mul_(2.5 * (1.0 + noise(p, 0.1)))
        elif name.endswith("dt_proj.weight"):
            p.mul_(1.0 + noise(p, 0.1))
        # embeddings, lm_head, in_proj/out_proj weights are already random
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise RuntimeError(f"non-finite parameter after perturbation: {name}")
        if name.endswith(".bias") and bool((p == 0).any()):
            raise RuntimeError(f"zero bias entry after perturbation: {name}")


def build_model(config, seed):
    torch.manual_seed(seed)
    model = MambaForCausalLM(config)
    model.float()
    gen = torch.Generator().manual_seed(seed + 1)
    perturb(model, gen)
    return model


def hf_loss(model, input_ids):
    out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    return out.loss, out.logits


def no_decay_name(name):
    return (
        "norm" in name
        or name.endswith(".bias")
        or name.endswith("A_log")
        or name.endswith("mixer.D")
    )


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_tensors(path, tensors):
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(path),
        metadata={"format": "pt"},
    )


def keep_only(directory, names):
    for entry in Path(directory).iterdir():
        if entry.name not in names:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


# --------------------------------------------------------------------------- #
# training cases
# --------------------------------------------------------------------------- #


def train(model, input_ids, exclude_from_decay=None):
    """Run the recorded AdamW steps in place; return what the fixtures store. ``exclude_from_decay(name)`` picks the
    parameters without weight decay (default: this script's ``no_decay_name``)."""
    exclude_from_decay = exclude_from_decay or no_decay_name
    model.train()
    named = list(model.named_parameters())
    decay = [p for n, p in named if not exclude_from_decay(n)]
    no_decay = [p for n, p in named if exclude_from_decay(n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": TRAIN["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=TRAIN["lr"],
        betas=tuple(TRAIN["betas"]),
        eps=TRAIN["eps"],
        foreach=False,
    )
    params = [p for _, p in named]

    losses, grad_norms = [], []
    logits0 = grads0 = None
    for step in range(TRAIN["steps"]):
        opt.zero_grad(set_to_none=True)
        loss, logits = hf_loss(model, input_ids)
        loss.backward()
        if step == 0:
            logits0 = logits.detach().clone()
            grads0 = {n: p.grad.detach().clone() for n, p in named}
        total_norm = torch.nn.utils.clip_grad_norm_(params, TRAIN["max_grad_norm"])
        losses.append(float(loss.item()))
        grad_norms.append(float(total_norm.item()))
        opt.step()
    return losses, grad_norms, logits0, grads0


def run_case(case, index):
    seed = BASE_SEED + 1000 * (index + 1)
    config = make_config(**case["config"])
    model = build_model(config, seed)

    batch, seq_len, vocab = 2, case["seq_len"], config.vocab_size
    gen = torch.Generator().manual_seed(seed + 2)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=gen, dtype=torch.int64)

    named = list(model.named_parameters())
    initial = {n: p.detach().clone() for n, p in named}
    no_decay_names = [n for n, _ in named if no_decay_name(n)]
    losses, grad_norms, logits0, grads0 = train(model, input_ids)

    if not torch.isfinite(logits0).all() or float(logits0.abs().max()) > 30:
        raise RuntimeError(f"{case['name']}: logits out of range")

    tensors = {"input_ids": input_ids, "logits": logits0}
    for n, _ in named:
        tensors[n] = initial[n]
    for n, _ in named:
        tensors[f"grad.{n}"] = grads0[n]
    for n, p in named:
        tensors[f"final.{n}"] = p.detach()
    save_tensors(OUT / f"{case['name']}.safetensors", tensors)

    write_json(
        OUT / f"{case['name']}.json",
        {
            "config": config_subset(config),
            "batch": batch,
            "seq_len": seq_len,
            "loss": losses[0],
            "train": {**TRAIN, "losses": losses, "grad_norms": grad_norms, "no_decay": no_decay_names},
            "versions": versions(),
        },
    )
    print(f"{case['name']}: loss {losses[0]:.6f} -> {losses[-1]:.6f}, |g| {grad_norms}, max|logit| "
          f"{float(logits0.abs().max()):.3f}")


# --------------------------------------------------------------------------- #
# hf_tiny and friends
# --------------------------------------------------------------------------- #


def text_ids(text):
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.int64)


@torch.no_grad()
def greedy_manual(model, prompt_ids, n):
    """Argmax loop over full (uncached) forward passes; also returns margins."""
    ids = prompt_ids.clone()
    new, margins = [], []
    for _ in range(n):
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        nxt = int(torch.argmax(logits).item())
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], dtype=torch.int64)], dim=1)
    return new, margins


def fit(model, text, steps):
    """A few plain AdamW steps on one byte string (no weight decay)."""
    ids = text_ids(text)
    opt = torch.optim.AdamW(
        model.parameters(), lr=TRAIN["lr"], betas=tuple(TRAIN["betas"]), eps=TRAIN["eps"],
        weight_decay=0.0, foreach=False,
    )
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, _ = hf_loss(model, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), TRAIN["max_grad_norm"])
        opt.step()
    model.eval()


def save_hf(model, directory):
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(directory)
    keep_only(directory, {"config.json", "model.safetensors"})


@torch.no_grad()
def loss_with_upcast_weights(reference, directory, input_ids):
    model = copy.deepcopy(reference)
    state = load_file(str(Path(directory) / "model.safetensors"))
    upcast = {k: v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(upcast, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"weight mismatch in {directory}: {missing} {unexpected}")
    if model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr():
        raise RuntimeError("tied head lost while loading upcast weights")
    model.eval()
    loss, _ = hf_loss(model, input_ids)
    return float(loss.item())


def mamba_ssm_state_dict(model, padded_vocab):
    """Rename HF MambaForCausalLM weights to mamba_ssm's MambaLMHeadModel keys."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "backbone.embeddings.weight":
            name = "backbone.embedding.weight"
        out[name] = tensor.detach().clone()
    emb = out["backbone.embedding.weight"]
    if emb.shape[0] != padded_vocab:
        raise RuntimeError("embedding rows do not match the padded vocabulary")
    out["lm_head.weight"] = emb.clone()
    return out


def mamba_ssm_config(config, vocab_size):
    expand = config.intermediate_size / config.hidden_size
    return {
        "d_model": config.hidden_size,
        "d_intermediate": 0,
        "n_layer": config.num_hidden_layers,
        "vocab_size": vocab_size,
        "ssm_cfg": {
            "d_state": config.state_size,
            "d_conv": config.conv_kernel,
            "expand": int(expand) if float(expand).is_integer() else expand,
        },
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": PAD_MULTIPLE,
        "tie_embeddings": True,
    }


def write_mamba_ssm(directory, config_json, state):
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    write_json(directory / "config.json", config_json)
    save_tensors(directory / "model.safetensors", state)


def run_hf_tiny():
    seed = BASE_SEED + 50_000
    config = make_config(**HF_TINY_CONFIG)
    model = build_model(config, seed)
    fit(model, HF_TINY_CORPUS, HF_TINY_FIT_STEPS)
    model.eval()
    if model.lm_head.weight is not model.backbone.embeddings.weight:
        raise RuntimeError("hf_tiny head is not tied")

    save_hf(model, OUT / "hf_tiny")

    ids = text_ids(HF_TINY_TEXT)
    with torch.no_grad():
        loss, _ = hf_loss(model, ids)
    prompt_ids = text_ids(HF_TINY_PROMPT)
    with torch.no_grad():
        generated = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=HF_TINY_NEW_TOKENS,
            min_new_tokens=HF_TINY_NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=None,
        )
    greedy = generated[0, prompt_ids.shape[1]:].tolist()
    manual, margins = greedy_manual(model, prompt_ids, HF_TINY_NEW_TOKENS)
    if min(margins) < MIN_ARGMAX_MARGIN:
        raise RuntimeError(f"greedy decoding has a near-tie (margin {min(margins)})")
    if len(greedy) != HF_TINY_NEW_TOKENS:
        raise RuntimeError(f"generate stopped early: {len(greedy)} tokens")
    if greedy != manual:
        raise RuntimeError(f"generate and manual argmax disagree:\n{greedy}\n{manual}")

    save_hf(copy.deepcopy(model).half(), OUT / "hf_tiny_f16")
    save_hf(copy.deepcopy(model).to(torch.bfloat16), OUT / "hf_tiny_bf16")
    loss_f16 = loss_with_upcast_weights(model, OUT / "hf_tiny_f16", ids)
    loss_bf16 = loss_with_upcast_weights(model, OUT / "hf_tiny_bf16", ids)

    write_mamba_ssm(
        OUT / "mamba_ssm_tiny",
        mamba_ssm_config(config, config.vocab_size),
        mamba_ssm_state_dict(model, config.vocab_size),
    )

    write_json(
        OUT / "hf_tiny_expected.json",
        {
            "text": HF_TINY_TEXT,
            "loss": float(loss.item()),
            "prompt": HF_TINY_PROMPT,
            "prompt_ids": prompt_ids[0].tolist(),
            "greedy": greedy,
            "greedy_manual": manual,
            "loss_f16_upcast": loss_f16,
            "loss_bf16_upcast": loss_bf16,
            "versions": versions(),
        },
    )
    print(f"hf_tiny: loss {loss.item():.6f} f16 {loss_f16:.6f} bf16 {loss_bf16:.6f} "
          f"greedy {bytes(greedy)!r} min margin {min(margins):.3f}")


def run_mamba_ssm_pad():
    seed = BASE_SEED + 60_000
    padded = PAD_MULTIPLE * math.ceil(PAD_VOCAB / PAD_MULTIPLE)
    # The model is built with the padded vocabulary: rows PAD_VOCAB.. are the
    # padding rows that mamba_ssm appends (random, like an untrained row).
    config = make_config(vocab_size=padded, **PAD_CONFIG)
    model = build_model(config, seed)
    model.eval()

    gen = torch.Generator().manual_seed(seed + 2)
    input_ids = torch.randint(0, PAD_VOCAB, (2, 12), generator=gen, dtype=torch.int64)
    with torch.no_grad():
        loss, logits = hf_loss(model, input_ids)
        shift_logits = logits[:, :-1, :PAD_VOCAB].reshape(-1, PAD_VOCAB)
        loss_first = F.cross_entropy(shift_logits, input_ids[:, 1:].reshape(-1))

    # As in released mamba_ssm checkpoints, config.json keeps the unpadded
    # vocabulary size; the loader pads it up to pad_vocab_size_multiple.
    write_mamba_ssm(
        OUT / "mamba_ssm_pad",
        mamba_ssm_config(config, PAD_VOCAB),
        mamba_ssm_state_dict(model, padded),
    )
    write_json(
        OUT / "mamba_ssm_pad_expected.json",
        {
            "config_vocab_size": PAD_VOCAB,
            "padded_vocab_size": padded,
            "input_ids": input_ids.tolist(),
            "loss": float(loss.item()),
            "loss_first_61": float(loss_first.item()),
            "versions": versions(),
        },
    )
    print(f"mamba_ssm_pad: loss(64-way) {loss.item():.6f} loss(61-way) {loss_first.item():.6f}")


# --------------------------------------------------------------------------- #
# verification
# --------------------------------------------------------------------------- #


def check_close(what, got, want, tol=1e-6):
    if abs(got - want) > tol * max(1.0, abs(want)):
        raise RuntimeError(f"{what}: {got} != {want}")


def model_from_fixture(config_subset_dict, tensors, prefix=""):
    cfg = dict(config_subset_dict)
    cfg.pop("intermediate_size")
    config = make_config(**cfg)
    if config.intermediate_size != config_subset_dict["intermediate_size"]:
        raise RuntimeError("intermediate_size mismatch")
    model = MambaForCausalLM(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[prefix + n])
    return model


def verify():
    for case in CASES:
        meta = json.loads((OUT / f"{case['name']}.json").read_text())
        tensors = load_file(str(OUT / f"{case['name']}.safetensors"))
        for k, v in tensors.items():
            want = torch.int64 if k == "input_ids" else torch.float32
            if v.dtype != want:
                raise RuntimeError(f"{case['name']}:{k} has dtype {v.dtype}")
        ids = tensors["input_ids"]
        assert list(ids.shape) == [meta["batch"], meta["seq_len"]]
        model = model_from_fixture(meta["config"], tensors)
        names = [n for n, _ in model.named_parameters()]
        expected_keys = {"input_ids", "logits"} | set(names) | {f"grad.{n}" for n in names} | {
            f"final.{n}" for n in names
        }
        if set(tensors) != expected_keys:
            raise RuntimeError(f"{case['name']}: key set mismatch {set(tensors) ^ expected_keys}")
        model.train()
        loss, logits = hf_loss(model, ids)
        check_close(f"{case['name']} loss", float(loss.item()), meta["loss"])
        check_close(f"{case['name']} train.losses[0]", float(loss.item()), meta["train"]["losses"][0])
        if not torch.equal(logits, tensors["logits"]):
            raise RuntimeError(f"{case['name']}: logits differ")
        # HF's loss is the mean next-token cross-entropy over B * (L - 1) positions
        vocab = meta["config"]["vocab_size"]
        manual = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        check_close(f"{case['name']} shifted CE", float(manual.item()), meta["loss"])
        loss.backward()
        for n, p in model.named_parameters():
            if not torch.equal(p.grad, tensors[f"grad.{n}"]):
                raise RuntimeError(f"{case['name']}: grad.{n} differs")
        # the cached inference path must agree with the training path
        model.eval()
        with torch.no_grad():
            cached = model(input_ids=ids, use_cache=True).logits
        torch.testing.assert_close(cached, tensors["logits"], rtol=1e-5, atol=1e-5)
        # re-running the training from the stored parameters must reproduce it
        again = model_from_fixture(meta["config"], tensors)
        losses, grad_norms, _, _ = train(again, ids)
        if losses != meta["train"]["losses"] or grad_norms != meta["train"]["grad_norms"]:
            raise RuntimeError(f"{case['name']}: training record differs")
        for n, p in again.named_parameters():
            if not torch.equal(p.detach(), tensors[f"final.{n}"]):
                raise RuntimeError(f"{case['name']}: final.{n} differs")
            if torch.equal(tensors[n], tensors[f"final.{n}"]):
                raise RuntimeError(f"{case['name']}: {n} did not move")
        if meta["train"]["no_decay"] != [n for n in names if no_decay_name(n)]:
            raise RuntimeError(f"{case['name']}: no_decay list differs")
        print(f"verified {case['name']} ({len(tensors)} tensors)")

    # hf_tiny via from_pretrained
    expected = json.loads((OUT / "hf_tiny_expected.json").read_text())
    ids = text_ids(expected["text"])
    reloaded = MambaForCausalLM.from_pretrained(OUT / "hf_tiny", dtype=torch.float32)
    reloaded.eval()
    with torch.no_grad():
        loss, _ = hf_loss(reloaded, ids)
    check_close("hf_tiny loss", float(loss.item()), expected["loss"])
    for sub, key in (("hf_tiny_f16", "loss_f16_upcast"), ("hf_tiny_bf16", "loss_bf16_upcast")):
        m = MambaForCausalLM.from_pretrained(OUT / sub, dtype=torch.float32)
        m.eval()
        with torch.no_grad():
            l, _ = hf_loss(m, ids)
        check_close(f"{sub} loss", float(l.item()), expected[key])
    manual, _ = greedy_manual(reloaded, torch.tensor([expected["prompt_ids"]]), HF_TINY_NEW_TOKENS)
    if manual != expected["greedy"]:
        raise RuntimeError("hf_tiny greedy tokens differ after reload")

    # mamba_ssm copies: map back to HF names and recompute
    pad_expected = json.loads((OUT / "mamba_ssm_pad_expected.json").read_text())
    for sub, check_ids, want in (
        ("mamba_ssm_tiny", ids, expected["loss"]),
        ("mamba_ssm_pad", torch.tensor(pad_expected["input_ids"]), pad_expected["loss"]),
    ):
        cfg = json.loads((OUT / sub / "config.json").read_text())
        state = load_file(str(OUT / sub / "model.safetensors"))
        rows = state["backbone.embedding.weight"].shape[0]
        mult = cfg["pad_vocab_size_multiple"]
        if rows != mult * math.ceil(cfg["vocab_size"] / mult):
            raise RuntimeError(f"{sub}: embedding rows {rows} vs config {cfg['vocab_size']}")
        if not torch.equal(state["lm_head.weight"], state["backbone.embedding.weight"]):
            raise RuntimeError(f"{sub}: lm_head is not a copy of the embedding")
        hf_cfg = make_config(
            vocab_size=rows,
            hidden_size=cfg["d_model"],
            num_hidden_layers=cfg["n_layer"],
            state_size=cfg["ssm_cfg"]["d_state"],
            conv_kernel=cfg["ssm_cfg"]["d_conv"],
            expand=cfg["ssm_cfg"]["expand"],
            tie_word_embeddings=True,
        )
        m = MambaForCausalLM(hf_cfg)
        hf_state = {
            ("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v
            for k, v in state.items()
            if k != "lm_head.weight"
        }
        missing, unexpected = m.load_state_dict(hf_state, strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:
            raise RuntimeError(f"{sub}: {missing} {unexpected}")
        m.eval()
        with torch.no_grad():
            got, _ = hf_loss(m, check_ids)
        check_close(f"{sub} loss", float(got.item()), want)
        print(f"verified {sub}")

    total = 0
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            size = path.stat().st_size
            total += size
            if size > 1_000_000:
                raise RuntimeError(f"{path} is larger than 1 MB")
    print(f"total fixture size: {total} bytes")


def main():
    setup_determinism()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"safetensors {safetensors.__version__}, numpy {numpy.__version__}")
    for index, case in enumerate(CASES):
        run_case(case, index)
    run_hf_tiny()
    run_mamba_ssm_pad()
    verify()


if __name__ == "__main__":
    main()
