#!/usr/bin/env python3
"""PyTorch CPU reference benchmarks for MambaKit.

Measures, on CPU in float32, the throughput of the pure-PyTorch Mamba-1
implementations that MambaKit is compared against:

* transformers ``MambaForCausalLM``
    - ``transformers``: the default CPU path. Without ``mamba_ssm``,
      ``causal_conv1d`` and ``kernels`` installed every kernel falls back to
      its PyTorch reference; the selective scan is the sequential per-time-step
      loop in ``mamba_selective_scan`` (the associative scan is only used under
      ``torch.compile``, which this script does not use).
    - ``transformers-mambapy``: the same model with ``use_mambapy=True``, so the
      scan in training/prefill uses ``mambapy.pscan`` (a parallel scan).
      Single-token decoding is identical for both, so generation is measured
      once, as ``transformers``.
* ``mambapy``: the ``mambapy`` package's language model with ``pscan=True``
  for training and its recurrent ``step`` function for generation.
  ``mambapy.lm.LM`` is used if it imports; it imports ``mambapy.mamba2``,
  which needs ``mamba_ssm`` (CUDA only), so on CPU the script builds the same
  stack itself (embedding -> ``mambapy.mamba.Mamba`` -> ``RMSNorm`` -> head,
  LM's default init). The LM head is tied to the embedding (as in the
  transformers model), the embedding has no ``padding_idx`` and ``dt_proj``
  gets the standard Mamba time-step initialisation (which LM's weight init
  overwrites), so both libraries run the same architecture.

Tasks
-----
train:    forward + backward + AdamW step on a fixed batch of random byte
          tokens, mean next-token cross-entropy (the same loss code for every
          implementation). 1 warm-up step, then ``--train-steps`` timed steps;
          only 1 if the warm-up step took longer than ``--slow-step-seconds``,
          and none if it took longer than ``--reuse-warmup-seconds`` (the
          warm-up step is then reported as the measured step).
          tokens/s = batch * seq_len / seconds-per-step. The sequential
          transformers path is very slow to train at long sequences: every
          per-time-step slice of the (batch, d_inner, L, d_state) tensors gets a
          full-size gradient in the backward pass, so a step costs O(L^2)
          memory traffic. ``--slow-train-seq-len`` shortens only that entry;
          it runs last, and if it is abandoned (``--job-timeout``) after its
          warm-up step, the warm-up numbers are still reported.
generate: greedy decoding with the recurrent state (cache): a random prompt of
          ``--prompt-len`` tokens, then ``--gen-tokens`` new tokens. The prompt
          pass (prefill) yields the first new token and is timed separately;
          the remaining ``gen_tokens - 1`` single-token steps are the decode
          time. tokens/s = batch * (gen_tokens - 1) / decode seconds.
classify: sequence-classification inference, the counterpart of MambaKit's
          ``SequenceClassifier.logits`` (mean pooling). Only run when listed in
          ``--tasks`` (e.g. ``--tasks train,generate,classify``). Model: the
          ``reference`` config as the backbone, in each of the three code paths
          (``transformers``, ``transformers-mambapy``, ``mambapy``); logits =
          ``torch.nn.Linear(d_model, 2)`` (with bias) applied to the mean over
          positions of the final hidden states after the final RMSNorm (for
          transformers the backbone's ``last_hidden_state``, which is after
          ``norm_f``; for mambapy ``norm_f(mamba(embedding(ids)))``); the LM head
          is not applied. One fixed batch of random byte tokens per workload,
          ``torch.inference_mode()``, float32, 1 untimed warm-up pass, then timed
          passes: at least ``--classify-min-passes`` (2) and until
          ``--classify-seconds`` (3 s) have passed. Workloads are the pairs of
          ``--classify-lengths`` and ``--classify-batches`` (default seq_len 1024
          with batch 16, and 16384 with batch 1). The entry reports
          seconds_per_batch (mean pass time; also as ``seconds``),
          sequences_per_s = batch / seconds_per_batch and tokens_per_s =
          batch * seq_len / seconds_per_batch. The forward pass materialises
          (batch, d_inner, seq_len, d_state) float32 tensors in every code path
          (512 MiB each at either default workload). If a workload runs out of
          time (``--job-timeout``) or memory, its entry carries an ``error`` (with
          the warm-up pass's numbers if that finished).

Models (random weights, vocabulary 256 = bytes, tied embeddings):
    reference: d_model 256, 4 layers, d_state 16, d_conv 4, expand 2, dt_rank 16
    mamba130m: d_model 768, 24 layers, d_state 16, d_conv 4, expand 2, dt_rank 48
    audio:     d_model 64, 4 layers, d_state 16, d_conv 4, expand 2, dt_rank 4

Mamba-2 (SSD) and hybrid stacks (``STACK_CONFIGS``; usable with ``--train-configs``
and ``--configs``), measured only through transformers' pure-PyTorch paths (impl
``transformers``; ``transformers-mambapy`` and ``mambapy`` are Mamba-1 only, and
mambapy's own Mamba-2 needs mamba_ssm):
    mamba2: ``Mamba2ForCausalLM``: d_model 256, 4 layers, expand 2, head_dim 64
            (8 heads), d_state 64, n_groups 1, chunk_size 64, d_conv 4, conv bias,
            no projection biases, tied head, vocabulary 256 (1.79 M parameters).
    hybrid: ``NemotronHForCausalLM``, layer pattern ``M-M*-M-`` (M = Mamba-2
            mixer, * = attention, - = MLP; 7 layers): d_model 256, Mamba heads
            8 x 64, d_state 64, n_groups 1, chunk_size 64, d_conv 4, attention
            4 query / 2 key-value heads of 64 (no RoPE, as in NemotronH), MLP
            width 1024 with relu2, no projection/MLP/attention biases (conv bias
            kept), untied head, vocabulary 256 (3.20 M parameters). Attention
            implementation: ``--hybrid-attn`` (default sdpa, see
            ``HYBRID_ATTN_NOTE``); the entries carry ``attn_implementation``.
    Their workers run with USE_HUB_KERNELS=0 and with mamba_ssm, causal_conv1d and
    kernels made unimportable; the script checks that every kernel hook of the
    modeling file resolved to its PyTorch reference and counts the calls of those
    fallbacks (``torch_fallback_calls_per_step`` / ``..._per_decode_step``: the
    chunked SSD scan in training and prefill, the recurrent state update in
    decoding). Training: the same loss, optimiser and entry as above. Generation:
    ``model(input_ids=prompt, use_cache=True, logits_to_keep=1)`` then
    ``model(input_ids=token, cache=cache, use_cache=True)`` per token; the cache is
    transformers' ``DynamicCache`` (``LinearAttentionLayer`` per Mamba layer: conv
    and SSM state updated in place; ``DynamicLayer`` per attention layer: keys and
    values concatenated each step; ``DummyLayer`` per MLP). The entries add
    ``rss_growth_during_generation_mb`` (VmRSS after the timed steps minus before
    them), ``cache_bytes_after_prefill`` / ``cache_bytes_at_end`` (the tensors the
    cache holds), ``cache_growth_bytes_per_token_per_sequence`` and
    ``memory_constant_in_generated_length`` (the cache did not grow; false for the
    hybrid, whose KV cache grows by design), and, from the untimed warm-up,
    ``max_abs_logit_diff_cached_vs_full_forward`` (cached prefill + steps against
    one uncached forward over the same tokens).

Every measurement runs in its own fresh Python process, so ``peak_rss_mb`` (the
process's VmHWM, i.e. peak resident set size) belongs to that configuration
alone; ``rss_baseline_mb`` is the resident size after the imports and before
the model is built. A failing or crashing measurement becomes an entry with an
``error`` field. Unless ``--skip-parity`` is given, a small parity check first
loads one set of weights into all three code paths and compares their logits,
greedy tokens and (with one shared linear head) mean-pooled classification
logits.

Progress goes to stderr; stdout receives exactly one JSON object. The 1-minute
load average is recorded at the start and at each entry: numbers taken while
other work runs on the machine are not comparable. With fewer free cores than
``--threads``, libgomp's default spin-waiting makes PyTorch's many small
parallel regions (the sequential scan, single-token decoding) dramatically
slower; ``--omp-wait-policy passive`` is the knob for that, and the policy in
effect is recorded.

Usage (from the repository root)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -r scripts/requirements-bench.txt
    .venv-bench/bin/python scripts/bench_torch.py --threads 2 > bench_torch.json
    .venv-bench/bin/python scripts/bench_torch.py --quick        # smoke test
    .venv-bench/bin/python scripts/bench_torch.py --threads 2 --tasks classify > bench_torch_classify.json
    # Mamba-2 and hybrid stacks (training at L 2048, batch 4; generation at batch 1 and 16)
    .venv-bench/bin/python scripts/bench_torch.py --threads 2 --train-configs mamba2,hybrid \
        --configs mamba2,hybrid --train-steps 2 --gen-tokens 64 --skip-parity > bench_torch_stacks.json
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

CONFIGS = {
    "reference": dict(vocab_size=256, d_model=256, n_layers=4, d_state=16, d_conv=4, expand=2, dt_rank=16),
    "mamba130m": dict(vocab_size=256, d_model=768, n_layers=24, d_state=16, d_conv=4, expand=2, dt_rank=48),
    # MambaKit's default waveform model (train --format audio): 8-bit samples, so vocabulary 256 as well.
    "audio": dict(vocab_size=256, d_model=64, n_layers=4, d_state=16, d_conv=4, expand=2, dt_rank=4),
}

# Mamba-2 (SSD) and hybrid stacks: built from transformers' Mamba2Config / NemotronHConfig with these keyword
# arguments (``architecture`` picks the class; ``pattern`` becomes NemotronH's layers_block_type). Only the
# ``transformers`` impl runs them.
HYBRID_LAYER_TYPES = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
STACK_CONFIGS = {
    "mamba2": dict(
        architecture="Mamba2ForCausalLM",
        vocab_size=256,
        hidden_size=256,
        num_hidden_layers=4,
        expand=2,
        num_heads=8,
        head_dim=64,
        state_size=64,
        n_groups=1,
        chunk_size=64,
        conv_kernel=4,
        use_conv_bias=True,
        use_bias=False,
        tie_word_embeddings=True,
    ),
    "hybrid": dict(
        architecture="NemotronHForCausalLM",
        pattern="M-M*-M-",
        vocab_size=256,
        hidden_size=256,
        mamba_num_heads=8,
        mamba_head_dim=64,
        ssm_state_size=64,
        n_groups=1,
        chunk_size=64,
        conv_kernel=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=1024,
        mlp_hidden_act="relu2",
        use_conv_bias=True,
        use_bias=False,
        mlp_bias=False,
        attention_bias=False,
        tie_word_embeddings=False,
    ),
}
CONFIGS.update(STACK_CONFIGS)

# The kernel hooks of transformers' Mamba-2 / NemotronH modeling files; every one must resolve to its PyTorch
# reference (mamba2_split_conv1d_scan_combined's reference returns None, so training takes the unfused path).
STACK_KERNEL_HOOKS = (
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba2_split_conv1d_scan_combined",
    "mamba2_selective_state_update",
    "mamba2_chunk_scan",
)
OPTIONAL_KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d", "kernels")

# Attention implementations transformers offers for NemotronH on this CPU: eager and sdpa. flex_attention has no
# backward on CPU ("FlexAttention does not support backward on CPU"), flash_attention_2/3/4 need their CUDA packages.
HYBRID_ATTN_CHOICES = ("sdpa", "eager")
HYBRID_ATTN_NOTE = {
    "sdpa": (
        "sdpa (torch.nn.functional.scaled_dot_product_attention): the faster of the two implementations transformers "
        "offers on CPU here (eager, sdpa; flex_attention has no CPU backward, flash_attention_* need CUDA); eager "
        "materialises the (batch, heads, L, L) scores and their softmax for the backward pass: at batch 4, L 2048 "
        "on a 2-core machine (2026-12-07) its training step took 1.4-1.9x as long as sdpa's, with 0.5-0.7 GB more peak "
        "RSS; in generation (batch 1 and 16, 64 tokens) the two were within run-to-run noise (measure with "
        "--hybrid-attn sdpa,eager)"
    ),
    "eager": "eager (matmul + softmax in PyTorch ops), measured for comparison with the default sdpa",
}

TRAIN_IMPLS = ["transformers", "transformers-mambapy", "mambapy"]
GEN_IMPLS = ["transformers", "mambapy"]

# AdamW hyper-parameters (weight decay only on matrices/filters; not on
# biases, norm weights, D or A_log).
ADAMW = {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}

# Classes of the linear head in the classify task (a binary classifier).
CLASSIFY_CLASSES = 2

# --quick: the sequential transformers path gets a shorter sequence because its
# backward pass grows quadratically with the sequence length.
QUICK = {
    "train_seq_len": 256,
    "slow_train_seq_len": 128,
    "train_steps": 1,
    "gen_tokens": 32,
    "classify_lengths": "128,512",
    "classify_batches": "4,1",
    "classify_seconds": 0.0,
}

HF_PATH_NOTES = {
    "transformers": (
        "MambaForCausalLM, default CPU path: PyTorch fallbacks for causal_conv1d/selective_scan "
        "(mamba_ssm, causal_conv1d and kernels not installed), sequential per-time-step scan loop"
    ),
    "transformers-mambapy": (
        "MambaForCausalLM with config use_mambapy=True: PyTorch fallbacks, scan via mambapy.pscan (parallel)"
    ),
}


# --------------------------------------------------------------------------- #
# helpers shared by parent and workers
# --------------------------------------------------------------------------- #


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def cpu_string():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    return f"{model} | {platform.machine()} | {platform.platform()} | {os.cpu_count()} logical CPUs"


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def proc_status_mb(field):
    """A kB field of /proc/self/status (VmHWM, VmRSS) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb():
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / (1024.0 * 1024.0)


