"""The backend contract: what the runtime asks of a model, in batches (`Backend`).

A backend takes a list of `GenerationRequest`s and returns one `Generation` each, in order.
All requests of one call are meant to run together (one batch on llama.cpp, one forward pass
per step on torch, parallel HTTP requests on a server). A request is a chat (`messages`) that
the backend renders with the model's own template, plus an optional `prefix`: text the
assistant's reply already starts with (the partial solution a beam extends). Requests whose
rendered prompts share a prefix may share its computation; `prompt_tokens` reports what was
really processed, so a shared prefix is charged once, to the first request that decoded it.

`Backend` declares every hook and attribute the runtime uses, each with its default; a new
backend subclasses it and learns the contract from it alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttcl.errors import TTCLError

if TYPE_CHECKING:
    import threading

    from ttcl.backends.models import ModelFacts

Finish = Literal["stop", "length", "eos"]  # why a sequence ended: a stop string, max_tokens, EOS


class SamplingParams(BaseModel):
    """How to sample one sequence. Defined once and passed whole (docs/runtime.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.8, ge=0.0)  # 0 means greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # 0 means no top-k cut
    max_tokens: int = Field(default=256, ge=1)
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int = Field(default=0, ge=0)
    logprobs: bool = False  # report the log-probability of each generated token


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: tuple[Message, ...]
    prefix: str = ""  # the start of the assistant's reply, already written
    params: SamplingParams = SamplingParams()


class Generation(BaseModel):
    """One finished sequence: the text generated after the prefix (stop string excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    prompt_tokens: int  # prompt tokens this request actually decoded (shared prefixes once)
    generated_tokens: int
    finish: Finish
    logprobs: tuple[float, ...] | None = None


class Counters(BaseModel):
    """What a backend has done since it was made; the trace's totals must equal these."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    batches: int = 0  # generate() calls
    decode_calls: int = 0  # forward passes (llama_decode calls on llama.cpp)
    # for measured FLOPs (`ttcl.facts.counted_flops`): tokens through the model, the sum over
    # them of the positions each attended to, and the logits computed
    forward_tokens: int = 0
    attended: int = 0
    logits: int = 0


