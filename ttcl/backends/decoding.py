"""What the local backends (llama.cpp's and torch's) share about decoding, one sequence at a
time: the state of a sequence being generated, the rules that finish it, the search for stop
strings in its text, and the `Generation` it gives; and for every backend module, one shared
backend per model and settings (`shared`), read from a model declaration (`declared`).

What stays in each backend is what differs between them: how a token is drawn (llama.cpp's
sampler chain, torch's `_draw`), how its log-probability is computed (numpy, torch), and how
the text is kept: llama.cpp decodes each token's bytes as it comes (an incremental UTF-8
decoder), while a transformers tokenizer decodes whole token lists (decoding the tokens one
by one would not give the same text), so the torch backend decodes a tail to look for stop
strings and the whole list at the end.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from ttcl.backends.base import BackendError, Finish, Generation, GenerationRequest

B = TypeVar("B")


@dataclass
class Sequence:
    """One request being generated: its prompt tokens and what it has sampled so far."""

    request: GenerationRequest
    prompt: list[int]
    sampled: list[int] = field(default_factory=list)  # token ids, EOS and stop-string tokens included
    logprobs: list[float] = field(default_factory=list)
    finish: Finish | None = None
    text: str = ""  # the text the backend has decoded so far (see its stop search)
    stop_at: int | None = None  # where the first stop string starts in `text`

    @property
    def pos(self) -> int:
        """The position of the newest sampled token: the next one decoded."""
        return len(self.prompt) + len(self.sampled) - 1

    def add(self, token: int, eog: bool, logprob: Callable[[], float], stop: Callable[[], int | None]) -> bool:
        """Record a sampled token (and its log-probability, where the request asks for them)
        and apply the finish rules, in order: an end-of-generation token (`eog`) finishes it
        as "eos"; else a stop string in the text as "stop" (`stop()`: where the first one
        starts, None while there is none; asked only if the request has stop strings); else
        `max_tokens` sampled tokens as "length". Whether the sequence is finished."""
        params = self.request.params
        self.sampled.append(token)
        if params.logprobs:
            self.logprobs.append(logprob())
        if eog:
            self.finish = "eos"
        elif params.stop and (at := stop()) is not None:
            self.finish, self.stop_at = "stop", at
        elif len(self.sampled) >= params.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def cut(self) -> Self:
        """Mark the sequence cut by Ctrl-C if it was still going (its `result` is then what
        it had generated); a finished one keeps its finish."""
        self.finish = self.finish or "cut"
        return self

    def result(self, text: str, prompt_tokens: int) -> Generation:
        """The finished (or cut) sequence as a `Generation`: `text` (all it decoded to, the
        final EOS left out) cut before the first stop string."""
        return Generation(
            text=text if self.stop_at is None else text[: self.stop_at],
            prompt_tokens=prompt_tokens,
            generated_tokens=len(self.sampled),
            finish=self.finish or "length",
            logprobs=tuple(self.logprobs) if self.request.params.logprobs else None,
        )


def first_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Where the first of the stop strings that occur in `text` (at or after `start`) starts;
    None if none does."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


# --------------------------------------------------------------------------- shared backends


@functools.cache
def shared(make: Callable[..., B], *args: Any, **kwargs: Any) -> B:
    """`make(*args, **kwargs)`, made once: the same backend class and settings give the same
    object, so one loaded model, one cache and one set of counters serve every model
    declaration and verifier that uses them."""
    return make(*args, **kwargs)


def declared(decl: dict, load: Callable[..., Any], kind: str) -> dict[str, Any]:
    """The arguments of `load` (a backend module's `load_backend`, or its backend class) that
    a model declaration gives: each parameter of `load` read by its name, cast to the type of
    its default, or the default where the declaration leaves it out. A parameter without a
    default (the model's path) is a string the declaration must give. Sampling keys are not
    `load`'s: they go in each request's SamplingParams."""
    args: dict[str, Any] = {}
    for p in inspect.signature(load).parameters.values():
        if p.default is inspect.Parameter.empty:
            if not decl.get(p.name):
                raise BackendError(f"a {kind} model declaration needs a {p.name}: {decl}")
            args[p.name] = str(decl[p.name])
        else:
            args[p.name] = type(p.default)(decl.get(p.name, p.default))
    return args