def rnd(x, nd=4):
    return None if x is None else round(float(x), nd)


# --------------------------------------------------------------------------- #
# model construction (workers)
# --------------------------------------------------------------------------- #


def build_hf(cfg, use_mambapy):
    import dataclasses

    from transformers import MambaConfig, MambaForCausalLM

    kwargs = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["d_model"],
        num_hidden_layers=cfg["n_layers"],
        state_size=cfg["d_state"],
        conv_kernel=cfg["d_conv"],
        expand=cfg["expand"],
        time_step_rank=cfg["dt_rank"],
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=True,
    )
    try:
        fields = {f.name for f in dataclasses.fields(MambaConfig)}
    except TypeError:
        fields = set(vars(MambaConfig()))
    if use_mambapy:
        if "use_mambapy" not in fields:
            raise RuntimeError("this transformers version's MambaConfig has no use_mambapy flag")
        from transformers.utils.import_utils import is_mambapy_available

        if not is_mambapy_available():
            raise RuntimeError("use_mambapy=True requested but transformers cannot import mambapy")
        kwargs["use_mambapy"] = True
    elif "use_mambapy" in fields:
        kwargs["use_mambapy"] = False
    config = MambaConfig(**kwargs)
    model = MambaForCausalLM(config)
    if model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr():
        raise RuntimeError("transformers did not tie lm_head to the embedding")
    return model


class _ThinMambapyLM:
    """Used when ``mambapy.lm`` cannot be imported: ``mambapy.lm`` imports
    ``mambapy.mamba2``, which needs ``mamba_ssm`` (a CUDA package), so on a
    CPU-only install it always fails. This is the same stack as ``LM`` --
    embedding -> ``mambapy.mamba.Mamba`` -> ``mambapy.mamba.RMSNorm`` -> linear
    head, same attribute names, ``forward``/``step`` -- with LM's default
    (non-muP) initialisation: N(0, base_std) for linear and embedding weights,
    zero linear biases, out_proj scaled by 1/sqrt(2 * n_layers)."""

    @staticmethod
    def create(mcfg, vocab_size):
        import torch
        import torch.nn as nn

        from mambapy.mamba import Mamba, RMSNorm

        class ThinLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.config = mcfg
                self.embedding = nn.Embedding(vocab_size, mcfg.d_model)
                self.mamba = Mamba(mcfg)
                self.norm_f = RMSNorm(mcfg.d_model, mcfg.rms_norm_eps)
                self.lm_head = nn.Linear(mcfg.d_model, vocab_size, bias=False)

            def forward(self, tokens):
                return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))

            def step(self, token, caches):
                x, caches = self.mamba.step(self.embedding(token), caches)
                return self.lm_head(self.norm_f(x)), caches

        model = ThinLM()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, mcfg.base_std)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
            for name, p in model.named_parameters():
                if name.endswith("mixer.out_proj.weight"):
                    p.normal_(0.0, mcfg.base_std / math.sqrt(2 * mcfg.n_layers))
        return model


