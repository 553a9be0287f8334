"""Process reward models at run time: a trained head on the policy's hidden states (`prm`),
and transformers PRM checkpoints (`hf_prm`).

A head (`ttcl train-prm` writes one) is a small MLP on the policy model's final hidden state
at the end of a step, in a safetensors file:

    score(step) = sigmoid(w2 · gelu(w1 · (h - mean) / std + b1) + b2)

It runs in numpy, so scoring needs neither torch nor a second model: the hidden states come
from the backend that runs the policy (llama.cpp's embeddings output or torch's last hidden
state), for the prompt the policy solved the question from with the solution so far as the
start of its reply, so they share the KV cache of the samples themselves.

`hf_prm(dir)` loads a PRM checkpoint with torch: a token-classification model (one or two
labels, read at the last token of each step), or a causal LM read the Math-Shepherd way (a
step tag after each step, the score P(good) / (P(good) + P(bad)) at the tag).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttcl.errors import TTCLError
from ttcl.parser import resource_dir
from ttcl.prompts import DEFAULT_DELIMITER
from ttcl.source import NotJSON, parse_json

HEADS_DIR = resource_dir("heads")  # the heads shipped with the package
# the names of the model the shipped head was trained on (a declaration's path, by file name)


class PRMError(TTCLError):
    """A PRM that cannot be loaded or does not fit the model it scores for."""


def resolve_head_path(path: str) -> Path:
    """A head file as given, else the shipped head of that name (`heads/arith.safetensors`
    and `arith.safetensors` both name the one in the package)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    shipped = HEADS_DIR / given.name
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise PRMError(f"no PRM head at {path}: train one with `ttcl train-prm --out {path}`")


@dataclass(frozen=True)
class Head:
    """A trained scoring head: weights as numpy arrays and the card's facts (`meta`)."""

    tensors: dict[str, Any]
    meta: dict[str, str]

    @property
    def d_model(self) -> int:
        return int(self.tensors["w1"].shape[1])

    def score(self, features: Any) -> Any:
        """P(the step leads to a correct answer) for each row of `features` (n, d_model)."""
        import numpy as np

        t = self.tensors
        x = (np.asarray(features, dtype=np.float32) - t["mean"]) / t["std"]
        hidden = _gelu(x @ t["w1"].T + t["b1"])
        logits = hidden @ t["w2"].T + t["b2"]
        return 1.0 / (1.0 + np.exp(-logits[:, 0]))

    def save(self, path: str | Path) -> None:
        """Write the head as safetensors, its facts in the file's metadata."""
        from safetensors.numpy import save_file

        save_file(
            {k: v.astype("float32") for k, v in self.tensors.items()},
            str(path),
            metadata={k: str(v) for k, v in self.meta.items()},
        )


