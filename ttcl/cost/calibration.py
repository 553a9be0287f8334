"""Calibration: token-length priors measured by earlier runs, per model, for the cost analyzer.

A calibration file is JSON:

    {"format": "ttcl-calibration", "version": 1,
     "models": {"smollm2-135m": {"prompt_tokens": 79, "answer_tokens": 61.5, "answer_steps": 3.2,
                                 "step_tokens": 18.4, "search_steps": 4.1, "verify_tokens": 41.0,
                                 "questions": 20}}}

`ttcl.cost.fit.calibrate(graph, results)` builds one from the `Result`s of a program's runs
(`ttcl run --calibration-out` and the benchmarks write it); `merge` folds several together.

`shipped()` is the calibration TTCL ships (`priors.json`, measured by bench/priors.py): the
priors of the known models, which an estimate uses where it is given no calibration.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttcl.errors import UsageError
from ttcl.source import NotJSON, parse_json, write_text

FORMAT: Final = "ttcl-calibration"
SHIPPED: Final = "shipped"  # the source of the priors shipped for the known models


class Priors(BaseModel):
    """Measured token lengths for one model; None where the runs said nothing about it."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: float | None = None  # a rendered solve prompt (chat template and question)
    answer_tokens: float | None = None  # generated tokens of a whole answer
    answer_steps: float | None = None  # steps of a whole answer
    step_tokens: float | None = None  # generated tokens per search step
    search_steps: float | None = None  # steps per search answer
    verify_tokens: float | None = None  # verifier prompt tokens per request, after prefix sharing
    # measured over estimated tokens per "op.component" (prefill, decode, verifier), with the
    # priors above: what lengths alone miss, such as a search's pruned proposals (it runs as
    # many rounds as its longest beam, not its average one) or prompts shared by a batch
    factors: dict[str, float] = Field(default_factory=dict)
    questions: int = 0


class Calibration(BaseModel):
    """Priors per model, keyed by the model's declared path ("smollm2-135m", a GGUF path)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ttcl-calibration"] = FORMAT
    version: Literal[1] = 1
    models: dict[str, Priors] = Field(default_factory=dict)
    source: str = Field(default="", exclude=True)  # the file it was read from, for reports

    def for_model(self, decl: dict) -> Priors | None:
        """The priors for a model declaration of the IR, if this calibration has them."""
        return self.models.get(model_key(decl))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration file; a missing or malformed one is a clear `UsageError`."""
        try:
            data = parse_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise UsageError(f"calibration file not found: {path}") from None
        except OSError as e:
            raise UsageError(f"{path}: cannot read the calibration file: {e.strerror or e}") from None
        except NotJSON as e:
            raise UsageError(f"{path}: not a calibration file: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f'{path}: not a calibration file (no "format": "{FORMAT}")')
        try:
            return cls.model_validate(data).model_copy(update={"source": str(path)})
        except ValidationError as e:
            first = e.errors()[0]
            raise UsageError(
                f"{path}: malformed calibration at {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None

    def save(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json(indent=1) + "\n")

    def merge(self, other: Calibration) -> Calibration:
        """Both calibrations' models; where both have a model, averages weighted by questions."""
        models = dict(self.models)
        for key, theirs in other.models.items():
            models[key] = _weighted(models[key], theirs) if key in models else theirs
        return Calibration(models=models, source=self.source or other.source)


@functools.cache
def shipped() -> Calibration:
    """The priors measured for the known models (`priors.json` beside this module, written
    by bench/priors.py), which estimates use where they are given no calibration."""
    text = resources.files(__package__).joinpath("priors.json").read_text(encoding="utf-8")
    return Calibration.model_validate_json(text).model_copy(update={"source": SHIPPED})


def model_key(decl: dict) -> str:
    """How a calibration names a model: its declared path, a served model's name at its URL,
    or `spec` for numbers alone."""
    if decl.get("kind") == "openai":
        return f"{decl.get('model')}@{decl.get('url')}"
    return str(decl.get("path", "spec"))


def _weighted(a: Priors, b: Priors) -> Priors:
    total = (a.questions + b.questions) or 1
    values: dict[str, Any] = {
        "factors": {
            name: (a.factors.get(name, 1.0) * a.questions + b.factors.get(name, 1.0) * b.questions) / total
            for name in a.factors.keys() | b.factors.keys()
        }
    }
    for name in Priors.model_fields:
        if name in ("questions", "factors"):
            continue
        x, y = getattr(a, name), getattr(b, name)
        values[name] = x if y is None else y if x is None else (x * a.questions + y * b.questions) / total
    return Priors(**values, questions=a.questions + b.questions)