def split_in_proportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to it (the first
    takes the remainder): a batch's tokens shared out over its requests or choices."""
    whole = sum(weights) or 1
    parts = [total * w // whole for w in weights]
    parts[0] += total - sum(parts)
    return parts


class BackendError(TTCLError):
    """A model that cannot be loaded or run: the message names the model (and the node)."""


class Backend(ABC):
    """What the runtime asks of a model: the whole contract, each hook with its default.

    A backend subclasses this, calls `super().__init__(name)` and implements `generate`; the
    rest is optional, and what it leaves out keeps the default below: a hook it cannot serve
    raises a `BackendError` that says so, an attribute it cannot know is None. The runtime
    reads these attributes and calls these methods, and nothing else:

    - `name`, `counters`: always (errors name the model; a batch's cost is the change in
      `counters` across its call, so a backend adds everything it processes to them);
    - `generate`: a `sample(...)` (and every strategy built on it);
    - `next_token_probs`: a `self_verify(...)` verifier; `hidden_states`: a `prm(...)` head;
    - `n_params`, `facts`: FLOPs in costs, and whether a flops budget can be enforced;
    - `concurrent`, `concurrency`, `session`: whether `run_many` runs questions in threads.

    `count_tokens`, `reset` and `batch_invariant` are for tools and tests. Backends here:
    `llama.LlamaBackend`, `hf.TorchBackend`, `remote.OpenAIBackend`, `fake.ScriptedBackend`;
    an object that is not a `Backend` is run through `as_backend`.
    """

    name: str
    """The model, as errors show it: its file name or its declaration."""

    counters: Counters
    """Everything the backend has processed since it was made (see `Counters`)."""

    n_params: float | None = None
    """N of the FLOPs formula (about 2·N FLOPs a token): the non-embedding parameters, or None
    where unknown. None makes FLOPs unknown and a `budget ... flops` an error."""

    facts: ModelFacts | None = None
    """The model's shape (layers, widths, vocabulary), or None. With it, and `counters`'
    forward_tokens, attended and logits, FLOPs are counted exactly (`counted_flops`) rather
    than estimated as 2·N per token."""

    concurrent: bool = False
    """Whether questions may run in parallel threads, each through its own `session()`, rather
    than in lockstep batches: true for a server, which batches requests as they come. Only
    where every model of a program is concurrent does `run_many` use threads."""

    concurrency: int = 8
    """For a concurrent backend: how many questions' threads run at once (and at most how many
    requests it keeps in flight). Read only where `concurrent` is true."""

    batch_invariant: bool = False
    """Whether a request gives the same result alone as in any batch, and whatever was cached
    before (bit for bit): what the local backends guarantee on the CPU."""

    def __init__(self, name: str = "backend") -> None:
        self.name = name
        self.counters = Counters()

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Run all requests as one batch; results in request order. Each request is rendered
        with the model's chat template, its `prefix` appended; each result is the text
        generated after the prefix, cut before the first stop string, with the prompt tokens
        really processed (a prefix shared by several requests charged once, to the first),
        the tokens generated (EOS and stop-string tokens included) and why it finished."""

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        """For each request (rendered like `generate` would, prefix included), the probability
        of the first token of each option string as the next token, e.g. options
        ["Yes", "No"] for self-verification. Counts the prompt tokens it processes.
        By default: unsupported."""
        raise BackendError(f"model {self.name}: this backend does not support next-token probabilities")

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        """For each request (rendered like `generate` would, prefix included), the model's
        final hidden state at its last token: the output of the last normalization layer,
        the input of the output projection. A float32 array of shape (len(requests),
        d_model); what a trained PRM head scores. Counts the prompt tokens it processes.
        By default: unsupported."""
        raise BackendError(f"model {self.name}: this backend does not support hidden states")

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by this model's tokenizer (for budgets and cost reports).
        By default: unsupported."""
        raise BackendError(f"model {self.name}: this backend does not support counting tokens")

    def session(self, cancel: threading.Event | None = None) -> Backend:
        """A view of this backend for one question's thread (see `concurrent`): it must have
        counters of its own, since the runtime reads a batch's cost as the change in the
        counters of what it called, and should raise KeyboardInterrupt at its next wait once
        `cancel` is set (Ctrl-C, or another question's failure). By default the backend itself,
        which is right for one that is not concurrent."""
        return self

    def reset(self) -> None:
        """Forget whatever is cached from earlier calls (prompt prefixes): the next call starts
        from scratch. By default nothing is cached."""
        return None


def as_backend(backend: Any) -> Backend:
    """`backend` itself if it is a `Backend`, else a `Backend` around it: an object written
    only to the protocol's bare bones (`name`, `counters`, `generate`, and whichever of the
    other hooks it has), which `Program.run(backend=...)` accepts too. What the object lacks
    takes the defaults of `Backend`."""
    return backend if isinstance(backend, Backend) else _Duck(backend)


class _Duck(Backend):
    """A `Backend` around an object that does not subclass it: every hook and attribute is the
    object's where it has one, `Backend`'s default where not."""

    def __init__(self, inner: Any) -> None:  # no super().__init__(): name and counters are the object's
        self.inner = inner

    name = property(lambda self: self.inner.name)
    counters = property(lambda self: self.inner.counters)
    n_params = property(lambda self: getattr(self.inner, "n_params", None))
    facts = property(lambda self: getattr(self.inner, "facts", None))
    concurrent = property(lambda self: getattr(self.inner, "concurrent", Backend.concurrent))
    concurrency = property(lambda self: getattr(self.inner, "concurrency", Backend.concurrency))
    batch_invariant = property(lambda self: getattr(self.inner, "batch_invariant", False))

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return self.inner.generate(requests)

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        return getattr(self.inner, "next_token_probs", super().next_token_probs)(requests, options)

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        return getattr(self.inner, "hidden_states", super().hidden_states)(requests)

    def count_tokens(self, text: str) -> int:
        return getattr(self.inner, "count_tokens", super().count_tokens)(text)

    def session(self, cancel: threading.Event | None = None) -> Backend:
        session = getattr(self.inner, "session", None)
        return self if session is None else as_backend(session(cancel))

    def reset(self) -> None:
        getattr(self.inner, "reset", super().reset)()