def reset_dt_init(mixer, dt_rank, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
    """Standard Mamba time-step init: dt_proj.weight ~ U(+-dt_rank^-0.5),
    softplus(dt_proj.bias) log-uniform in [dt_min, dt_max]."""
    import torch

    with torch.no_grad():
        std = dt_rank ** -0.5
        mixer.dt_proj.weight.uniform_(-std, std)
        n = mixer.dt_proj.bias.shape[0]
        u = torch.rand(n)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def build_mambapy(cfg, use_pscan=True):
    from mambapy.mamba import MambaConfig as MPConfig

    mcfg = MPConfig(
        d_model=cfg["d_model"],
        n_layers=cfg["n_layers"],
        dt_rank=cfg["dt_rank"],
        d_state=cfg["d_state"],
        expand_factor=cfg["expand"],
        d_conv=cfg["d_conv"],
        rms_norm_eps=1e-5,
        bias=False,
        conv_bias=True,
        pscan=use_pscan,
    )
    notes = []
    try:
        from mambapy.lm import LM

        model = LM(mcfg, cfg["vocab_size"])
        notes.append("mambapy.lm.LM")
    except ImportError as exc:
        model = _ThinMambapyLM.create(mcfg, cfg["vocab_size"])
        notes.append(
            f"mambapy.lm.LM not importable ({exc}); the same embedding -> mambapy.mamba.Mamba -> RMSNorm -> "
            f"head stack with LM's default init"
        )
    model.lm_head.weight = model.embedding.weight
    model.embedding.padding_idx = None
    for layer in model.mamba.layers:
        reset_dt_init(layer.mixer, mcfg.dt_rank)
    notes.append("lm_head tied to embedding, padding_idx cleared, standard dt_proj init")
    if mcfg.use_cuda:
        raise RuntimeError("mambapy unexpectedly configured for the CUDA scan")
    return model, "; ".join(notes)


def is_stack_config(cfg):
    """Mamba-2 / hybrid configs (transformers' Mamba2ForCausalLM / NemotronHForCausalLM) vs the Mamba-1 ones."""
    return "architecture" in cfg


def block_optional_kernels():
    """Force transformers' pure-PyTorch Mamba-2 path: no hub kernels, and the optional CUDA packages unimportable
    even if installed (as scripts/make_fixtures*.py do). Must run before transformers is imported."""
    os.environ["USE_HUB_KERNELS"] = "0"
    for name in OPTIONAL_KERNEL_PACKAGES:
        sys.modules[name] = None


def stack_modeling_module(architecture):
    if architecture == "Mamba2ForCausalLM":
        from transformers.models.mamba2 import modeling_mamba2 as modeling
    elif architecture == "NemotronHForCausalLM":
        from transformers.models.nemotron_h import modeling_nemotron_h as modeling
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    return modeling


def check_torch_fallbacks(modeling, model):
    """Every kernel hook of the modeling file must be its PyTorch reference; returns a short description."""
    import inspect

    from transformers.integrations import hub_kernels

    if getattr(hub_kernels, "_kernels_enabled", False):
        raise RuntimeError("transformers' hub kernels are enabled (USE_HUB_KERNELS not honoured)")
    if getattr(model, "_use_kernels", False):
        raise RuntimeError("the model was kernelized")
    for name in STACK_KERNEL_HOOKS:
        fn = getattr(modeling, name, None)
        if fn is None:
            raise RuntimeError(f"{modeling.__name__} has no {name}; this transformers version is not supported")
        nonlocals = inspect.getclosurevars(fn).nonlocals
        if nonlocals.get("is_new_implementation", False):
            raise RuntimeError(f"{modeling.__name__}.{name} resolved to a kernel, not the PyTorch reference")
    return (
        f"USE_HUB_KERNELS=0, {'/'.join(OPTIONAL_KERNEL_PACKAGES)} blocked; {', '.join(STACK_KERNEL_HOOKS)} all "
        f"resolve to transformers' PyTorch references"
    )


class TorchFallbackCounter:
    """Counts calls of the kernel hooks (all checked to be PyTorch references) of one modeling module; the mixers
    look them up as module globals at call time."""

    def __init__(self, modeling):
        self.calls = dict.fromkeys(STACK_KERNEL_HOOKS, 0)
        for name in STACK_KERNEL_HOOKS:
            orig = getattr(modeling, name)

            def counted(*a, _name=name, _orig=orig, **k):
                self.calls[_name] += 1
                return _orig(*a, **k)

            setattr(modeling, name, counted)

    def reset(self):
        for k in self.calls:
            self.calls[k] = 0

    def snapshot(self):
        return dict(self.calls)


def build_hf_stack(cfg, attn_implementation=None):
    """Mamba2ForCausalLM or NemotronHForCausalLM from a STACK_CONFIGS entry, pure-PyTorch path checked.
    Returns (model, modeling module, notes)."""
    block_optional_kernels()
    arch = cfg["architecture"]
    kwargs = {k: v for k, v in cfg.items() if k not in ("architecture", "pattern")}
    kwargs.update(pad_token_id=None, bos_token_id=None, eos_token_id=None, use_cache=True)
    modeling = stack_modeling_module(arch)
    if arch == "Mamba2ForCausalLM":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        config = Mamba2Config(**kwargs)
        if config.num_heads * config.head_dim != int(config.expand * config.hidden_size):
            raise RuntimeError("num_heads * head_dim must equal expand * hidden_size")
        model = Mamba2ForCausalLM(config)
        if model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr():
            raise RuntimeError("transformers did not tie lm_head to the embedding")
        n_mamba = config.num_hidden_layers
        what = "Mamba2ForCausalLM"
    else:
        from transformers import NemotronHConfig, NemotronHForCausalLM

        kwargs["layers_block_type"] = [HYBRID_LAYER_TYPES[c] for c in cfg["pattern"]]
        attn = attn_implementation or HYBRID_ATTN_CHOICES[0]
        config = NemotronHConfig(attn_implementation=attn, **kwargs)
        model = NemotronHForCausalLM(config)
        if model.config._attn_implementation != attn:
            raise RuntimeError(f"asked for attn_implementation={attn}, got {model.config._attn_implementation}")
        if model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr():
            raise RuntimeError("lm_head unexpectedly tied to the embedding")
        types = [layer.block_type for layer in model.model.layers]
        if types != kwargs["layers_block_type"]:
            raise RuntimeError(f"layer types {types} != {kwargs['layers_block_type']}")
        n_mamba = types.count("linear_attention")
        what = f"NemotronHForCausalLM, layers {cfg['pattern']} ({', '.join(types)}), attn_implementation={attn}"
    fallbacks = check_torch_fallbacks(modeling, model)
    model.n_mamba_layers = n_mamba
    return model, modeling, f"transformers {what}, pure-PyTorch path ({fallbacks})"


def cache_tensor_bytes(cache):
    """Bytes of the distinct tensors a transformers Cache holds (conv/SSM states, keys/values)."""
    import torch

    seen, total = set(), 0

    def add(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                seen.add(id(x))
                total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                add(v)

    for layer in getattr(cache, "layers", []):
        for v in vars(layer).values():
            add(v)
    return total


class Impl:
    """Uniform interface over the benchmarked code paths."""

    def __init__(self, name, cfg, model=None, attn_implementation=None):
        self.name = name
        self.cfg = cfg
        self.kind = "hf" if name.startswith("transformers") else "mambapy"
        self.notes = ""
        self.build_notes = ""
        self.stack = is_stack_config(cfg)
        self.modeling = None
        if self.stack and name != "transformers":
            raise ValueError(f"{cfg['architecture']} configs run only with impl transformers, not {name}")
        if model is not None:
            self.model = model
        elif self.stack:
            self.model, self.modeling, self.notes = build_hf_stack(cfg, attn_implementation)
        elif self.kind == "hf":
            self.model = build_hf(cfg, use_mambapy=(name == "transformers-mambapy"))
            self.notes = HF_PATH_NOTES[name]
        else:
            self.model, how = build_mambapy(cfg, use_pscan=True)
            self.build_notes = how
            self.notes = f"{how}; training scan: mambapy.pscan (pscan=True); generation: LM.step recurrence"

    def logits(self, ids):
        if self.kind == "hf":
            return self.model(input_ids=ids, use_cache=False).logits
        return self.model(ids)

    def hidden(self, ids):
        """Final hidden states [B, L, D] before the LM head, after the final RMSNorm."""
        if self.kind == "hf":
            # MambaModel applies norm_f before returning last_hidden_state
            return self.model.backbone(input_ids=ids, use_cache=False).last_hidden_state
        m = self.model
        return m.norm_f(m.mamba(m.embedding(ids)))

    # generation: prefill returns (state, last logits [B, V])
    def prefill(self, prompt):
        import torch

        if self.kind == "hf":
            out = self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            return out.cache, out.logits[:, -1]
        c = self.model.config
        dtype = next(self.model.parameters()).dtype
        caches = [
            (None, torch.zeros(prompt.shape[0], c.d_inner, c.d_conv - 1, dtype=dtype)) for _ in range(c.n_layers)
        ]
        logits = None
        for t in range(prompt.shape[1]):
            logits, caches = self.model.step(prompt[:, t], caches)
        return caches, logits

    def decode(self, token, state):
        """token: [B] int64. Returns (state, logits [B, V])."""
        if self.kind == "hf":
            out = self.model(input_ids=token[:, None], cache=state, use_cache=True)
            return out.cache, out.logits[:, -1]
        logits, state = self.model.step(token, state)
        return state, logits


class PscanCounter:
    """Counts calls of mambapy.pscan.pscan, both as imported by transformers
    (inside the scan function, at call time) and by mambapy.mamba."""

    def __init__(self):
        self.calls = 0
        try:
            import mambapy.pscan as ps
        except ImportError:
            return
        orig = ps.pscan

        def counted(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        ps.pscan = counted
        # mambapy.mamba binds the name at import time; patch it if already imported
        mm = sys.modules.get("mambapy.mamba")
        if mm is not None and getattr(mm, "pscan", None) is orig:
            mm.pscan = counted


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def make_adamw(model):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if (p.dim() < 2 or name.endswith("A_log")) else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": ADAMW["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=ADAMW["lr"],
        betas=tuple(ADAMW["betas"]),
        eps=ADAMW["eps"],
    )


def next_token_loss(logits, ids):
    import torch.nn.functional as F

    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))


