"""Generate golden test fixtures for MambaKit's Mamba-2 and hybrid (NemotronH) blocks from the PyTorch reference.

The references are Hugging Face transformers' ``Mamba2ForCausalLM`` and ``NemotronHForCausalLM`` running their
pure-PyTorch paths on CPU in float32 with a single thread (no hub kernels, no ``mamba_ssm`` / ``causal_conv1d``;
attention through the ``eager`` implementation). The Mamba-1 fixtures come from ``scripts/make_fixtures.py``, whose
helpers and training hyper-parameters this script shares.

Run from the repository root:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures_blocks.py

Everything is written to ``Tests/MambaKitTests/Fixtures/``:

``<case>.json`` / ``<case>.safetensors`` for the cases ``mamba2_g1``, ``mamba2_g2``, ``nemotron_h_mix`` and
``nemotron_h_attn`` (the same format as make_fixtures.py's training cases):
    The JSON holds ``hf_config`` (the complete config.json that ``save_pretrained`` writes for the model, to be parsed
    like any config.json), ``config`` (a flat subset of it), ``model_type``, ``pattern`` (the stack in the notation
    of DESIGN.md §3: ``M`` Mamba-2, ``*`` attention, ``-`` MLP), batch/seq_len, the HF loss for
    ``labels=input_ids`` (shifted next-token mean cross-entropy over B * (L - 1) positions), a record of a short
    AdamW run (hyper-parameters, the loss and the pre-clipping total gradient L2 norm before each step, and the names
    of the parameters excluded from weight decay: norms including the mixers' gated norms, biases, A_log, D and
    dt_bias), ``checkpoint_keys`` (each parameter name -> the key ``save_pretrained`` writes it under; NemotronH's
    module tree says ``model.`` where its checkpoints say ``backbone.``), ``dt_clamped_fraction`` (per Mamba-2
    layer, the fraction of time steps the dt clamp changes at the stored parameters) and the library versions.
    The safetensors file (all floats F32) holds ``input_ids`` (I64 [B, L]), every parameter under its
    ``named_parameters()`` name (a tied LM head appears only once, as the embedding), ``logits`` [B, L, V],
    ``grad.<name>`` (gradient of the loss at the initial parameters, before clipping) and ``final.<name>``
    (parameters after the AdamW steps).

``hf_mamba2_tiny/`` + ``hf_mamba2_tiny_expected.json``, ``hf_nemotron_h_tiny/`` + ``hf_nemotron_h_tiny_expected.json``:
    ``save_pretrained`` output (config.json + model.safetensors, F32) of two byte-level models, fitted for a few AdamW
    steps to a short corpus so that greedy decoding is varied and free of near-ties. The expected JSON holds a text
    and its loss (UTF-8 bytes as ids, batch 1), a prompt, 24 greedy tokens from ``generate`` (use_cache=True: the
    recurrent step and the KV cache) and the same 24 tokens from an argmax loop over full forward passes.
``mamba_ssm_mamba2_tiny/``:
    The ``hf_mamba2_tiny`` weights in the original ``mamba_ssm`` layout of a Mamba-2 ``MambaLMHeadModel``
    (config.json with ``ssm_cfg.layer = "Mamba2"``; keys ``backbone.embedding.weight``, ``lm_head.weight`` a copy of
    it, everything else as in the HF checkpoint).

Initial parameters are the HF initialisation followed by a deterministic perturbation so that every term of the
forward pass influences the outputs: matrices rescaled to a 1/sqrt(fan_in) scale (transformers' tiny inits make
blocks near-identities), noise on A_log, D, every norm weight (including the mixers' gated norms), conv weights and
biases, non-zero projection biases, dt_bias shifted up so that dt is not negligible, the B/C rows of in_proj scaled
up so that the scan is not dwarfed by the D skip path, and q/k scaled up so attention is not uniform. Two cases
make the dt clamp bind: ``mamba2_g2`` has a finite ``time_step_limit``, and ``nemotron_h_mix`` a ``time_step_min``
that some time steps fall below (transformers' NemotronH clamps dt to [time_step_min, inf) and ignores
``time_step_limit``).

After writing, the script reloads every file, re-checks the recorded numbers against fresh HF models built from the
saved config and weights, and runs an independent float64 sequential reference (the recurrence of DESIGN.md §3, not
transformers' chunked code) on every case and saved model, asserting that its logits match transformers' and that
the features the fixtures pin (per-group gated norm, the dt clamp, the GQA head-to-KV mapping) change the result.
"""

import os
import sys
from pathlib import Path

# Force the pure-PyTorch path: never look up hub kernels, and make the optional CUDA packages unimportable even if
# they happen to be installed (make_fixtures.py does the same on import).
os.environ["USE_HUB_KERNELS"] = "0"
for _blocked in ("mamba_ssm", "causal_conv1d", "kernels"):
    sys.modules[_blocked] = None
sys.path.insert(0, str(Path(__file__).resolve().parent))

import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
)
from transformers.models.mamba2 import modeling_mamba2  # noqa: E402
from transformers.models.nemotron_h import modeling_nemotron_h  # noqa: E402

from make_fixtures import (  # noqa: E402
    BASE_SEED,
    HF_TINY_CORPUS,
    HF_TINY_FIT_STEPS,
    HF_TINY_NEW_TOKENS,
    HF_TINY_PROMPT,
    HF_TINY_TEXT,
    MIN_ARGMAX_MARGIN,
    TRAIN,
    check_close,
    fit,
    greedy_manual,
    hf_loss,
    save_hf,
    save_tensors,
    setup_determinism,
    text_ids,
    versions,
    write_json,
)
from make_fixtures import train as make_fixtures_train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "MambaKitTests" / "Fixtures"

SEED = BASE_SEED + 100_000

