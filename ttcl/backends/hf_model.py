"""The torch backend's model: local checkpoints loaded with transformers, and a forward pass
whose results do not depend on the batch.

Loading (`load_model`): a transformers directory (config.json and weights, any causal LM
transformers has), or a GGUF file, which transformers dequantizes (float32) the first time; the
result is saved as a checkpoint under ~/.cache/ttcl/torch (keyed by the file's path, size and
time), so later loads read safetensors in a second instead of parsing and dequantizing the
GGUF again (half a minute for SmolLM2-135M). Only local files: HF_HUB_OFFLINE is set and every
call passes local_files_only. A missing path, a directory without config.json, a file that is
not GGUF, an architecture transformers has no causal LM for: a BackendError naming it.

Batch invariance (CPU, float32), by construction. A BLAS library picks its kernel, blocking
and thread split from a product's shape and the CPU it runs on, so x·W^T rounds a row
differently with the number of rows beside it, and differently again on another CPU. Here no
sum that a row's result depends on is rounded at all:
- every linear layer (`_fixed_linear`) rounds its input rows and its weight rows to fixed-point
  integers (a power of two per row, 21 to 22 bits each, fewer the wider the layer) whose
  products sum exactly in float64: any order of the sum gives the same integer;
- attention (`_exact_attention`) does the same for Q·K^T, puts the softmax weights on a fixed
  grid so their sum is exact, and sums A·V exactly over the query's own keys; masked columns
  weigh exactly 0, so a decode step and a prefill give a query the same result;
- SiLU is computed from `exp` (`_silu`): torch's own rounds an element differently at the
  vectorized body of a tensor and at its scalar tail.
The rest (RMSNorm's per-row mean, RoPE, residual adds, the log-softmax over the vocabulary) is
elementwise or reduces one row in an order that depends on its length alone. A request then
gives bit-identical tokens, log-probabilities and hidden states alone, in any batch, forked
from a cached prefix, prefilled whole or in chunks, and at any thread count, on the x86-64
CPUs measured (not the same bits across CPUs: exp and the row reductions use the CPU's vector
width). One test machine gave log-probabilities that differ by up to 4e-4 (the same tokens)
between a batch and one request at a time: an operation outside these kernels (exp, RoPE's
cos and sin, a row reduction) rounds differently there, not yet found.
The price: float64 products, measured at 2.2x slower decoding than plain float32 kernels on
SmolLM2-135M (`bench/torch_vs_llama.py`); the fixed point keeps 19 to 24 bits per factor,
closer to float32 than the GGUF's quantized weights are. bfloat16 and float16, models whose
attention has soft caps or sinks (the model's own eager attention) and GPUs (sdpa, plain
linear layers) are not batch invariant.

The forward pass takes its rows' layout (`Group`s: which rows hold which columns and which
queries are real) from the context variable `LAYOUT`, which the backend sets around each pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from ttcl.backends.base import BackendError, GenerationRequest
from ttcl.backends.chat import render_chat
from ttcl.backends.models import GGUF_MAGIC, file_magic
from ttcl.source import NotJSON, parse_json

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
INSTALL = (
    "the torch backend needs torch and transformers: pip install 'ttcl[torch]' "
    "(install torch first where you want a particular build, e.g. the CPU one: "
    "pip install torch==2.13.0; an unpinned torch pulls the CUDA packages)"
)
# end-of-generation markers that tokenizers keep as special tokens (llama.cpp stops at these too)
EOG_TEXTS = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
)
# Exact attention (`_exact_attention`): at most 2**KEY_BITS keys per query; softmax weights on a
# grid of 2**-WEIGHT_BITS so that their sum over that many keys stays below 2**53; A·V's
# rescaled weights and values share the other bits of a float64 mantissa.
KEY_BITS = 15
WEIGHT_BITS = 53 - KEY_BITS
SCALED_WEIGHT_BITS = 19
SILU_MODULES = ("SiLU", "SiLUActivation")  # torch's and transformers' SiLU, replaced by `_silu`
VALUE_BITS = 53 - KEY_BITS - SCALED_WEIGHT_BITS


# --------------------------------------------------------------------------- model files


def _torch() -> tuple[Any, Any]:
    """torch and transformers, imported once, offline and quiet."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: never reach the Hub
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import torch
        import transformers
    except ImportError:
        raise BackendError(INSTALL) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return torch, transformers


def locate(path: str) -> tuple[str, str | None]:
    """(directory, GGUF file name) of a model path: a GGUF file, or a transformers directory
    (file name None). Raises BackendError for anything else."""
    if not os.path.exists(path):
        raise BackendError(f"model file or directory not found: {path}")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise BackendError(f"not a transformers model directory (no config.json): {path}")
        return path, None
    if file_magic(path) != GGUF_MAGIC:
        raise BackendError(f"not a GGUF model file or a transformers model directory: {path}")
    return os.path.dirname(path), os.path.basename(path)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttcl" / "torch"