# --------------------------------------------------------------------------- #
# worker jobs
# --------------------------------------------------------------------------- #


def write_partial(job, result):
    path = job.get("_out")
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


def setup_torch(threads, seed):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch


def job_train(job):
    torch = setup_torch(job["threads"], job["seed"])
    counter = PscanCounter()
    baseline = proc_status_mb("VmRSS")
    cfg = CONFIGS[job["config"]]
    impl = Impl(job["impl"], cfg, attn_implementation=job.get("attn_implementation"))
    model = impl.model
    model.train()
    fallbacks = TorchFallbackCounter(impl.modeling) if impl.stack else None
    opt = make_adamw(model)
    B, L = job["batch"], job["seq_len"]
    ids = torch.randint(0, cfg["vocab_size"], (B, L), dtype=torch.long)
    max_norm = job["max_grad_norm"]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = next_token_loss(impl.logits(ids), ids)
        loss.backward()
        if max_norm and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        return float(loss.item())

    log(f"  [{job['label']}] warm-up step ...")
    t0 = time.perf_counter()
    counter.calls = 0
    if fallbacks:
        fallbacks.reset()
    warm_loss = step()
    warm = time.perf_counter() - t0
    pscan_calls = counter.calls
    log(f"  [{job['label']}] warm-up {warm:.2f} s, loss {warm_loss:.4f}, pscan calls {pscan_calls}")
    stack_extra = {}
    if fallbacks:
        calls = fallbacks.snapshot()
        log(f"  [{job['label']}] PyTorch fallback calls in the step: {calls}")
        n = model.n_mamba_layers
        if calls["mamba2_chunk_scan"] != n or calls["mamba2_split_conv1d_scan_combined"] != n:
            raise RuntimeError(f"expected the chunked SSD scan once per Mamba layer ({n}), got {calls}")
        if calls["mamba2_selective_state_update"] != 0:
            raise RuntimeError(f"the recurrent step ran in training: {calls}")
        stack_extra = {
            "architecture": cfg["architecture"],
            "torch_fallback_calls_per_step": calls,
            "mamba_layers": n,
        }
        if "pattern" in cfg:
            stack_extra["layer_pattern"] = cfg["pattern"]
        if job.get("attn_implementation"):
            stack_extra["attn_implementation"] = job["attn_implementation"]
            stack_extra["attn_implementation_note"] = HYBRID_ATTN_NOTE[job["attn_implementation"]]

    expect_pscan = job["impl"] != "transformers"
    if expect_pscan and pscan_calls == 0:
        raise RuntimeError("expected the parallel scan (mambapy.pscan) to run, but it was never called")
    if not expect_pscan and pscan_calls != 0:
        raise RuntimeError("expected the sequential scan, but mambapy.pscan was called")

    common = {
        "warmup_seconds": warm,
        "pscan_calls_per_step": pscan_calls,
        "params": count_params(model),
        "rss_baseline_mb": baseline,
        **stack_extra,
    }
    # If the parent has to abandon a very long timed step, it still finds this.
    write_partial(job, dict(common, partial=True, warmup_tokens_per_s=B * L / warm, peak_rss_mb=peak_rss_mb()))

    steps = job["steps"]
    notes = [impl.notes]
    times, losses = [], []
    if warm > job["reuse_warmup_seconds"]:
        notes.append(
            f"the warm-up step took {warm:.0f} s (> {job['reuse_warmup_seconds']:.0f} s), so it is reported as "
            f"the single measured step (first-call overheads are negligible at that length) instead of "
            f"running another step"
        )
        times, losses = [warm], [warm_loss]
    else:
        if steps > 1 and warm > job["slow_step_seconds"]:
            notes.append(
                f"warm-up step took {warm:.1f} s > {job['slow_step_seconds']:.0f} s, so only 1 timed step "
                f"instead of {steps}"
            )
            steps = 1
        for i in range(steps):
            t0 = time.perf_counter()
            losses.append(step())
            times.append(time.perf_counter() - t0)
            log(f"  [{job['label']}] step {i + 1}/{steps}: {times[-1]:.2f} s, loss {losses[-1]:.4f}")
    sec = sum(times) / len(times)

    notes.append(
        f"tokens/s = batch*seq_len/(mean s per step); step = zero_grad + forward + mean next-token CE + "
        f"backward{' + clip_grad_norm' if max_norm and max_norm > 0 else ''} + AdamW; float32"
    )
    return dict(
        common,
        tokens_per_s=B * L / sec,
        seconds=sec,
        step_seconds=times,
        steps_timed=len(times),
        loss=sum(losses) / len(losses),
        notes="; ".join(notes),
    )