PATTERN_TO_TYPE = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
TYPE_TO_PATTERN = {v: k for k, v in PATTERN_TO_TYPE.items()}

NO_SPECIAL_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)

MAMBA2_SUBSET = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "expand", "n_groups", "state_size",
    "conv_kernel", "chunk_size", "use_conv_bias", "use_bias", "time_step_limit", "layer_norm_epsilon",
    "residual_in_fp32", "tie_word_embeddings",
]
NEMOTRON_H_SUBSET = [
    "vocab_size", "hidden_size", "layers_block_type", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "mlp_hidden_act", "mlp_bias", "mamba_num_heads", "mamba_head_dim", "n_groups",
    "ssm_state_size", "conv_kernel", "chunk_size", "use_conv_bias", "use_bias", "time_step_min", "time_step_limit",
    "layer_norm_epsilon", "tie_word_embeddings",
]

CASES = [
    dict(
        name="mamba2_g1",
        kind="mamba2",
        seq_len=13,
        config=dict(
            vocab_size=32,
            hidden_size=16,
            num_hidden_layers=2,
            num_heads=4,
            head_dim=8,
            expand=2,
            n_groups=1,
            state_size=8,
            conv_kernel=4,
            chunk_size=8,
            use_conv_bias=False,
            use_bias=False,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="mamba2_g2",
        kind="mamba2",
        seq_len=11,
        config=dict(
            vocab_size=32,
            hidden_size=12,
            num_hidden_layers=2,
            num_heads=4,
            head_dim=6,
            expand=2,
            n_groups=2,
            state_size=5,
            conv_kernel=3,
            chunk_size=4,
            use_conv_bias=True,
            use_bias=True,
            # binds at both ends for some of the perturbed time steps
            time_step_limit=(0.05, 1.0),
            tie_word_embeddings=False,
        ),
        dt_shift=3.0,
    ),
    dict(
        name="nemotron_h_mix",
        kind="nemotron_h",
        seq_len=11,
        pattern="M-M*-",
        config=dict(
            vocab_size=32,
            hidden_size=16,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=24,
            mamba_num_heads=4,
            mamba_head_dim=8,
            n_groups=2,
            ssm_state_size=4,
            conv_kernel=4,
            chunk_size=4,
            # NemotronH's mixer clamps dt to [time_step_min, inf): some perturbed time steps fall below this
            time_step_min=0.1,
        ),
        dt_shift=1.0,
    ),
    dict(
        name="nemotron_h_attn",
        kind="nemotron_h",
        seq_len=9,
        pattern="*-*-",
        config=dict(
            vocab_size=32,
            hidden_size=16,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=4,
            intermediate_size=20,
            mlp_bias=True,
        ),
    ),
]

HF_MAMBA2_TINY_CONFIG = dict(
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=2,
    num_heads=4,
    head_dim=16,
    expand=2,
    n_groups=2,
    state_size=16,
    conv_kernel=4,
    chunk_size=16,
    tie_word_embeddings=True,
)
HF_NEMOTRON_H_TINY_PATTERN = "M-*-M-"
HF_NEMOTRON_H_TINY_CONFIG = dict(
    vocab_size=256,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    mamba_num_heads=4,
    mamba_head_dim=16,
    n_groups=2,
    ssm_state_size=16,
    conv_kernel=4,
    chunk_size=16,
)

# keeps every time step of the fitted model above time_step_min (1e-3), where NemotronH's clamp would bind in the
# full forward but not in generate's recurrent step
HF_NEMOTRON_H_TINY_DT_SHIFT = 3.0

# mamba_ssm copy of hf_mamba2_tiny
MAMBA_SSM_PAD_MULTIPLE = 8

# perturbation of the Mamba-2 mixers (see perturb)
BC_SCALE = 2.0
DT_SHIFT = 2.0

MAX_CASE_BYTES = 300_000
MAX_TOTAL_BYTES = 3_000_000
REFERENCE_ATOL = 2e-5

# The torch functions the two modeling files may swap for kernels; all must stay the reference PyTorch ones.
KERNELIZED = ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_split_conv1d_scan_combined",
              "mamba2_selective_state_update", "mamba2_chunk_scan")


# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #


def assert_pure_torch():
    for module in (modeling_mamba2, modeling_nemotron_h):
        for fn in KERNELIZED:
            nonlocals = inspect.getclosurevars(getattr(module, fn)).nonlocals
            if nonlocals.get("is_new_implementation", True):
                raise RuntimeError(f"{module.__name__}.{fn} is not the reference PyTorch implementation")


def make_config(kind, config, pattern=None):
    kwargs = dict(config)
    for k, v in NO_SPECIAL_TOKENS.items():
        kwargs.setdefault(k, v)
    if kind == "mamba2":
        return Mamba2Config(**kwargs)
    kwargs["layers_block_type"] = [PATTERN_TO_TYPE[c] for c in pattern]
    return NemotronHConfig(attn_implementation="eager", **kwargs)


def model_class(kind):
    return Mamba2ForCausalLM if kind == "mamba2" else NemotronHForCausalLM


def pattern_of(hf_config):
    if hf_config["model_type"] == "mamba2":
        return "M" * hf_config["num_hidden_layers"]
    return "".join(TYPE_TO_PATTERN[t] for t in hf_config["layers_block_type"])


def mixer_dims(model):
    """(ED, G*N, H) of the Mamba-2 mixers."""
    c = model.config
    if c.model_type == "mamba2":
        return c.num_heads * c.head_dim, c.n_groups * c.state_size, c.num_heads
    return c.mamba_num_heads * c.mamba_head_dim, c.n_groups * c.ssm_state_size, c.mamba_num_heads