def _gelu(x: Any) -> Any:
    import numpy as np

    # the tanh form, as torch.nn.GELU(approximate="tanh") computes it in training
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@functools.lru_cache(maxsize=16)
def load_head(path: str) -> Head:
    """The head in a safetensors file (cached: programs score many batches with one head)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    file = resolve_head_path(path)
    try:
        tensors = load_file(str(file))
        with safe_open(str(file), "np") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise PRMError(f"{file} is not a PRM head (safetensors): {e}") from None
    missing = {"w1", "b1", "w2", "b2", "mean", "std"} - set(tensors)
    if missing:
        raise PRMError(f"{file} is not a PRM head: it lacks {', '.join(sorted(missing))}")
    check_head(tensors, meta, str(file))
    return Head(tensors, meta)


def check_head(tensors: dict[str, Any], meta: dict[str, str], name: str) -> None:
    """Refuse a head whose weights cannot score: shapes that do not fit one another (or the
    hidden size its card states), weights that are not finite numbers, a `std` that is not
    positive. Each would otherwise surface as a numpy error, or as NaN scores, mid-run."""
    import numpy as np

    def bad(problem: str) -> PRMError:
        return PRMError(f"{name} is not a usable PRM head: {problem}", notes=("train it again with `ttcl train-prm`",))

    w1 = tensors["w1"]
    if w1.ndim != 2 or 0 in w1.shape:
        raise bad(f"w1 has shape {_shape(w1)}; it is (hidden units, model width)")
    units, width = w1.shape
    expected = {"b1": (units,), "w2": (1, units), "b2": (1,), "mean": (width,), "std": (width,)}
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise bad(f"{key} has shape {_shape(tensors[key])}, but w1 {_shape(w1)} needs {_shape(shape)}")
    stated = meta.get("hidden_size")
    if stated is not None and stated.strip() != str(width):
        raise bad(f"its card says hidden size {stated}, but its weights are {width} wide")
    for key in ("w1", "b1", "w2", "b2", "mean", "std"):
        t = tensors[key]
        if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
            raise bad(f"{key} holds {t.dtype}, not numbers")
        if not np.isfinite(t).all():
            raise bad(f"{key} holds NaN or infinite values")
    if not (tensors["std"] > 0).all():
        raise bad("std holds zero or negative values (the features would be divided by them)")


def _shape(t: Any) -> str:
    return str(tuple(int(n) for n in (t if isinstance(t, tuple) else t.shape)))


def check_fits(head: Head, width: int, model: str, path: str) -> None:
    """A clear error where a head was trained on a model of another width."""
    if head.d_model != width:
        base = head.meta.get("base_model", "another model")
        raise PRMError(
            f"the PRM head {path} was trained on {base} (hidden size {head.d_model}); "
            f"model `{model}` has hidden size {width}"
        )


def step_prefixes(steps: list[str], every_step: bool, delimiter: str = DEFAULT_DELIMITER) -> list[tuple[int, str]]:
    """(step index, the solution up to and including that step) for each step to score:
    every step, or only the last (`agg=last` needs no more)."""
    indices = range(len(steps)) if every_step else [len(steps) - 1]
    return [(j, delimiter.join(s.strip() for s in steps[: j + 1])) for j in indices]


# --------------------------------------------------------------------------- hf_prm


class HFPRM:
    """A transformers PRM checkpoint from a local directory, scoring steps with torch."""

    def __init__(self, path: str, device: str = "cpu", step_tag: str = "ки", good: str = "+", bad: str = "-"):
        try:
            import torch  # noqa: F401
            import transformers
        except ImportError:
            raise PRMError(
                "hf_prm needs torch and transformers: pip install 'ttcl[torch]' "
                "(on a machine without a GPU, pip install torch==2.13.0 first)"
            ) from None
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise PRMError(f"hf_prm: {path} is not a transformers checkpoint (no config.json there)")
        transformers.logging.set_verbosity_error()
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        arch = (config.architectures or [""])[0]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        if not self.tokenizer.is_fast:
            raise PRMError(f"hf_prm: {path} needs a fast tokenizer (tokenizer.json) to find step ends")
        self.tokenizer.padding_side = "right"  # real tokens keep their positions
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        loader: type[transformers.AutoModelForTokenClassification] | type[transformers.AutoModelForCausalLM]
        if arch.endswith("ForTokenClassification"):
            loader, self.kind = transformers.AutoModelForTokenClassification, "token"
        elif arch.endswith("ForCausalLM"):
            loader, self.kind = transformers.AutoModelForCausalLM, "tagged"
            self.tag, self.good, self.bad = step_tag, self._token(good), self._token(bad)
        else:
            raise PRMError(
                f"hf_prm: {path} is a {arch or 'model of unknown architecture'}; a PRM is a "
                "...ForTokenClassification or a ...ForCausalLM read at step tags"
            )
        # transformers types `PreTrainedModel.to` as a functools.wraps wrapper that mypy does not bind
        self.model = loader.from_pretrained(directory, local_files_only=True).to(device).eval()  # type: ignore[arg-type]
        self.device = device
        if self.kind == "token" and self.model.config.num_labels not in (1, 2):
            raise PRMError(f"hf_prm: {path} has {self.model.config.num_labels} labels; a PRM has 1 or 2")

    def _token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise PRMError(f"hf_prm: the tokenizer has no token for {text!r}")
        return ids[-1]

    def score(self, question: str, solutions: list[list[str]]) -> list[list[float]]:
        """Per-step scores of each solution (a list of steps), one forward pass per solution
        batch: the steps' end positions are read from one pass over the whole text."""
        import torch

        texts, ends = zip(*(self._layout(question, steps) for steps in solutions))
        enc = self.tokenizer(
            list(texts), return_tensors="pt", padding=True, add_special_tokens=False, return_offsets_mapping=True
        )
        offsets = enc.pop("offset_mapping")
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
        scores = []
        for row, char_ends in enumerate(ends):
            positions = [_token_at(offsets[row], c) for c in char_ends]
            scores.append([self._probability(out[row, p]) for p in positions])
        return scores

    def _layout(self, question: str, steps: list[str]) -> tuple[str, list[int]]:
        """The text and, for each step, the character index of its last character (or tag)."""
        text, ends = question.strip() + "\n\n", []
        for step in steps:
            text += step.strip() + (" " + self.tag if self.kind == "tagged" else "")
            ends.append(len(text) - 1)
            text += "\n\n"
        return text.rstrip(), ends

    def _probability(self, logits: Any) -> float:
        import torch

        if self.kind == "tagged":
            pair = torch.softmax(logits[[self.good, self.bad]], dim=-1)
            return float(pair[0])
        if logits.shape[-1] == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, dim=-1)[1])


def _token_at(offsets: Any, char: int) -> int:
    """The index of the token that covers character `char` (the last one starting before it)."""
    best = 0
    for i, (start, end) in enumerate(offsets.tolist()):
        if end > start and start <= char:
            best = i
    return best


@functools.lru_cache(maxsize=4)
def load_hf_prm(path: str, device: str = "cpu") -> HFPRM:
    """The hf_prm checkpoint in `path`, loaded once per process."""
    return HFPRM(path, device)


def read_card(head_path: str | Path) -> dict:
    """The JSON card written beside a head (`arith.safetensors` -> `arith.json`), or {}."""
    card = Path(head_path).with_suffix(".json")
    if not card.is_file():
        return {}
    try:
        data = parse_json(card.read_bytes())
    except OSError as e:
        raise PRMError(f"{card}: cannot read the PRM head's card: {e.strerror or e}") from None
    except NotJSON as e:
        raise PRMError(f"{card}: not a PRM head's card: {e}") from None
    if not isinstance(data, dict):
        raise PRMError(f"{card}: not a PRM head's card (a JSON object)")
    return data