def _converted(path: str) -> Path:
    """Where the dequantized checkpoint of a GGUF file is kept, keyed by its path, size and
    modification time."""
    stat = os.stat(path)
    return _cache_dir() / hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def _check_architecture(directory: str, transformers: Any) -> None:
    """Refuse a config whose model type transformers has no causal LM for, before loading."""
    try:
        config = parse_json(Path(directory, "config.json").read_bytes())
    except (OSError, NotJSON) as e:
        raise BackendError(f"cannot read model config {directory}/config.json: {e}") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    known = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if kind not in known:
        raise BackendError(
            f"unsupported architecture {kind!r} in {directory}: transformers "
            f"{transformers.__version__} has no causal language model of that type"
        )


def _from_pretrained(directory: str, gguf: str | None) -> tuple[Any, Any]:
    """(model, tokenizer) from a directory or a GGUF file in it, local files only."""
    _, transformers = _torch()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        _check_architecture(directory, transformers)
    where = os.path.join(directory, gguf or "")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except Exception as e:  # transformers raises ValueError, OSError, KeyError ... with long texts
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "unsupported architecture" if "not supported" in reason or "Unrecognized" in reason else "cannot load"
        raise BackendError(f"{kind}: transformers cannot load {where} as a causal language model: {reason}") from None
    return model, tokenizer


def _load_gguf(path: str) -> tuple[Any, Any]:
    """A GGUF file's model and tokenizer: from the converted checkpoint when there is one, else
    dequantized by transformers and saved for next time (where the cache is writable)."""
    target = _converted(path)
    if (target / "config.json").is_file():
        return _from_pretrained(str(target), None)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar is a bare tqdm
        model, tokenizer = _from_pretrained(*locate(path))
    # the dequantized weights are plain tensors now; transformers refuses to save a model
    # that still says it is GGUF-quantized
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        os.replace(temporary, target)
    except OSError:  # read-only, full or raced by another process: convert again next time
        import shutil

        shutil.rmtree(temporary, ignore_errors=True)
    return model, tokenizer


# --------------------------------------------------------------------------- the model


class Model:
    """A loaded causal LM with its tokenizer and chat template, on one device and dtype.
    Shared by every backend on the same file and placement (see `load_model`)."""

    def __init__(self, path: str, device: str, dtype: str):
        torch, transformers = _torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device cuda: torch {torch.__version__} sees no CUDA GPU")
        directory, gguf = locate(path)
        self.model, self.tokenizer = _load_gguf(path) if gguf else _from_pretrained(directory, None)
        self.device = torch.device(device)
        self.model.to(device=self.device, dtype=getattr(torch, dtype)).eval()
        self.config = (
            self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        )
        self.base = self.model.base_model  # the decoder: its last hidden state is after the final norm
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.n_embd = int(self.config.hidden_size)
        forward = self.base.forward.__wrapped__ if hasattr(self.base.forward, "__wrapped__") else self.base.forward
        import inspect

        self.cache_kw = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        # bfloat16 and float16 go through the same kernels (faster where the CPU has AMX),
        # but their decode steps still vary with the batch: invariance is float32's
        self.batch_invariant = (
            _grouped(self.model)
            and device == "cpu"
            and dtype == "float32"
            and getattr(self.config, "attn_logit_softcapping", None) is None
            and not any(hasattr(m, "sinks") for m in self.model.modules())
        )
        if device == "cpu" and dtype == "float32":
            _exact_cpu_kernels(self.model, torch)
        self._set_tokens()

    def _set_tokens(self) -> None:
        tok = self.tokenizer
        template = tok.chat_template
        self.chat_template = template.get("default") if isinstance(template, dict) else template
        self.bos, self.bos_text = tok.bos_token_id, tok.bos_token or ""
        self.eos_text = tok.eos_token or ""
        ids: set[int] = set()
        generation = getattr(self.model, "generation_config", None)
        for source in (self.config.eos_token_id, getattr(generation, "eos_token_id", None), tok.eos_token_id):
            ids.update(source if isinstance(source, (list, tuple)) else [] if source is None else [source])
        added = tok.get_added_vocab()
        ids.update(added[text] for text in EOG_TEXTS if text in added)
        self.eog = sorted(i for i in ids if isinstance(i, int) and i >= 0)
        import torch

        self.eog_index = torch.tensor(self.eog, dtype=torch.long)

    def tokenize(self, text: str, special: bool) -> list[int]:
        """Tokens of `text`; `special`: a rendered prompt (BOS added if the tokenizer adds one,
        control tokens parsed), else plain text (options, counts)."""
        tokens = list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        if special and len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]  # the template wrote bos_token and the tokenizer added another
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def render(self, request: GenerationRequest, name: str) -> str:
        """The prompt text of a request by this model's chat template (see `render_chat`)."""
        return render_chat(self.chat_template, request, name, self.bos_text, self.eos_text)

    def logits(self, hidden: Any) -> Any:
        """Next-token logits (float32, on the CPU) from last hidden states (rows, d_model)."""
        import torch

        out = self.head(hidden).float()
        if self.softcap:  # Gemma 2's final soft cap, which the output projection alone leaves out
            out = torch.tanh(out / self.softcap) * self.softcap
        return out.cpu()