@torch.no_grad()
def perturb(model, gen, dt_shift=None):
    """Move every parameter away from its initialisation, deterministically (see the module docstring)."""
    dt_shift = DT_SHIFT if dt_shift is None else dt_shift

    def noise(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    ed, gn, _ = mixer_dims(model)
    for name, p in model.named_parameters():
        if name.endswith("mixer.A_log"):
            p.add_(noise(p.shape, 0.2))
        elif name.endswith("mixer.D"):
            p.add_(noise(p.shape, 0.3))
        elif name.endswith("mixer.dt_bias"):
            # transformers draws softplus(dt_bias) in [time_step_min, time_step_max] (1e-3..0.1 by default):
            # shift it up so that exp(dt * A) is well inside (0, 1) and the state matters.
            p.add_(dt_shift + noise(p.shape, 0.3))
        elif "norm" in name:
            # block norms, norm_f and the mixers' gated norms
            p.add_(noise(p.shape, 0.2))
        elif name.endswith("conv1d.weight"):
            k = p.shape[-1]
            p.mul_((1.0 / math.sqrt(k)) / float(p.std())).mul_(1.0 + noise(p.shape, 0.2)).add_(noise(p.shape, 0.05))
        elif name.endswith(".bias"):
            p.add_(noise(p.shape, 0.2 if name.endswith("conv1d.bias") else 0.1))
        elif p.dim() == 2:
            if name.endswith("embeddings.weight"):
                target = 0.5
            else:
                target = 1.0 / math.sqrt(p.shape[1])
            p.mul_(target / float(p.std())).mul_(1.0 + noise(p.shape, 0.1))
            if name.endswith("mixer.in_proj.weight"):
                # rows [z (ED), x (ED), B (GN), C (GN), dt (H)]: larger B and C so the scan is not dwarfed by D
                p[2 * ed: 2 * ed + 2 * gn].mul_(BC_SCALE)
            elif name.endswith("q_proj.weight") or name.endswith("k_proj.weight"):
                p.mul_(1.8)
        else:
            raise RuntimeError(f"no perturbation rule for {name}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise RuntimeError(f"non-finite parameter after perturbation: {name}")
        if name.endswith(".bias") and bool((p == 0).any()):
            raise RuntimeError(f"zero bias entry after perturbation: {name}")
        if "norm" in name and bool((p == 1).all()):
            raise RuntimeError(f"norm weight left at its initialisation: {name}")


def build_model(kind, config, seed, dt_shift=None):
    torch.manual_seed(seed)
    model = model_class(kind)(config)
    model.float()
    perturb(model, torch.Generator().manual_seed(seed + 1), dt_shift)
    return model


def no_decay_name(name):
    return (
        "norm" in name
        or name.endswith(".bias")
        or name.endswith("mixer.A_log")
        or name.endswith("mixer.D")
        or name.endswith("mixer.dt_bias")
    )


def train(model, input_ids):
    """make_fixtures.train with this script's weight-decay groups (dt_bias is not decayed either)."""
    return make_fixtures_train(model, input_ids, exclude_from_decay=no_decay_name)


def saved_config_and_keys(model):
    """The config.json dict and the safetensors keys that save_pretrained writes for this model."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        hf_config = json.loads((Path(tmp) / "config.json").read_text())
        with safetensors.safe_open(str(Path(tmp) / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
    return hf_config, keys


def checkpoint_keys(model, saved_keys):
    """Map each named_parameters() name to its save_pretrained key (tied duplicates are saved once)."""
    mapping = {}
    for name, _ in model.named_parameters():
        key = re.sub(r"^model\.", "backbone.", name)
        if key not in saved_keys:
            raise RuntimeError(f"{name} saved under an unexpected key")
        mapping[name] = key
    if set(mapping.values()) != saved_keys:
        raise RuntimeError(f"save_pretrained keys differ: {set(mapping.values()) ^ saved_keys}")
    return mapping


# --------------------------------------------------------------------------- #
# independent reference (float64, sequential, from the maths of DESIGN.md §3)
# --------------------------------------------------------------------------- #


def decode_float(v):
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"])
    return float(v)


def spec_from_hf_config(cfg):
    """What the reference needs, read from a config.json dict exactly as a loader would."""
    if cfg["model_type"] == "mamba2":
        lo, hi = (decode_float(v) for v in cfg["time_step_limit"])
        return dict(
            pattern="M" * cfg["num_hidden_layers"],
            eps=cfg["layer_norm_epsilon"],
            heads=cfg["num_heads"], head_dim=cfg["head_dim"], groups=cfg["n_groups"], state=cfg["state_size"],
            gated_eps=cfg["layer_norm_epsilon"], dt_min=lo, dt_max=hi,
            tied=cfg["tie_word_embeddings"],
        )
    if cfg["model_type"] == "nemotron_h":
        if cfg["mlp_hidden_act"] != "relu2":
            raise RuntimeError("the reference only knows relu2 MLPs")
        return dict(
            pattern=pattern_of(cfg),
            eps=cfg["layer_norm_epsilon"],
            heads=cfg["mamba_num_heads"], head_dim=cfg["mamba_head_dim"], groups=cfg["n_groups"],
            state=cfg["ssm_state_size"], gated_eps=cfg["layer_norm_epsilon"],
            # transformers' NemotronHMamba2Mixer: time_step_limit = (time_step_min, inf)
            dt_min=cfg["time_step_min"], dt_max=math.inf,
            attn_heads=cfg["num_attention_heads"], kv_heads=cfg["num_key_value_heads"], attn_head_dim=cfg["head_dim"],
            # NemotronHForCausalLM never ties the head (its _tied_weights_keys is empty)
            tied=False,
        )
    raise RuntimeError(f"unknown model_type {cfg['model_type']}")


def spec_from_mamba_ssm_config(cfg):
    ssm = cfg["ssm_cfg"]
    if ssm.get("layer") != "Mamba2" or cfg.get("d_intermediate", 0) != 0 or cfg.get("attn_layer_idx"):
        raise RuntimeError("the reference only knows pure Mamba-2 mamba_ssm models")
    d_inner = ssm.get("expand", 2) * cfg["d_model"]
    headdim = ssm.get("headdim", 64)
    lo, hi = ssm.get("dt_limit", (0.0, math.inf))
    return dict(
        pattern="M" * cfg["n_layer"],
        eps=1e-5,  # MixerModel's norm_epsilon default (not in config.json)
        heads=d_inner // headdim, head_dim=headdim, groups=ssm.get("ngroups", 1), state=ssm.get("d_state", 128),
        gated_eps=1e-5,  # mamba_ssm Mamba2: RMSNormGated(d_ssm, eps=1e-5, group_size=d_ssm // ngroups)
        dt_min=lo, dt_max=hi,
        tied=cfg.get("tie_embeddings", True),
    )


def neutral_params(tensors, layout):
    """Strip the backbone prefix: 'embeddings.weight', 'layers.i.…', 'norm_f.weight', 'lm_head.weight'."""
    out = {}
    for key, value in tensors.items():
        if key == "lm_head.weight":
            out[key] = value
            continue
        prefix = {"hf_mamba2": "backbone.", "hf_nemotron_h": "model.", "saved": "backbone.",
                  "mamba_ssm": "backbone."}[layout]
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if layout == "mamba_ssm" and key == "embedding.weight":
            key = "embeddings.weight"
        out[key] = value
    return {k: v.detach().to(torch.float64) for k, v in out.items()}


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_mamba2(u, P, prefix, spec, stats, variant):
    """One Mamba-2 mixer on one sequence u (L, D), as a plain recurrence."""
    L = u.shape[0]
    H, Pd, G, N = spec["heads"], spec["head_dim"], spec["groups"], spec["state"]
    ED = H * Pd
    zxbcdt = u @ P[prefix + "in_proj.weight"].T
    if prefix + "in_proj.bias" in P:
        zxbcdt = zxbcdt + P[prefix + "in_proj.bias"]
    z, xbc, dt_raw = zxbcdt[:, :ED], zxbcdt[:, ED:2 * ED + 2 * G * N], zxbcdt[:, 2 * ED + 2 * G * N:]
    assert dt_raw.shape[1] == H
    # causal depthwise convolution over x, B, C with K - 1 zeros on the left, then SiLU
    w = P[prefix + "conv1d.weight"][:, 0, :]
    K = w.shape[1]
    padded = torch.cat([torch.zeros(K - 1, xbc.shape[1], dtype=xbc.dtype), xbc])
    conv = torch.stack([(padded[t:t + K].T * w).sum(-1) for t in range(L)])
    if prefix + "conv1d.bias" in P:
        conv = conv + P[prefix + "conv1d.bias"]
    xbc = F.silu(conv)
    x = xbc[:, :ED].reshape(L, H, Pd)
    B = xbc[:, ED:ED + G * N].reshape(L, G, N)
    C = xbc[:, ED + G * N:].reshape(L, G, N)
    dt_soft = F.softplus(dt_raw + P[prefix + "dt_bias"])
    dt = dt_soft if variant.get("no_clamp") else dt_soft.clamp(spec["dt_min"], spec["dt_max"])
    stats.setdefault("dt_clamped", []).append(float((dt != dt_soft).double().mean()))
    A = -torch.exp(P[prefix + "A_log"])
    D = P[prefix + "D"]
    S = torch.zeros(H, Pd, N, dtype=u.dtype)
    y = torch.zeros(L, H, Pd, dtype=u.dtype)
    ssm_part = torch.zeros(L, H, Pd, dtype=u.dtype)
    for t in range(L):
        for h in range(H):
            g = h * G // H
            S[h] = torch.exp(dt[t, h] * A[h]) * S[h] + dt[t, h] * torch.outer(x[t, h], B[t, g])
            ssm_part[t, h] = S[h] @ C[t, g]
            y[t, h] = ssm_part[t, h] + D[h] * x[t, h]
    stats.setdefault("ssm_over_skip", []).append(float(ssm_part.norm() / (D[None, :, None] * x).norm()))
    stats.setdefault("dt_range", []).append((float(dt.min()), float(dt.max())))
    # gated RMSNorm: norm(y * SiLU(z)), mean square over each group's ED / G channels
    gated = y.reshape(L, ED) * F.silu(z)
    groups = 1 if variant.get("norm_whole_width") else G
    gated = gated.reshape(L, groups, ED // groups)
    gated = gated / torch.sqrt((gated * gated).mean(-1, keepdim=True) + spec["gated_eps"])
    out = gated.reshape(L, ED) * P[prefix + "norm.weight"]
    out = out @ P[prefix + "out_proj.weight"].T
    if prefix + "out_proj.bias" in P:
        out = out + P[prefix + "out_proj.bias"]
    return out


def ref_attention(u, P, prefix, spec, stats, variant):
    """Causal grouped-query attention, no positional encoding, scale head_dim^-1/2."""
    L = u.shape[0]
    Hq, Hk, d = spec["attn_heads"], spec["kv_heads"], spec["attn_head_dim"]
    q = (u @ P[prefix + "q_proj.weight"].T).reshape(L, Hq, d)
    k = (u @ P[prefix + "k_proj.weight"].T).reshape(L, Hk, d)
    v = (u @ P[prefix + "v_proj.weight"].T).reshape(L, Hk, d)
    o = torch.zeros(L, Hq, d, dtype=u.dtype)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    peak = []
    for h in range(Hq):
        kv = (h % Hk) if variant.get("gqa_modulo") else h // (Hq // Hk)
        scores = (q[:, h] @ k[:, kv].T) / math.sqrt(d)
        weights = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
        peak.append(float(weights[1:].max(-1).values.mean()))
        o[:, h] = weights @ v[:, kv]
    stats.setdefault("attn_mean_max_weight", []).append(sum(peak) / len(peak))
    return o.reshape(L, Hq * d) @ P[prefix + "o_proj.weight"].T


def ref_mlp(u, P, prefix):
    up = u @ P[prefix + "up_proj.weight"].T
    if prefix + "up_proj.bias" in P:
        up = up + P[prefix + "up_proj.bias"]
    out = torch.relu(up) ** 2 @ P[prefix + "down_proj.weight"].T
    if prefix + "down_proj.bias" in P:
        out = out + P[prefix + "down_proj.bias"]
    return out


def reference_logits(P, spec, input_ids, variant=None, stats=None):
    """Pre-norm residual stack x + f(RMSNorm(x)), final norm, LM head; float64, one sequence at a time."""
    variant = variant or {}
    stats = {} if stats is None else stats
    head = P["embeddings.weight"] if spec["tied"] else P["lm_head.weight"]
    out = []
    for ids in input_ids:
        h = P["embeddings.weight"][ids]
        for i, kind in enumerate(spec["pattern"]):
            prefix = f"layers.{i}.mixer."
            u = rms_norm(h, P[f"layers.{i}.norm.weight"], spec["eps"])
            if kind == "M":
                h = h + ref_mamba2(u, P, prefix, spec, stats, variant)
            elif kind == "*":
                h = h + ref_attention(u, P, prefix, spec, stats, variant)
            elif kind == "-":
                h = h + ref_mlp(u, P, prefix)
            else:
                raise RuntimeError(f"unknown block {kind}")
        out.append(rms_norm(h, P["norm_f.weight"], spec["eps"]) @ head.T)
    return torch.stack(out)


def check_reference(what, P, spec, input_ids, want_logits, discriminate=True):
    """The float64 recurrence must reproduce transformers' logits; pinned features must matter."""
    stats = {}
    got = reference_logits(P, spec, input_ids, stats=stats)
    diff = float((got - want_logits.double()).abs().max())
    if diff > REFERENCE_ATOL * max(1.0, float(want_logits.abs().max())):
        raise RuntimeError(f"{what}: reference logits differ from transformers by {diff}")
    checked = []
    if discriminate:
        variants = []
        if "M" in spec["pattern"] and spec["groups"] > 1:
            variants.append(("norm_whole_width", "per-group gated norm"))
        if "M" in spec["pattern"] and max(stats["dt_clamped"]) > 0:
            variants.append(("no_clamp", "dt clamp"))
        if "*" in spec["pattern"] and spec["kv_heads"] not in (1, spec["attn_heads"]):
            variants.append(("gqa_modulo", "GQA head -> KV-head mapping"))
        for key, label in variants:
            other = reference_logits(P, spec, input_ids, variant={key: True})
            if float((other - want_logits.double()).abs().max()) < 100 * REFERENCE_ATOL:
                raise RuntimeError(f"{what}: the {label} does not change the logits")
            checked.append(label)
    return diff, stats, checked


# --------------------------------------------------------------------------- #
# training cases
# --------------------------------------------------------------------------- #


def run_case(case, index):
    seed = SEED + 1000 * (index + 1)
    config = make_config(case["kind"], case["config"], case.get("pattern"))
    model = build_model(case["kind"], config, seed, case.get("dt_shift"))
    hf_config, saved_keys = saved_config_and_keys(model)
    keys = checkpoint_keys(model, saved_keys)

    batch, seq_len, vocab = 2, case["seq_len"], config.vocab_size
    gen = torch.Generator().manual_seed(seed + 2)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=gen, dtype=torch.int64)

    named = list(model.named_parameters())
    initial = {n: p.detach().clone() for n, p in named}
    no_decay_names = [n for n, _ in named if no_decay_name(n)]
    losses, grad_norms, logits0, grads0 = train(model, input_ids)
    if not torch.isfinite(logits0).all() or float(logits0.abs().max()) > 30:
        raise RuntimeError(f"{case['name']}: logits out of range")

    layout = "hf_mamba2" if case["kind"] == "mamba2" else "hf_nemotron_h"
    stats = {}
    reference_logits(neutral_params(initial, layout), spec_from_hf_config(hf_config), input_ids, stats=stats)

    tensors = {"input_ids": input_ids, "logits": logits0}
    for n, _ in named:
        tensors[n] = initial[n]
    for n, _ in named:
        tensors[f"grad.{n}"] = grads0[n]
    for n, p in named:
        tensors[f"final.{n}"] = p.detach()
    save_tensors(OUT / f"{case['name']}.safetensors", tensors)

    subset_keys = MAMBA2_SUBSET if case["kind"] == "mamba2" else NEMOTRON_H_SUBSET
    write_json(
        OUT / f"{case['name']}.json",
        {
            "model_type": hf_config["model_type"],
            "pattern": pattern_of(hf_config),
            "config": {k: hf_config[k] for k in subset_keys},
            "hf_config": hf_config,
            "batch": batch,
            "seq_len": seq_len,
            "loss": losses[0],
            "train": {**TRAIN, "losses": losses, "grad_norms": grad_norms, "no_decay": no_decay_names},
            "checkpoint_keys": keys,
            "dt_clamped_fraction": stats.get("dt_clamped", []),
            "versions": versions(),
        },
    )
    print(f"{case['name']} [{pattern_of(hf_config)}]: loss {losses[0]:.6f} -> {losses[-1]:.6f}, |g| "
          f"{[round(g, 4) for g in grad_norms]}, max|logit| {float(logits0.abs().max()):.2f}, "
          f"dt {[tuple(round(v, 3) for v in r) for r in stats.get('dt_range', [])]}, "
          f"clamped {[round(f, 3) for f in stats.get('dt_clamped', [])]}, "
          f"ssm/skip {[round(r, 3) for r in stats.get('ssm_over_skip', [])]}, "
          f"attn peak {[round(r, 3) for r in stats.get('attn_mean_max_weight', [])]}")


# --------------------------------------------------------------------------- #
# saved models
# --------------------------------------------------------------------------- #


def generate_greedy(model, prompt_ids):
    with torch.no_grad():
        generated = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=HF_TINY_NEW_TOKENS,
            min_new_tokens=HF_TINY_NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=None,
        )
    return generated[0, prompt_ids.shape[1]:].tolist()


