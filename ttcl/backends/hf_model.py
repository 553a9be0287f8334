"""The torch backend's model: local checkpoints loaded with transformers, and a forward pass
whose results do not depend on the batch.

Loading (`load_model`): a transformers directory (config.json and weights, any causal LM
transformers has), or a GGUF file, which transformers dequantizes (float32) the first time; the
result is saved as a checkpoint under ~/.cache/ttcl/torch (keyed by the file's path, size and
time), so later loads read safetensors in a second instead of parsing and dequantizing the
GGUF again (half a minute for SmolLM2-135M). Only local files: HF_HUB_OFFLINE is set and every
call passes local_files_only. A missing path, a directory without config.json, a file that is
not GGUF, an architecture transformers has no causal LM for: a BackendError naming it.

Batch invariance (CPU). MKL rounds a matrix product differently with its shape: a linear
layer's x @ W^T, with W stored as torch stores it, has three regimes (1, 2 to 15, and 16 or
more rows of x); with several threads a long inner dimension is split by the number of rows;
an attention row's softmax and A·V sums round differently when padding shifts them or when
masked columns follow (a prefill's) or not (a decode step's). So on the CPU every linear layer
keeps W^T contiguous, which MKL multiplies as W @ x^T, with one rounding for any number of
tokens from 2 up (a lone token is paired with a copy of itself), over inner slices of at most
512; and attention runs per group of rows that hold the same columns, over those columns
only, with at least 3 query rows and 16 keys, A·V summed over slices of 256 columns
(`_attention`, `_eager`). A request then gives bit-identical logits alone, in any batch, and
forked from a cached prefix, in float32 (tested at 1 and 2 threads, to 1,400 positions; the
products' regimes were mapped at up to 16 threads and 5,000 columns). bfloat16 prefills alike
but its decode steps do not; models whose attention has soft caps or sinks use their own
eager attention, and their invariance is not guaranteed. On a
GPU only the grouping is kept (with sdpa inside it) and linear layers stay plain: results may
vary with the batch.

The forward pass takes its rows' layout (`Group`s: which rows hold which columns and which
queries are real) from the context variable `LAYOUT`, which the backend sets around each pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from .base import BackendError, GenerationRequest
from .chat import render_chat
from .llama import GGUF_MAGIC, file_magic

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
INSTALL = ("the torch backend needs torch and transformers: pip install 'ttcl[torch]' "
           "(install torch first where you want a particular build, e.g. the CPU one: "
           "pip install torch==2.13.0; an unpinned torch pulls the CUDA packages)")
# end-of-generation markers that tokenizers keep as special tokens (llama.cpp stops at these too)
EOG_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
             "<end_of_turn>", "<|end|>", "</s>")
MIN_QUERY_ROWS = 3  # attention products round alike from 3 query rows up (see the docstring)
MIN_KEYS = 16  # ... and over 16 key columns or more
AV_CHUNK = 256  # A·V products over at most this many columns round alike whatever their length
LINEAR_CHUNK = 512  # linear layers' inner slices: MKL splits none this short, at any thread count


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
    import json

    try:
        config = json.loads(Path(directory, "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackendError(f"cannot read model config {directory}/config.json: {e}") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    known = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if kind not in known:
        raise BackendError(f"unsupported architecture {kind!r} in {directory}: transformers "
                           f"{transformers.__version__} has no causal language model of that type")


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
        self.config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        self.base = self.model.base_model  # the decoder: its last hidden state is after the final norm
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.n_embd = int(self.config.hidden_size)
        forward = self.base.forward.__wrapped__ if hasattr(self.base.forward, "__wrapped__") else self.base.forward
        import inspect

        self.cache_kw = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        # bfloat16 and float16 go through the same kernels (faster where the CPU has AMX),
        # but their decode steps still vary with the batch: invariance is float32's
        self.batch_invariant = _grouped(self.model) and device == "cpu" and dtype == "float32"
        if device == "cpu":
            _row_invariant_linears(self.model, torch)
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


@functools.lru_cache(maxsize=None)
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


def _row_invariant_linears(model: Any, torch: Any) -> None:
    """Every plain linear layer of a CPU model multiplies x by W^T kept contiguous (see
    `_linear`): the weight is stored transposed, and `weight` becomes a view of it, so a
    tied embedding reads the same numbers and no memory is added."""
    with torch.no_grad():
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                if not module.weight.t().is_contiguous():  # a tied weight is done once
                    module.weight.data = module.weight.data.t().contiguous().t()
                module.forward = functools.partial(_linear, module)


def _linear(module: Any, x: Any) -> Any:
    """module(x) as x @ W^T with W^T contiguous: MKL computes it as W @ x^T, whose rounding is
    the same for any number of rows of x from 2 up (x @ W with W as stored rounds differently
    for 1, 2 to 15, and 16 or more rows). A single row is multiplied beside a copy of itself.
    With several threads MKL also splits a long inner dimension by the number of rows, so
    inputs wider than LINEAR_CHUNK are multiplied in equal slices, summed in order."""
    import torch

    # contiguous in: MKL's kernel, and so its rounding, also follows the strides
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    n, width = flat.shape
    if n == 1:
        flat = torch.cat([flat, flat])
    weight = module.weight.t()
    size = -(-width // -(-width // LINEAR_CHUNK))
    y = torch.mm(flat[:, :size], weight[:size])
    for start in range(size, width, size):
        y += torch.mm(flat[:, start:start + size], weight[start:start + size])
    y = y[:n]
    if module.bias is not None:
        y = y + module.bias
    return y.view(*x.shape[:-1], y.shape[-1])


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple:
    """Attention as transformers calls it (query (B, H, q, d), key and value (B, H_kv, kv, d),
    an additive mask (B, 1, q, kv)), run per group of rows of the current layout over the
    group's own columns and real queries: eager attention on the CPU, sdpa on a GPU. Padding
    never enters a product, so no row depends on the others, and no real query has all its
    keys masked. Returns (B, q, H, d); the pad queries' rows are zero."""
    import torch

    layout = LAYOUT.get() or [Group(slice(None), slice(None))]
    inner, least = _inner_attention(module, query, kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for g in layout:
        q = query[g.rows, :, g.queries]
        k, v = key[g.rows][:, :, g.cols], value[g.rows][:, :, g.cols]
        mask = None if attention_mask is None else attention_mask[g.rows][:, :, g.queries][..., g.cols]
        n = q.shape[2]
        if n < least:  # a product of 1 or 2 rows rounds unlike one of 3 or more
            q = torch.nn.functional.pad(q, (0, 0, 0, least - n))
            mask = None if mask is None else torch.nn.functional.pad(mask, (0, 0, 0, least - n))
        o, _ = inner(module, q, k, v, mask, **kwargs)
        out[g.rows, g.queries] = o[:, :n]
    return out, None


def _inner_attention(module: Any, query: Any, kwargs: dict) -> tuple[Any, int]:
    """The attention function for one group, and the fewest query rows it must be given."""
    if query.device.type != "cpu":  # a GPU: fast kernels, no batch invariance
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward, 1
    groups = getattr(module, "num_key_value_groups", 0)
    if groups and kwargs.get("softcap") is None and not hasattr(module, "sinks"):
        return _eager, -(-MIN_QUERY_ROWS // groups)  # the products have groups × queries rows
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise BackendError(f"unsupported architecture: {type(module).__name__} has no eager attention")
    return eager, MIN_QUERY_ROWS  # the model's own (soft caps, sinks), with repeat_kv's copies


def _eager(module: Any, query: Any, key: Any, value: Any, mask: Any, scaling: float,
           dropout: float = 0.0, **kwargs: Any) -> tuple:
    """Llama-style eager attention whose rounding does not depend on how many columns follow
    a query's last key (a decode step sees none, a prefill the rest of the prompt, masked):
    - the query heads that share a key/value head (grouped-query attention) are stacked as the
      rows of one product, without copying keys and values per head;
    - a group with fewer than MIN_KEYS keys gets masked zero keys: softmax and products over
      a handful of columns take other kernels;
    - A·V is summed over slices of AV_CHUNK columns from the first, in order: a longer
      product's rounding depends on its length, a masked column's weight is exactly 0.
    Returns (B, q, H, d)."""
    import torch
    from torch.nn.functional import pad

    b, h, n, d = query.shape
    kv_heads, columns = key.shape[1], key.shape[2]
    if columns < MIN_KEYS:
        extra = MIN_KEYS - columns
        key, value = pad(key, (0, 0, 0, extra)), pad(value, (0, 0, 0, extra))
        mask = query.new_zeros((b, 1, n, columns)) if mask is None else mask
        mask = pad(mask, (0, extra), value=torch.finfo(mask.dtype).min)
    q = query.reshape(b, kv_heads, h // kv_heads * n, d)  # heads j·g .. j·g+g-1 read kv head j
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = (scores.view(b, kv_heads, h // kv_heads, n, -1) + mask[:, :, None]).view(scores.shape)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = None
    for start in range(0, weights.shape[-1], AV_CHUNK):
        w, v = weights[..., start:start + AV_CHUNK], value[:, :, start:start + AV_CHUNK]
        if w.shape[-1] < MIN_KEYS:
            w, v = pad(w, (0, MIN_KEYS - w.shape[-1])), pad(v, (0, 0, 0, MIN_KEYS - v.shape[2]))
        part = torch.matmul(w, v)
        out = part if out is None else out.add_(part)
    return out.view(b, h, n, d).transpose(1, 2), None


def group_rows(keys: list, make: Any) -> list[Group]:
    """Consecutive rows with equal keys as groups; make(key) gives (cols, queries)."""
    groups, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            groups.append(Group(slice(start, i), *make(keys[start])))
            start = i
    return groups