@functools.cache
def load_model(path: str, device: str, dtype: str) -> Model:
    """One loaded model per (file, device, dtype): backends with other settings share weights."""
    return Model(path, device, dtype)


# --------------------------------------------------------------------------- batch invariance

LAYOUT: contextvars.ContextVar = contextvars.ContextVar("ttcl_attention_layout", default=None)


class Group(NamedTuple):
    """Rows of a forward pass that hold the same key columns: attention for them runs over
    those columns (`cols`, a slice or an index tensor) and their real queries only."""

    rows: slice
    cols: Any
    queries: slice = slice(None)


def _grouped(model: Any) -> bool:
    """Route the model's attention through `_attention` (per group of rows, over their own
    columns); False where this transformers has no attention registry to plug into, and the
    2-D mask alone keeps padding out."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:
        return False
    AttentionInterface.register("ttcl", _attention)
    AttentionMaskInterface.register("ttcl", eager_mask)  # additive float masks, sliced per group
    try:
        model.set_attn_implementation("ttcl")
    except (AttributeError, ValueError):  # an older transformers, or a model that refuses
        return False
    return model.config._attn_implementation == "ttcl"  # a model without AttentionInterface keeps its own


def _exact_cpu_kernels(model: Any, torch: Any) -> None:
    """Give a CPU float32 model the batch-invariant kernels (see the module docstring): every
    plain linear layer multiplies in fixed point (`_fixed_linear`, its weight quantized once
    here and kept beside the float32 one, which a tied embedding reads) and every SiLU is
    computed from `exp` (`_silu`)."""
    with torch.no_grad():
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                integers, exponents = _fixed(module.weight.detach().to(torch.float64), _weight_bits(module.in_features))
                module.ttcl_fixed = (integers.t().contiguous(), _pow2(exponents.reshape(-1)))
                module.forward = functools.partial(_fixed_linear, module)
            elif type(module).__name__ in SILU_MODULES:
                module.forward = _silu


def _bits(terms: int) -> int:
    """Bits that the two factors of a product summed over `terms` terms may share so that every
    partial sum is an integer of at most 53 bits, exact in float64 in any order."""
    return 53 - max(1, math.ceil(math.log2(terms)))


def _weight_bits(width: int) -> int:
    return _bits(width) // 2


def _pow2(exponents: Any) -> Any:
    """2**exponents in float64, exact for the integer exponents used here."""
    import torch

    return torch.pow(2.0, exponents.to(torch.float64))


def _fixed(x: Any, bits: int) -> tuple[Any, Any]:
    """x (float64) as integers of at most `bits` bits times a power of two per row (the last
    dimension): (integers, exponents), x ≈ integers * 2**exponents. The exponent depends on
    the row alone, so a row rounds the same wherever it sits."""
    import torch

    _, top = torch.frexp(x.abs().amax(-1, keepdim=True))  # every |x| < 2**top
    exponent = top - bits
    return torch.round(x * _pow2(-exponent)), exponent


def _fixed_linear(module: Any, x: Any) -> Any:
    """module(x) with an exact product: the rows of x and of W are rounded to fixed-point
    integers (per row, `_fixed`) with few enough bits that x·W^T, summed over the inner
    dimension in float64, is exact whatever order, blocking or thread count the BLAS library
    picks. Each output is then one rounding of a value that depends on its row alone."""
    import torch

    integers, scales = module.ttcl_fixed
    flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
    rows, exponents = _fixed(flat, _bits(module.in_features) - _weight_bits(module.in_features))
    y = torch.mm(rows, integers).mul_(_pow2(exponents)).mul_(scales).to(x.dtype)
    if module.bias is not None:
        y = y + module.bias
    return y.view(*x.shape[:-1], y.shape[-1])


def _silu(x: Any) -> Any:
    """x·sigmoid(x) from `exp`: torch's own SiLU and sigmoid round an element differently at a
    tensor's vectorized body and its scalar tail, so a row's result would depend on the batch."""
    import torch

    return x / (1 + torch.exp(-x))


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple:
    """Attention as transformers calls it (query (B, H, q, d), key and value (B, H_kv, kv, d),
    an additive mask (B, 1, q, kv)), run per group of rows of the current layout over the
    group's own columns and real queries: `_exact_attention` on the CPU in float32, the
    model's eager attention where it has soft caps or sinks, sdpa on a GPU. Returns (B, q, H, d)."""
    layout = LAYOUT.get() or [Group(slice(None), slice(None))]
    inner = _inner_attention(module, query, kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for g in layout:
        q = query[g.rows, :, g.queries]
        k, v = key[g.rows][:, :, g.cols], value[g.rows][:, :, g.cols]
        mask = None if attention_mask is None else attention_mask[g.rows][:, :, g.queries][..., g.cols]
        o, _ = inner(module, q, k, v, mask, **kwargs)
        out[g.rows, g.queries] = o
    return out, None


def _inner_attention(module: Any, query: Any, kwargs: dict) -> Any:
    """The attention function for one group of rows."""
    if query.device.type != "cpu":  # a GPU: fast kernels, no batch invariance
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    import torch

    if query.dtype == torch.float32 and kwargs.get("softcap") is None and not hasattr(module, "sinks"):
        return _exact_attention
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise BackendError(f"unsupported architecture: {type(module).__name__} has no eager attention")
    return eager  # the model's own (soft caps, sinks, bfloat16): not batch invariant


def _exact_attention(
    module: Any, query: Any, key: Any, value: Any, mask: Any, scaling: float, dropout: float = 0.0, **kwargs: Any
) -> tuple:
    """Softmax attention whose every sum is exact, so a query's result depends only on its own
    keys, not on how many queries share the pass nor how many masked columns follow:
    - Q·K^T multiplies fixed-point rows (`_fixed`) whose products sum exactly over the head
      dimension;
    - the softmax's weights exp(s - max) are rounded to multiples of 2**-WEIGHT_BITS, so their
      sum is an exact integer;
    - A·V: a key's weight is rescaled to the largest value exponent among the query's allowed
      keys (which only those keys decide) and rounded to fixed point, values are fixed point per
      key, and the product sums exactly over at most 2**KEY_BITS keys.
    Masked keys weigh exactly 0. The query heads that share a key/value head (grouped-query
    attention) are stacked as the rows of one product. Returns (B, q, H, d)."""
    import torch

    b, h, n, d = query.shape
    kv_heads = key.shape[1]
    columns = key.shape[2]
    if columns > 2**KEY_BITS:
        raise BackendError(f"batch-invariant attention covers at most {2**KEY_BITS} keys, not {columns}")
    q = query.reshape(b, kv_heads, h // kv_heads * n, d).to(torch.float64)  # heads j·g .. j·g+g-1 read kv head j
    share = _bits(d)
    qi, qe = _fixed(q, share // 2)
    ki, ke = _fixed(key.to(torch.float64), share - share // 2)
    scores = torch.matmul(qi, ki.transpose(2, 3)).mul_(_pow2(qe)).mul_(_pow2(ke.transpose(2, 3))).mul_(scaling)
    rows = scores.view(b, kv_heads, h // kv_heads, n, columns)
    if mask is None:
        allowed = torch.ones_like(rows, dtype=torch.bool)
    else:
        rows = rows + mask[:, :, None].to(torch.float64)
        allowed = (mask > torch.finfo(mask.dtype).min / 2)[:, :, None].expand_as(rows)
    scores, allowed = rows.reshape(scores.shape), allowed.reshape(scores.shape)
    top = scores.masked_fill(~allowed, -math.inf).amax(-1, keepdim=True)
    weights = torch.floor(torch.exp(scores - top).masked_fill(~allowed, 0.0) * 2.0**WEIGHT_BITS)
    total = weights.sum(-1, keepdim=True).clamp_min(1.0)
    vi, ve = _fixed(value.to(torch.float64), VALUE_BITS)
    ve = ve.transpose(2, 3)  # (B, H_kv, 1, kv): each key's value exponent
    lead = ve.expand_as(scores).masked_fill(~allowed, torch.iinfo(ve.dtype).min).amax(-1, keepdim=True)
    lead = torch.where(lead == torch.iinfo(ve.dtype).min, 0, lead)  # a row with no key (padding)
    weights = torch.floor(weights.mul_(_pow2(ve)).mul_(_pow2(-lead - (WEIGHT_BITS - SCALED_WEIGHT_BITS))))
    out = (torch.matmul(weights, vi) * _pow2(lead + WEIGHT_BITS - SCALED_WEIGHT_BITS) / total).to(query.dtype)
    return out.view(b, h, n, d).transpose(1, 2), None


def group_rows(keys: list, make: Any) -> list[Group]:
    """Consecutive rows with equal keys as groups; make(key) gives (cols, queries)."""
    groups, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            groups.append(Group(slice(start, i), *make(keys[start])))
            start = i
    return groups
