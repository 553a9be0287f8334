"""The backend protocol: what the executor asks of a model, in batches.

A backend takes a list of `GenerationRequest`s and returns one `Generation` each, in order.
All requests of one call are meant to run together (one batch on llama.cpp, one forward pass
per step on torch, parallel HTTP requests on a server). A request is a chat (`messages`) that
the backend renders with the model's own template, plus an optional `prefix`: text the
assistant's reply already starts with (the partial solution a beam extends). Requests whose
rendered prompts share a prefix may share its computation; `prompt_tokens` reports what was
really processed, so a shared prefix is charged once, to the first request that decoded it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ttcl.errors import TTCLError


class SamplingParams(BaseModel):
    """How to sample one sequence. Defined once and passed whole (DESIGN §4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.8, ge=0.0)  # 0 means greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 means no top-k cut
    max_tokens: int = Field(256, ge=1)
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int = Field(0, ge=0)
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
    finish: Literal["stop", "length", "eos"]
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


@runtime_checkable
class Backend(Protocol):
    name: str  # shown in errors: the model's file name or declaration
    counters: Counters

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Run all requests as one batch; results in request order."""
        ...

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        """For each request (rendered like `generate` would, prefix included), the probability
        of the first token of each option string as the next token, e.g. options
        ["Yes", "No"] for self-verification. Counts the prompt tokens it processes."""
        ...

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        """For each request (rendered like `generate` would, prefix included), the model's
        final hidden state at its last token: the output of the last normalization layer,
        the input of the output projection. A float32 array of shape (len(requests),
        d_model); what a trained PRM head scores. Counts the prompt tokens it processes."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by this model's tokenizer (for budgets and cost reports)."""
        ...