def run_hf_tiny(name, kind, config, seed, dt_shift=None):
    model = build_model(kind, config, seed, dt_shift)
    fit(model, HF_TINY_CORPUS, HF_TINY_FIT_STEPS)
    model.eval()
    save_hf(model, OUT / name)

    ids = text_ids(HF_TINY_TEXT)
    with torch.no_grad():
        loss, _ = hf_loss(model, ids)
    prompt_ids = text_ids(HF_TINY_PROMPT)
    greedy = generate_greedy(model, prompt_ids)
    manual, margins = greedy_manual(model, prompt_ids, HF_TINY_NEW_TOKENS)
    if min(margins) < MIN_ARGMAX_MARGIN:
        raise RuntimeError(f"{name}: greedy decoding has a near-tie (margin {min(margins)})")
    if len(greedy) != HF_TINY_NEW_TOKENS:
        raise RuntimeError(f"{name}: generate stopped early: {len(greedy)} tokens")
    if greedy != manual:
        raise RuntimeError(f"{name}: generate and manual argmax disagree:\n{greedy}\n{manual}")
    write_json(
        OUT / f"{name}_expected.json",
        {
            "text": HF_TINY_TEXT,
            "loss": float(loss.item()),
            "prompt": HF_TINY_PROMPT,
            "prompt_ids": prompt_ids[0].tolist(),
            "greedy": greedy,
            "greedy_manual": manual,
            "versions": versions(),
        },
    )
    print(f"{name} [{pattern_of(json.loads((OUT / name / 'config.json').read_text()))}]: loss {loss.item():.6f} "
          f"greedy {bytes(greedy)!r} min margin {min(margins):.3f}")
    return model