def job_generate(job):
    torch = setup_torch(job["threads"], job["seed"])
    baseline = proc_status_mb("VmRSS")
    cfg = CONFIGS[job["config"]]
    impl = Impl(job["impl"], cfg, attn_implementation=job.get("attn_implementation"))
    impl.model.eval()
    fallbacks = TorchFallbackCounter(impl.modeling) if impl.stack else None
    dtype = job.get("dtype", "float32")
    impl.model.to(getattr(torch, dtype))
    # mambapy's step makes its first SSM state with the default dtype
    torch.set_default_dtype(getattr(torch, dtype))
    B, P, N = job["batch"], job["prompt_len"], job["gen_tokens"]
    if N < 2:
        raise ValueError("--gen-tokens must be at least 2")
    prompt = torch.randint(0, cfg["vocab_size"], (B, P), dtype=torch.long)
    extra = {}

    with torch.inference_mode():
        # short untimed warm-up on a separate state
        state, logits = impl.prefill(prompt)
        tok = logits.argmax(-1)
        warm_tokens, warm_logits = [tok], [logits]
        for _ in range(3):
            state, logits = impl.decode(tok, state)
            tok = logits.argmax(-1)
            warm_tokens.append(tok)
            warm_logits.append(logits)
        del state
        if impl.stack:
            # the cached path (chunked prefill + recurrent/KV steps) against one uncached forward over the same
            # tokens: positions P-1 .. P+2 predict the 4 warm-up tokens
            seq = torch.cat([prompt, torch.stack(warm_tokens[:-1], dim=1)], dim=1)
            full = impl.model(input_ids=seq, use_cache=False).logits[:, P - 1 :].float()
            cached = torch.stack(warm_logits, dim=1).float()
            extra["max_abs_logit_diff_cached_vs_full_forward"] = float((cached - full).abs().max())
            extra["greedy_tokens_match_full_forward"] = bool(torch.equal(full.argmax(-1), cached.argmax(-1)))
            del full, cached, seq
            fallbacks.reset()

        step_seconds = []
        t0 = time.perf_counter()
        state, logits = impl.prefill(prompt)
        tok = logits.argmax(-1)
        t1 = time.perf_counter()
        if impl.stack:
            prefill_calls = fallbacks.snapshot()
            fallbacks.reset()
            cache_start = cache_tensor_bytes(state)
            rss_start = proc_status_mb("VmRSS")
        t_decode = time.perf_counter() if impl.stack else t1
        out = [tok]
        for _ in range(N - 1):
            state, logits = impl.decode(tok, state)
            tok = logits.argmax(-1)
            out.append(tok)
            if impl.stack:
                step_seconds.append(time.perf_counter())
        t2 = time.perf_counter()
        if impl.stack:
            rss_end = proc_status_mb("VmRSS")
            cache_end = cache_tensor_bytes(state)
            decode_calls = fallbacks.snapshot()

    generated = torch.stack(out, dim=1)
    assert generated.shape == (B, N)
    prefill, decode = t1 - t0, t2 - t_decode
    log(
        f"  [{job['label']}] prefill {prefill * 1e3:.1f} ms, decode {N - 1} steps in {decode:.2f} s "
        f"({decode / (N - 1) * 1e3:.2f} ms/step)"
    )
    if impl.stack:
        n = impl.model.n_mamba_layers
        if decode_calls["mamba2_selective_state_update"] != n * (N - 1) or decode_calls["mamba2_chunk_scan"] != 0:
            raise RuntimeError(f"expected the recurrent state update once per Mamba layer per step, got {decode_calls}")
        if prefill_calls["mamba2_chunk_scan"] != n:
            raise RuntimeError(f"expected the chunked scan once per Mamba layer in the prefill, got {prefill_calls}")
        steps = [b - a for a, b in zip([t_decode] + step_seconds[:-1], step_seconds)]
        median = sorted(steps)[len(steps) // 2]
        growth = (cache_end - cache_start) / ((N - 1) * B)
        layer_types = [type(layer).__name__ for layer in getattr(state, "layers", [])]
        extra.update(
            architecture=cfg["architecture"],
            mamba_layers=n,
            tokens_per_s_median_step=B / median,
            ms_per_step_median=median * 1e3,
            rss_growth_during_generation_mb=rss_end - rss_start,
            cache_class=type(state).__name__,
            cache_layer_classes=layer_types,
            cache_bytes_after_prefill=cache_start,
            cache_bytes_at_end=cache_end,
            cache_growth_bytes_per_token_per_sequence=growth,
            memory_constant_in_generated_length=cache_end == cache_start,
            torch_fallback_calls_prefill=prefill_calls,
            torch_fallback_calls_per_decode_step={k: v / (N - 1) for k, v in decode_calls.items()},
        )
        if "pattern" in cfg:
            extra["layer_pattern"] = cfg["pattern"]
        if job.get("attn_implementation"):
            extra["attn_implementation"] = job["attn_implementation"]
            extra["attn_implementation_note"] = HYBRID_ATTN_NOTE[job["attn_implementation"]]
        how = (
            f"manual greedy loop: model(input_ids=token, cache=cache, use_cache=True), one token per call; cache: "
            f"transformers {type(state).__name__} ({', '.join(sorted(set(layer_types)))}): Mamba layers' conv and SSM "
            f"states updated in place (recurrent step mamba2_selective_state_update)"
            + ("; attention layers' keys/values concatenated every step (grows with the length)" if growth else "")
        )
        pre = "prefill: one forward over the prompt (chunked SSD scan, mamba2_chunk_scan)"
    elif impl.kind == "hf":
        how = "manual greedy loop: model(input_ids=token, cache=cache, use_cache=True), one token per call"
        pre = "prefill: one forward over the prompt (sequential scan)"
    else:
        how = "manual greedy loop over LM.step(token, caches)"
        pre = "prefill: LM.step token by token (mambapy has no cached parallel prefill)"
    return {
        "tokens_per_s": B * (N - 1) / decode,
        "seconds": decode,
        "prefill_seconds": prefill,
        "decode_steps": N - 1,
        "ms_per_step": decode / (N - 1) * 1e3,
        "tokens_per_s_per_sequence": (N - 1) / decode,
        "prompt_len": P,
        "gen_tokens": N,
        "params": count_params(impl.model),
        "rss_baseline_mb": baseline,
        **extra,
        "notes": (
            f"{impl.notes}; {how}; {pre}; seconds = decode time excluding prefill (which yields the first new "
            f"token); tokens/s = batch*(gen_tokens-1)/seconds; torch.inference_mode; {dtype} (model.to({dtype}))"
        ),
    }


def job_classify(job):
    """Sequence-classification inference: backbone -> final RMSNorm -> mean over
    positions -> Linear(d_model, num_classes) with bias, under inference_mode."""
    torch = setup_torch(job["threads"], job["seed"])
    counter = PscanCounter()
    baseline = proc_status_mb("VmRSS")
    cfg = CONFIGS[job["config"]]
    impl = Impl(job["impl"], cfg)
    impl.model.eval()
    head = torch.nn.Linear(cfg["d_model"], job["num_classes"]).eval()
    B, L = job["batch"], job["seq_len"]
    ids = torch.randint(0, cfg["vocab_size"], (B, L), dtype=torch.long)

    def classify():
        return head(impl.hidden(ids).mean(dim=1))

    with torch.inference_mode():
        log(f"  [{job['label']}] warm-up pass ...")
        counter.calls = 0
        t0 = time.perf_counter()
        logits = classify()
        warm = time.perf_counter() - t0
        pscan_calls = counter.calls
        log(f"  [{job['label']}] warm-up {warm:.2f} s, pscan calls {pscan_calls}")
        if tuple(logits.shape) != (B, job["num_classes"]):
            raise RuntimeError(f"logits have shape {tuple(logits.shape)}, expected {(B, job['num_classes'])}")
        if not bool(torch.isfinite(logits).all()):
            raise RuntimeError("non-finite classification logits")

        expect_pscan = job["impl"] != "transformers"
        if expect_pscan and pscan_calls == 0:
            raise RuntimeError("expected the parallel scan (mambapy.pscan) to run, but it was never called")
        if not expect_pscan and pscan_calls != 0:
            raise RuntimeError("expected the sequential scan, but mambapy.pscan was called")

        common = {
            "warmup_seconds": warm,
            "pscan_calls_per_pass": pscan_calls,
            "num_classes": job["num_classes"],
            "params": count_params(impl.model) + count_params(head),
            "rss_baseline_mb": baseline,
        }
        # If the parent has to abandon the timed passes, it still finds these.
        write_partial(
            job,
            dict(
                common,
                partial=True,
                warmup_sequences_per_s=B / warm,
                warmup_tokens_per_s=B * L / warm,
                peak_rss_mb=peak_rss_mb(),
            ),
        )

        times = []
        t_begin = time.perf_counter()
        while len(times) < job["min_passes"] or time.perf_counter() - t_begin < job["min_seconds"]:
            t0 = time.perf_counter()
            logits = classify()
            times.append(time.perf_counter() - t0)
        log(
            f"  [{job['label']}] {len(times)} timed passes, mean {sum(times) / len(times):.3f} s "
            f"(min {min(times):.3f} s, max {max(times):.3f} s)"
        )
    sec = sum(times) / len(times)
    if impl.kind == "hf":
        path = impl.notes
        how = "hidden = model.backbone(input_ids, use_cache=False).last_hidden_state (after norm_f)"
    else:
        path = f"{impl.build_notes}; scan: mambapy.pscan (pscan=True)"
        how = "hidden = norm_f(mamba(embedding(ids)))"
    return dict(
        common,
        sequences_per_s=B / sec,
        tokens_per_s=B * L / sec,
        seconds_per_batch=sec,
        seconds=sec,
        pass_seconds=times,
        passes_timed=len(times),
        logits_mean_abs=float(logits.abs().mean()),
        notes=(
            f"{path}; {how}; logits = Linear(d_model, {job['num_classes']}, bias)(hidden.mean(dim=1)); LM head "
            f"not applied; one batch of random byte tokens, 1 untimed warm-up pass, then timed passes until both "
            f"{job['min_passes']} passes and {job['min_seconds']:g} s; seconds_per_batch = mean pass time; "
            f"sequences/s = batch/seconds_per_batch; tokens/s = batch*seq_len/seconds_per_batch; "
            f"torch.inference_mode; float32"
        ),
    )


def job_parity(job):
    """Same weights in all three code paths: compare logits and greedy tokens."""
    torch = setup_torch(job["threads"], job["seed"])
    cfg = CONFIGS["reference"]
    hf = build_hf(cfg, use_mambapy=False).eval()
    mp, _ = build_mambapy(cfg, use_pscan=True)
    mp.eval()

    src = {}
    for name, p in hf.named_parameters():
        if name == "lm_head.weight":
            continue
        key = (
            name.replace("backbone.embeddings.", "embedding.")
            .replace("backbone.norm_f.", "norm_f.")
            .replace("backbone.layers.", "mamba.layers.")
        )
        src[key] = p.detach()
    src["lm_head.weight"] = src["embedding.weight"]
    missing, unexpected = mp.load_state_dict(src, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")

    ids = torch.randint(0, cfg["vocab_size"], (2, 100), dtype=torch.long)
    res = {"config": "reference", "batch": 2, "seq_len": 100}
    with torch.inference_mode():
        ref = hf(input_ids=ids, use_cache=False).logits
        for layer in hf.backbone.layers:
            layer.mixer.use_mambapy = True
        counter = PscanCounter()
        hf_ps = hf(input_ids=ids, use_cache=False).logits
        used = counter.calls
        for layer in hf.backbone.layers:
            layer.mixer.use_mambapy = False
        mp_logits = mp(ids)
        res["max_abs_logit_diff_transformers_mambapy_vs_sequential"] = float((hf_ps - ref).abs().max())
        res["transformers_mambapy_pscan_calls"] = used
        res["max_abs_logit_diff_mambapy_vs_transformers"] = float((mp_logits - ref).abs().max())
        res["loss_transformers"] = float(next_token_loss(ref, ids))
        res["loss_mambapy"] = float(next_token_loss(mp_logits, ids))
        head = torch.nn.Linear(cfg["d_model"], CLASSIFY_CLASSES)
        cls = [head(Impl(n, cfg, model=m).hidden(ids).mean(dim=1)) for n, m in (("transformers", hf), ("mambapy", mp))]
        res["max_abs_classify_logit_diff_mambapy_vs_transformers"] = float((cls[1] - cls[0]).abs().max())

        toks = {}
        for kind, impl_name in (("hf", "transformers"), ("mp", "mambapy")):
            impl = Impl(impl_name, cfg, model=hf if kind == "hf" else mp)
            state, logits = impl.prefill(ids[:, :16])
            seq, lg = [], [logits]
            tok = logits.argmax(-1)
            for _ in range(15):
                seq.append(tok)
                state, logits = impl.decode(tok, state)
                lg.append(logits)
                tok = logits.argmax(-1)
            seq.append(tok)
            toks[kind] = (torch.stack(seq, 1), torch.stack(lg, 1))
        res["greedy_16_tokens_equal"] = bool(torch.equal(toks["hf"][0], toks["mp"][0]))
        res["max_abs_decode_logit_diff"] = float((toks["hf"][1] - toks["mp"][1]).abs().max())
    tol = 1e-3
    res["ok"] = bool(
        res["max_abs_logit_diff_transformers_mambapy_vs_sequential"] < tol
        and res["max_abs_logit_diff_mambapy_vs_transformers"] < tol
        and res["max_abs_decode_logit_diff"] < tol
        and res["max_abs_classify_logit_diff_mambapy_vs_transformers"] < tol
        and res["greedy_16_tokens_equal"]
        and used > 0
    )
    return res


def job_env(job):
    import torch

    info = {"torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception as exc:  # reported, not fatal
        info["transformers"] = f"unavailable: {exc}"
    info["mambapy"] = dist_version("mambapy")
    import importlib.util

    info["optional_kernels_installed"] = {
        m: importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d", "kernels")
    }
    info["mkldnn"] = bool(torch.backends.mkldnn.is_available())
    return info


def job_env_parity(job):
    """Environment facts plus (unless skipped) the parity check, in one process."""
    out = {"env": job_env(job)}
    if job.get("parity"):
        try:
            out["parity"] = job_parity(job)
        except Exception as exc:
            log(traceback.format_exc())
            out["parity"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def worker_main(job_json, out_path):
    job = json.loads(job_json)
    job["_out"] = out_path
    result = {}
    rc = 0
    t0 = time.perf_counter()
    if job.get("config") in CONFIGS and is_stack_config(CONFIGS[job["config"]]):
        block_optional_kernels()  # before anything imports transformers
    try:
        fn = {"train": job_train, "generate": job_generate, "classify": job_classify, "env": job_env_parity}[
            job["task"]
        ]
        result = fn(job)
        try:
            import torch

            result["torch_threads"] = torch.get_num_threads()
        except Exception:
            pass
    except Exception as exc:
        tb = traceback.format_exc()
        log(tb)
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb.strip().splitlines()[-6:]}
        rc = 1
    result["peak_rss_mb"] = peak_rss_mb()
    result["process_seconds"] = time.perf_counter() - t0
    with open(out_path, "w") as f:
        json.dump(result, f)
    return rc


# --------------------------------------------------------------------------- #
# parent: plan, run workers, collect
# --------------------------------------------------------------------------- #


def child_status_mb(pid, field):
    """A kB field of /proc/PID/status in MiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_worker(job, timeout, threads, omp_wait_policy=None, max_rss_mb=0.0):
    """Runs one job in a fresh process. A timeout, a crash (e.g. the kernel's OOM killer) or, with max_rss_mb > 0,
    a resident set above max_rss_mb ends the worker and becomes an error result; the parent polls the worker's
    VmHWM so that such an entry still has a peak_rss_mb."""
    env = dict(os.environ)
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # transformers' pure-PyTorch paths only: never fetch hub kernels
        USE_HUB_KERNELS="0",
    )
    fd, out_path = tempfile.mkstemp(prefix="bench_torch_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-job", json.dumps(job), "--worker-out", out_path]
    t0 = time.perf_counter()

    def read_result():
        try:
            with open(out_path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=None, stdin=subprocess.DEVNULL)
        why, rc, polled_peak = None, None, None
        deadline = t0 + timeout
        while True:
            try:
                rc = proc.wait(timeout=max(0.0, min(0.5, deadline - time.perf_counter())))
                break
            except subprocess.TimeoutExpired:
                pass
            hwm = child_status_mb(proc.pid, "VmHWM")
            if hwm is not None:
                polled_peak = max(polled_peak or 0.0, hwm)
            if max_rss_mb and max_rss_mb > 0:
                rss = child_status_mb(proc.pid, "VmRSS")
                if rss is not None and rss > max_rss_mb:
                    proc.kill()
                    proc.wait()
                    rc = None
                    why = f"resident memory {rss:.0f} MB exceeded --job-max-rss-mb {max_rss_mb:.0f}; worker killed"
                    break
            if time.perf_counter() >= deadline:
                proc.kill()
                proc.wait()
                rc = None
                why = f"timed out after {timeout:.0f} s"
                break
        res = read_result()
        if why is None and rc < 0:
            why = f"worker killed by signal {-rc}" + (" (out of memory?)" if -rc == 9 else "")
        elif why is None and res is None:
            why = f"worker exited with code {rc} without a result"
        if why is not None:
            partial = res if res and res.get("partial") else None
            res = {"error": why}
            if partial:
                partial.pop("partial")
                what = "pass" if job.get("task") == "classify" else "step"
                res["error"] += f"; only the warm-up {what} finished (its numbers are included)"
                res.update(partial)
            if polled_peak is not None and polled_peak > (res.get("peak_rss_mb") or 0.0):
                # the worker's VmHWM as last seen by the parent (it may have grown further before it ended)
                res["peak_rss_mb"] = polled_peak
        elif res.get("partial"):
            what = "pass" if job.get("task") == "classify" else "step"
            res = {"error": f"worker exited with code {rc} after the warm-up {what}", **res}
            res.pop("partial")
        return res, time.perf_counter() - t0
    finally:
        for path in (out_path, out_path + ".tmp"):
            try:
                os.unlink(path)
            except OSError:
                pass


TASKS = ("train", "generate", "classify")


def parse_tasks(args):
    tasks = set(args.tasks.split(","))
    unknown = tasks - set(TASKS)
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(TASKS)}")
    return tasks


def classify_workloads(args):
    """(seq_len, batch) pairs from --classify-lengths / --classify-batches."""
    lengths = [int(x) for x in args.classify_lengths.split(",")]
    batches = [int(x) for x in args.classify_batches.split(",")]
    if len(batches) == 1:
        batches = batches * len(lengths)
    if len(batches) != len(lengths):
        raise SystemExit(
            f"--classify-batches needs one value or one per --classify-lengths value "
            f"({len(lengths)}), got {len(batches)}"
        )
    if min(lengths + batches) < 1:
        raise SystemExit("--classify-lengths and --classify-batches must be >= 1")
    return list(zip(lengths, batches))


def plan(args):
    jobs = []
    tasks = parse_tasks(args)
    impls = set(args.impls.split(",")) if args.impls else None
    if impls and not impls <= set(TRAIN_IMPLS + GEN_IMPLS):
        raise SystemExit(f"unknown impl(s) {sorted(impls - set(TRAIN_IMPLS + GEN_IMPLS))}")
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r}; choose from {sorted(CONFIGS)}")
    attns = hybrid_attns(args)

    def variants(cfg_name, impl_names):
        """(impl, extra job fields) pairs for a config: Mamba-1 configs run every listed impl; the Mamba-2 / hybrid
        stacks only transformers (the hybrid once per --hybrid-attn implementation)."""
        cfg = CONFIGS[cfg_name]
        if not is_stack_config(cfg):
            return [(impl, {}) for impl in impl_names if not impls or impl in impls]
        if impls and "transformers" not in impls:
            log(f"note: config {cfg_name} runs only with impl transformers, which --impls excludes")
            return []
        if "pattern" in cfg:
            return [("transformers", {"attn_implementation": a}) for a in attns]
        return [("transformers", {})]

    base = dict(threads=args.threads, seed=args.seed)
    train_jobs, slow_train_jobs = [], []
    if "train" in tasks:
        for train_config in train_configs(args):
            for impl, extra in variants(train_config, TRAIN_IMPLS):
                L = args.train_seq_len
                # only Mamba-1's sequential transformers scan is slow (quadratic backward); the stacks' is chunked
                slow = impl == "transformers" and not is_stack_config(CONFIGS[train_config])
                if slow and args.slow_train_seq_len:
                    L = args.slow_train_seq_len
                (slow_train_jobs if slow else train_jobs).append(
                    dict(
                        base,
                        task="train",
                        impl=impl,
                        config=train_config,
                        batch=args.train_batch,
                        seq_len=L,
                        steps=args.train_steps,
                        slow_step_seconds=args.slow_step_seconds,
                        reuse_warmup_seconds=args.reuse_warmup_seconds,
                        max_grad_norm=args.max_grad_norm,
                        **extra,
                    )
                )
    # the sequential transformers path can take very long: run it last
    jobs.extend(train_jobs)
    if "generate" in tasks:
        dtypes = args.gen_dtypes.split(",")
        for d in dtypes:
            if d not in ("float32", "bfloat16", "float16"):
                raise SystemExit(f"unknown --gen-dtypes entry {d!r}; choose from float32, bfloat16, float16")
        for cfg in configs:
            for dtype in dtypes:
                for b in [int(x) for x in args.gen_batches.split(",")]:
                    for impl, extra in variants(cfg, GEN_IMPLS):
                        jobs.append(
                            dict(
                                base,
                                task="generate",
                                impl=impl,
                                config=cfg,
                                batch=b,
                                seq_len=args.prompt_len + args.gen_tokens,
                                prompt_len=args.prompt_len,
                                gen_tokens=args.gen_tokens,
                                dtype=dtype,
                                **extra,
                            )
                        )
    if "classify" in tasks:
        for L, b in classify_workloads(args):
            for impl in TRAIN_IMPLS:
                if impls and impl not in impls:
                    continue
                jobs.append(
                    dict(
                        base,
                        task="classify",
                        impl=impl,
                        config="reference",
                        batch=b,
                        seq_len=L,
                        num_classes=CLASSIFY_CLASSES,
                        min_passes=args.classify_min_passes,
                        min_seconds=args.classify_seconds,
                    )
                )
    jobs.extend(slow_train_jobs)
    for j in jobs:
        j["label"] = (
            f"{j['task']} {j['impl']} {j['config']} B={j['batch']} L={j['seq_len']}"
            + (f" {j['dtype']}" if j.get("dtype", "float32") != "float32" else "")
            + (f" attn={j['attn_implementation']}" if j.get("attn_implementation") else "")
        )
    return jobs


def train_configs(args):
    """--train-configs (comma-separated) if given, else --train-config."""
    names = (args.train_configs or args.train_config).split(",")
    for c in names:
        if c not in CONFIGS:
            raise SystemExit(f"unknown training config {c!r}; choose from {sorted(CONFIGS)}")
    return names


def hybrid_attns(args):
    attns = args.hybrid_attn.split(",")
    for a in attns:
        if a not in HYBRID_ATTN_CHOICES:
            raise SystemExit(f"unknown --hybrid-attn {a!r}; choose from {', '.join(HYBRID_ATTN_CHOICES)}")
    return attns


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def make_entry(job, res):
    entry = {k: job.get(k) for k in ("impl", "task", "config", "batch", "seq_len", "threads")}
    if job["task"] == "generate":
        entry["dtype"] = job.get("dtype", "float32")
    if job["task"] == "classify":
        entry["sequences_per_s"] = rnd(res.get("sequences_per_s"), 4)
    entry["tokens_per_s"] = rnd(res.get("tokens_per_s"), 2)
    if job["task"] == "classify":
        entry["seconds_per_batch"] = rnd(res.get("seconds_per_batch"), 4)
    entry["seconds"] = rnd(res.get("seconds"), 4)
    entry["peak_rss_mb"] = rnd(res.get("peak_rss_mb"), 1)
    stack = CONFIGS.get(job.get("config"), {}).get("architecture")
    if stack:
        default_note = f"transformers {stack}, pure-PyTorch path" + (
            f", attn_implementation={job['attn_implementation']}" if job.get("attn_implementation") else ""
        )
    elif job["task"] == "train":
        default_note = HF_PATH_NOTES.get(job["impl"], "mambapy language model, pscan=True")
    elif job["task"] == "classify":
        default_note = (
            HF_PATH_NOTES.get(job["impl"], "mambapy, pscan=True")
            + "; sequence classification: final-norm hidden states, mean over positions, linear head"
        )
    else:
        default_note = "greedy decoding with recurrent state"
    entry["notes"] = res.get("notes", default_note)
    if "error" in res:
        entry["error"] = res["error"]
        if "traceback" in res:
            entry["traceback"] = res["traceback"]
    if job.get("attn_implementation"):
        entry["attn_implementation"] = job["attn_implementation"]
    for k, v in res.items():
        if k in entry or k in ("error", "traceback", "process_seconds"):
            continue
        if isinstance(v, float):
            v = rnd(v, 8 if "_diff" in k else 4)  # logit differences are ~1e-6
        elif isinstance(v, list):
            v = [rnd(x, 4) if isinstance(x, float) else x for x in v]
        entry[k] = v
    entry["process_seconds"] = rnd(res.get("process_seconds"), 2)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=default_threads(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    p.add_argument("--train-seq-len", type=int, default=None, help="training sequence length (default 2048)")
    p.add_argument(
        "--slow-train-seq-len",
        type=int,
        default=None,
        help="sequence length for the transformers sequential path only (default: --train-seq-len)",
    )
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-config", default="reference", help="training config (default reference)")
    p.add_argument(
        "--train-configs",
        default=None,
        help="training configs, comma-separated (e.g. reference,mamba2,hybrid); replaces --train-config when given",
    )
    p.add_argument(
        "--hybrid-attn",
        default=HYBRID_ATTN_CHOICES[0],
        help=f"attention implementation(s) for the hybrid config, comma-separated, each measured as its own entry: "
        f"{', '.join(HYBRID_ATTN_CHOICES)} (default {HYBRID_ATTN_CHOICES[0]}, the fastest on CPU)",
    )
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 3)")
    p.add_argument(
        "--slow-step-seconds",
        type=float,
        default=60.0,
        help="if the warm-up step takes longer than this, time only 1 step (default 60)",
    )
    p.add_argument(
        "--reuse-warmup-seconds",
        type=float,
        default=600.0,
        help="if the warm-up step takes longer than this, report it as the one measured step instead of "
        "running another (default 600)",
    )
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="clip_grad_norm_ in each step if > 0 (default off)")
    p.add_argument("--gen-tokens", type=int, default=None, help="new tokens per sequence (default 256)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--gen-batches", default="1,16")
    p.add_argument(
        "--gen-dtypes",
        default="float32",
        help="generation: model dtypes, comma-separated (float32, bfloat16, float16; default float32)",
    )
    p.add_argument(
        "--configs", default="reference,mamba130m", help=f"generation configs (comma-separated; {', '.join(CONFIGS)})"
    )
    p.add_argument(
        "--tasks",
        default="train,generate",
        help="comma-separated subset of train, generate, classify (default train,generate; classify only runs "
        "when listed, e.g. --tasks train,generate,classify)",
    )
    p.add_argument(
        "--classify-lengths",
        default=None,
        help="classify: sequence lengths, paired with --classify-batches (default 1024,16384)",
    )
    p.add_argument(
        "--classify-batches",
        default=None,
        help="classify: batch size for each --classify-lengths value, or one for all (default 16,1)",
    )
    p.add_argument("--classify-min-passes", type=int, default=2, help="classify: minimum timed passes (default 2)")
    p.add_argument(
        "--classify-seconds",
        type=float,
        default=None,
        help="classify: keep timing passes until this many seconds have passed (default 3)",
    )
    p.add_argument("--impls", default=None, help=f"subset of {sorted(set(TRAIN_IMPLS + GEN_IMPLS))}")
    p.add_argument("--skip-parity", action="store_true", help="skip the cross-implementation parity check")
    p.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active"],
        default=None,
        help="set OMP_WAIT_POLICY for the measurements (default: leave the environment as it is)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--job-timeout", type=float, default=10800.0, help="seconds before a measurement is abandoned (default 10800)"
    )
    p.add_argument(
        "--job-max-rss-mb",
        type=float,
        default=0.0,
        help="end a measurement whose resident memory exceeds this many MB and record an error entry (default 0: "
        "no limit; a worker killed by the kernel's OOM killer is recorded as an error entry either way)",
    )
    p.add_argument(
        "--output", default=None, help="also write the JSON to this file (rewritten after every entry, with complete=false)"
    )
    p.add_argument("--worker-job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker_job is not None:
        return worker_main(args.worker_job, args.worker_out)

    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    defaults = dict(
        train_seq_len=2048,
        train_steps=3,
        gen_tokens=256,
        classify_lengths="1024,16384",
        classify_batches="16,1",
        classify_seconds=3.0,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, QUICK[k] if args.quick else v)
    if args.classify_min_passes < 1:
        raise SystemExit("--classify-min-passes must be >= 1")
    parse_tasks(args)
    train_configs(args)
    hybrid_attns(args)
    workloads = classify_workloads(args)
    if args.quick and args.slow_train_seq_len is None:
        args.slow_train_seq_len = min(QUICK["slow_train_seq_len"], args.train_seq_len)

    t_start = time.perf_counter()
    out = {
        "torch": dist_version("torch"),
        "transformers": dist_version("transformers"),
        "mambapy": dist_version("mambapy"),
        "numpy": dist_version("numpy"),
        "python": platform.python_version(),
        "cpu": cpu_string(),
        "threads": args.threads,
        "quick": bool(args.quick),
        "omp_wait_policy": args.omp_wait_policy or os.environ.get("OMP_WAIT_POLICY") or "unset (runtime default)",
        "load_average_1m_start": load_average(),
        "settings": {
            "train_batch": args.train_batch,
            "train_seq_len": args.train_seq_len,
            "slow_train_seq_len": args.slow_train_seq_len or args.train_seq_len,
            "train_steps": args.train_steps,
            "slow_step_seconds": args.slow_step_seconds,
            "reuse_warmup_seconds": args.reuse_warmup_seconds,
            "max_grad_norm": args.max_grad_norm,
            "adamw": ADAMW,
            "prompt_len": args.prompt_len,
            "gen_tokens": args.gen_tokens,
            "gen_batches": [int(x) for x in args.gen_batches.split(",")],
            "classify_workloads": [{"seq_len": L, "batch": b} for L, b in workloads],
            "classify_min_passes": args.classify_min_passes,
            "classify_seconds": args.classify_seconds,
            "classify_classes": CLASSIFY_CLASSES,
            "classify_config": "reference",
            "configs": {k: CONFIGS[k] for k in CONFIGS},
            "train_configs": train_configs(args),
            "hybrid_attn_implementations": hybrid_attns(args),
            "job_max_rss_mb": args.job_max_rss_mb or None,
            "dtype": "float32 (generation: --gen-dtypes " + args.gen_dtypes + ")",
            "isolation": "one fresh process per entry; peak_rss_mb = VmHWM of that process",
        },
    }

    log(f"bench_torch: {args.threads} thread(s); {out['cpu']}")
    la = out["load_average_1m_start"]
    if la is not None and la > 0.5:
        log(f"WARNING: 1-minute load average is {la}: other work may be running; numbers may be unreliable")
    wp = args.omp_wait_policy
    if not args.skip_parity:
        log("parity check (same weights in transformers sequential / use_mambapy / mambapy) ...")
    env_job = dict(task="env", parity=not args.skip_parity, threads=args.threads, seed=args.seed, label="env")
    env_res, _ = run_worker(env_job, 900, args.threads, wp)
    if "error" in env_res:
        out["env_error"] = env_res["error"]
    env = env_res.get("env") or {}
    for k in ("torch", "transformers", "mambapy"):
        if env.get(k):
            out[k] = env[k]
    for k in ("optional_kernels_installed", "mkldnn"):
        if k in env:
            out[k] = env[k]
    if not args.skip_parity:
        par = env_res.get("parity") or {"error": env_res.get("error", "no result")}
        out["parity"] = {k: (rnd(v, 8) if isinstance(v, float) else v) for k, v in par.items()}
        log(f"  parity: {json.dumps(out['parity'])}")

    jobs = plan(args)
    results = []
    out["results"] = results

    def save(final):
        if args.output:
            out["complete"] = final
            tmp = args.output + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(out, indent=2) + "\n")
            os.replace(tmp, args.output)
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job['label']} ...")
        la = load_average()
        res, wall = run_worker(job, args.job_timeout, args.threads, wp, args.job_max_rss_mb)
        entry = make_entry(job, res)
        entry["load_average_1m_at_start"] = la
        results.append(entry)
        if "error" in entry:
            log(f"[{i}/{len(jobs)}] {job['label']}: ERROR {entry['error']}")
        else:
            seqs = f"{entry['sequences_per_s']} seq/s, " if job["task"] == "classify" else ""
            log(
                f"[{i}/{len(jobs)}] {job['label']}: {seqs}{entry['tokens_per_s']} tok/s, {entry['seconds']} s, "
                f"peak RSS {entry['peak_rss_mb']} MB ({wall:.1f} s wall)"
            )
        save(False)
    out["load_average_1m_end"] = load_average()
    out["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out.pop("complete", None)
    save(True)
    print(json.dumps(out, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