def mamba_ssm_config(config):
    """config.json of mamba_ssm's MambaLMHeadModel for an HF Mamba2Config (pure Mamba-2 stack, no MLPs)."""
    ed = config.num_heads * config.head_dim
    if ed != config.expand * config.hidden_size:
        raise RuntimeError("mamba_ssm derives d_inner from expand: num_heads * head_dim must equal it")
    if tuple(config.time_step_limit) != (0.0, math.inf):
        raise RuntimeError("dt_limit is not written (infinite floats are not JSON)")
    return {
        "d_model": config.hidden_size,
        "d_intermediate": 0,
        "n_layer": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": config.state_size,
            "d_conv": config.conv_kernel,
            "expand": config.expand,
            "headdim": config.head_dim,
            "ngroups": config.n_groups,
            "chunk_size": config.chunk_size,
            "rmsnorm": True,
            "norm_before_gate": False,
            "D_has_hdim": False,
            "bias": config.use_bias,
            "conv_bias": config.use_conv_bias,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": MAMBA_SSM_PAD_MULTIPLE,
        "tie_embeddings": config.tie_word_embeddings,
    }


def mamba_ssm_state_dict(model):
    """Rename Mamba2ForCausalLM weights to mamba_ssm's keys: only the embedding's name differs."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "backbone.embeddings.weight":
            name = "backbone.embedding.weight"
        out[name] = tensor.detach().clone()
    if out["backbone.embedding.weight"].shape[0] % MAMBA_SSM_PAD_MULTIPLE:
        raise RuntimeError("the vocabulary is not a multiple of pad_vocab_size_multiple")
    out["lm_head.weight"] = out["backbone.embedding.weight"].clone()
    return out


def write_mamba_ssm(model):
    if not model.config.tie_word_embeddings:
        raise RuntimeError("mamba_ssm's copy assumes a tied head")
    directory = OUT / "mamba_ssm_mamba2_tiny"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    write_json(directory / "config.json", mamba_ssm_config(model.config))
    save_tensors(directory / "model.safetensors", mamba_ssm_state_dict(model))
    print("mamba_ssm_mamba2_tiny: written")


# --------------------------------------------------------------------------- #
# verification
# --------------------------------------------------------------------------- #


def model_from_hf_config(hf_config, attn_implementation="eager"):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
        config = AutoConfig.from_pretrained(tmp)
    if config.model_type == "nemotron_h":
        config._attn_implementation = attn_implementation
    return AutoModelForCausalLM.from_config(config)


def load_case_model(meta, tensors):
    model = model_from_hf_config(meta["hf_config"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[n])
    return model


@torch.no_grad()
def step_logits(model, ids):
    out = model(input_ids=ids[:, :1], use_cache=True)
    logits = [out.logits[:, -1]]
    for t in range(1, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], cache=out.cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def verify_case(case):
    name = case["name"]
    meta = json.loads((OUT / f"{name}.json").read_text())
    tensors = load_file(str(OUT / f"{name}.safetensors"))
    for k, v in tensors.items():
        want = torch.int64 if k == "input_ids" else torch.float32
        if v.dtype != want:
            raise RuntimeError(f"{name}:{k} has dtype {v.dtype}")
    ids = tensors["input_ids"]
    assert list(ids.shape) == [meta["batch"], meta["seq_len"]]
    if meta["seq_len"] % meta["hf_config"]["chunk_size"] == 0:
        raise RuntimeError(f"{name}: seq_len is a multiple of chunk_size")
    model = load_case_model(meta, tensors)
    names = [n for n, _ in model.named_parameters()]
    expected_keys = {"input_ids", "logits"} | set(names) | {f"grad.{n}" for n in names} | {f"final.{n}" for n in names}
    if set(tensors) != expected_keys:
        raise RuntimeError(f"{name}: key set mismatch {set(tensors) ^ expected_keys}")
    for n in names:
        if n.endswith("mixer.norm.weight") and bool((tensors[n] == 1).all()):
            raise RuntimeError(f"{name}: gated norm {n} is not perturbed")
    hf_config, saved_keys = saved_config_and_keys(model)
    if hf_config != meta["hf_config"]:
        raise RuntimeError(f"{name}: hf_config does not round-trip through save_pretrained")
    if checkpoint_keys(model, saved_keys) != meta["checkpoint_keys"]:
        raise RuntimeError(f"{name}: checkpoint key map differs")
    if meta["config"] != {k: hf_config[k] for k in meta["config"]}:
        raise RuntimeError(f"{name}: config subset differs from hf_config")

    model.train()
    loss, logits = hf_loss(model, ids)
    check_close(f"{name} loss", float(loss.item()), meta["loss"])
    check_close(f"{name} train.losses[0]", float(loss.item()), meta["train"]["losses"][0])
    if not torch.equal(logits, tensors["logits"]):
        raise RuntimeError(f"{name}: logits differ")
    vocab = hf_config["vocab_size"]
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    check_close(f"{name} shifted CE", float(manual.item()), meta["loss"])
    loss.backward()
    for n, p in model.named_parameters():
        if not torch.equal(p.grad, tensors[f"grad.{n}"]):
            raise RuntimeError(f"{name}: grad.{n} differs")
        if float(p.grad.abs().max()) == 0.0:
            raise RuntimeError(f"{name}: grad.{n} is zero")
    # the cached inference path (and, for attention, SDPA) must agree with the training path
    model.eval()
    with torch.no_grad():
        cached = model(input_ids=ids, use_cache=True).logits
    torch.testing.assert_close(cached, tensors["logits"], rtol=1e-5, atol=1e-5)
    if meta["model_type"] == "nemotron_h":
        sdpa = model_from_hf_config(meta["hf_config"], attn_implementation="sdpa")
        sdpa.load_state_dict(model.state_dict())
        sdpa.eval()
        with torch.no_grad():
            torch.testing.assert_close(sdpa(input_ids=ids, use_cache=False).logits, tensors["logits"],
                                       rtol=1e-5, atol=1e-5)
    # token-by-token through the cache (recurrent step, KV cache). transformers' recurrent step does not clamp dt
    # (only the chunked prefill does), so it reproduces the forward exactly where the clamp never binds.
    stepped = step_logits(model, ids)
    step_diff = float((stepped - tensors["logits"]).abs().max())
    if not any(meta["dt_clamped_fraction"]):
        if step_diff > 1e-5:
            raise RuntimeError(f"{name}: recurrent step differs from the forward by {step_diff}")
    elif step_diff < 1e-3:
        raise RuntimeError(f"{name}: expected transformers' unclamped recurrent step to differ here")
    # re-running the training from the stored parameters must reproduce it
    again = load_case_model(meta, tensors)
    losses, grad_norms, _, _ = train(again, ids)
    if losses != meta["train"]["losses"] or grad_norms != meta["train"]["grad_norms"]:
        raise RuntimeError(f"{name}: training record differs")
    for n, p in again.named_parameters():
        if not torch.equal(p.detach(), tensors[f"final.{n}"]):
            raise RuntimeError(f"{name}: final.{n} differs")
        if torch.equal(tensors[n], tensors[f"final.{n}"]):
            raise RuntimeError(f"{name}: {n} did not move")
    if meta["train"]["no_decay"] != [n for n in names if no_decay_name(n)]:
        raise RuntimeError(f"{name}: no_decay list differs")
    # the independent recurrence, on the stored parameters and the saved config
    layout = "hf_mamba2" if meta["model_type"] == "mamba2" else "hf_nemotron_h"
    P = neutral_params({n: tensors[n] for n in names}, layout)
    diff, stats, checked = check_reference(name, P, spec_from_hf_config(meta["hf_config"]), ids, tensors["logits"])
    if stats.get("dt_clamped", []) != meta["dt_clamped_fraction"]:
        raise RuntimeError(f"{name}: dt_clamped_fraction differs")
    size = (OUT / f"{name}.safetensors").stat().st_size
    if size > MAX_CASE_BYTES:
        raise RuntimeError(f"{name}.safetensors is {size} bytes")
    print(f"verified {name} ({len(tensors)} tensors, {size} bytes; reference max|diff| {diff:.2e}; "
          f"pinned: {', '.join(checked) or '-'}; step vs forward {step_diff:.2e})")


def verify_hf_tiny(name):
    expected = json.loads((OUT / f"{name}_expected.json").read_text())
    directory = OUT / name
    if sorted(p.name for p in directory.iterdir()) != ["config.json", "model.safetensors"]:
        raise RuntimeError(f"{name}: unexpected files")
    cfg = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    if any(v.dtype != torch.float32 for v in state.values()):
        raise RuntimeError(f"{name}: not F32")
    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    reloaded.eval()
    ids = text_ids(expected["text"])
    with torch.no_grad():
        loss, logits = hf_loss(reloaded, ids)
    check_close(f"{name} loss", float(loss.item()), expected["loss"])
    prompt = torch.tensor([expected["prompt_ids"]])
    if list(HF_TINY_PROMPT.encode("utf-8")) != expected["prompt_ids"]:
        raise RuntimeError(f"{name}: prompt ids are not the prompt's bytes")
    manual, _ = greedy_manual(reloaded, prompt, HF_TINY_NEW_TOKENS)
    if manual != expected["greedy"] or expected["greedy_manual"] != expected["greedy"]:
        raise RuntimeError(f"{name}: greedy tokens differ after reload")
    if generate_greedy(reloaded, prompt) != expected["greedy"]:
        raise RuntimeError(f"{name}: generate differs after reload")
    P, spec = neutral_params(state, "saved"), spec_from_hf_config(cfg)
    diff, _, checked = check_reference(name, P, spec, ids, logits)
    # transformers' recurrent step (generate) does not clamp dt; the full forward does. The clamp must not bind here,
    # so that both compute the same maths.
    for text_or_ids in (ids, torch.tensor([expected["prompt_ids"] + expected["greedy"]]), text_ids(HF_TINY_CORPUS)):
        stats = {}
        reference_logits(P, spec, text_or_ids, stats=stats)
        if any(stats.get("dt_clamped", [])):
            raise RuntimeError(f"{name}: the dt clamp binds ({stats['dt_clamped']})")
    print(f"verified {name} (reference max|diff| {diff:.2e}; pinned: {', '.join(checked) or '-'})")
    return logits


def verify_mamba_ssm(hf_logits):
    directory = OUT / "mamba_ssm_mamba2_tiny"
    cfg = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    hf_state = load_file(str(OUT / "hf_mamba2_tiny" / "model.safetensors"))
    mult = cfg["pad_vocab_size_multiple"]
    rows = state["backbone.embedding.weight"].shape[0]
    if rows != mult * math.ceil(cfg["vocab_size"] / mult):
        raise RuntimeError("mamba_ssm_mamba2_tiny: embedding rows vs padded vocabulary")
    if not torch.equal(state["lm_head.weight"], state["backbone.embedding.weight"]):
        raise RuntimeError("mamba_ssm_mamba2_tiny: lm_head is not a copy of the embedding")
    # a pure rename: every HF tensor appears unchanged under its mamba_ssm key
    renamed = {re.sub(r"^backbone\.embeddings\.", "backbone.embedding.", k): v for k, v in hf_state.items()}
    if set(renamed) | {"lm_head.weight"} != set(state):
        raise RuntimeError(f"mamba_ssm_mamba2_tiny: key sets differ {set(renamed) ^ set(state)}")
    for k, v in renamed.items():
        if not torch.equal(v, state[k]):
            raise RuntimeError(f"mamba_ssm_mamba2_tiny: {k} differs")
    # mamba_ssm's mixer module: shapes it would allocate from this config
    ssm = cfg["ssm_cfg"]
    d_inner = ssm["expand"] * cfg["d_model"]
    nheads = d_inner // ssm["headdim"]
    conv_dim = d_inner + 2 * ssm["ngroups"] * ssm["d_state"]
    for i in range(cfg["n_layer"]):
        p = f"backbone.layers.{i}.mixer."
        want = {
            p + "in_proj.weight": (2 * d_inner + 2 * ssm["ngroups"] * ssm["d_state"] + nheads, cfg["d_model"]),
            p + "conv1d.weight": (conv_dim, 1, ssm["d_conv"]),
            p + "conv1d.bias": (conv_dim,),
            p + "dt_bias": (nheads,), p + "A_log": (nheads,), p + "D": (nheads,),
            p + "norm.weight": (d_inner,),
            p + "out_proj.weight": (cfg["d_model"], d_inner),
            f"backbone.layers.{i}.norm.weight": (cfg["d_model"],),
        }
        for k, shape in want.items():
            if tuple(state[k].shape) != shape:
                raise RuntimeError(f"mamba_ssm_mamba2_tiny: {k} has shape {tuple(state[k].shape)}, want {shape}")
    ids = text_ids(json.loads((OUT / "hf_mamba2_tiny_expected.json").read_text())["text"])
    diff, _, checked = check_reference("mamba_ssm_mamba2_tiny", neutral_params(state, "mamba_ssm"),
                                       spec_from_mamba_ssm_config(cfg), ids, hf_logits)
    print(f"verified mamba_ssm_mamba2_tiny (reference on mamba_ssm layout vs HF logits: max|diff| {diff:.2e}; "
          f"pinned: {', '.join(checked) or '-'})")


def written_files():
    names = []
    for case in CASES:
        names += [f"{case['name']}.json", f"{case['name']}.safetensors"]
    for d in ("hf_mamba2_tiny", "hf_nemotron_h_tiny"):
        names += [f"{d}/config.json", f"{d}/model.safetensors", f"{d}_expected.json"]
    names += ["mamba_ssm_mamba2_tiny/config.json", "mamba_ssm_mamba2_tiny/model.safetensors"]
    return [OUT / n for n in names]


def verify():
    assert_pure_torch()
    for case in CASES:
        verify_case(case)
    mamba2_logits = verify_hf_tiny("hf_mamba2_tiny")
    verify_hf_tiny("hf_nemotron_h_tiny")
    verify_mamba_ssm(mamba2_logits)
    total = 0
    for path in written_files():
        total += path.stat().st_size
        print(f"  {path.relative_to(OUT)}: {path.stat().st_size} bytes")
    if total > MAX_TOTAL_BYTES:
        raise RuntimeError(f"new fixtures total {total} bytes")
    print(f"total size of these fixtures: {total} bytes")


def main():
    setup_determinism()
    assert_pure_torch()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"safetensors {safetensors.__version__}, numpy {numpy.__version__}")
    for index, case in enumerate(CASES):
        run_case(case, index)
    mamba2 = run_hf_tiny("hf_mamba2_tiny", "mamba2", make_config("mamba2", HF_MAMBA2_TINY_CONFIG), SEED + 50_000)
    write_mamba_ssm(mamba2)
    run_hf_tiny("hf_nemotron_h_tiny", "nemotron_h",
                make_config("nemotron_h", HF_NEMOTRON_H_TINY_CONFIG, HF_NEMOTRON_H_TINY_PATTERN), SEED + 60_000,
                HF_NEMOTRON_H_TINY_DT_SHIFT)
    verify()


if __name__ == "__main__":
    main()
