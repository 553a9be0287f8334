"""A scripted, deterministic backend for fast tests of the runtime's algorithms.

The script is a function from a request to the text the "model" writes. Tokens are
whitespace-separated words, so token counts are easy to check by hand; stop strings and
`max_tokens` behave as on a real backend. `next_token_probs` asks a second function, and
`hidden_states` a third (by default a few features of the prompt's text, so a PRM head can
be trained and scored on them in tests). Where a request asks for log-probabilities, a fourth
gives them for the text written (by default log 1/2 for every token).

`interrupt_after=k` plays Ctrl-C: the next `generate` call stops after k decoding steps (k
words of every request, as a real batch advances each sequence a token a step) and raises
`Cut` with what each request had written by then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ttcl.backends.base import Backend, Cut, Finish, Generation, GenerationRequest


def render(request: GenerationRequest) -> str:
    """The prompt as one string: each message as `role: content`, then the prefix."""
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages) + "\n" + request.prefix


class ScriptedBackend(Backend):
    """`ScriptedBackend(lambda req: "The answer is 5.")` always answers 5."""

    n_params = 1_000_000  # a made-up size, so FLOPs are defined

    def __init__(
        self,
        script: Callable[[GenerationRequest], str],
        probs: Callable[[GenerationRequest, list[str]], list[float]] | None = None,
        name: str = "scripted",
        hidden: Callable[[GenerationRequest], list[float]] | None = None,
        logprobs: Callable[[GenerationRequest, str], float | Sequence[float]] | None = None,
        interrupt_after: int | None = None,
    ):
        super().__init__(name)
        self.script = script
        self.probs = probs or (lambda request, options: [1.0 / len(options)] * len(options))
        self.hidden = hidden or text_features
        # (request, text written) -> every token's log-probability, or one for each token
        self.logprobs = logprobs or (lambda request, text: math.log(0.5))
        self.batch_sizes: list[int] = []
        self.interrupt_after = interrupt_after  # Ctrl-C after this many steps of the next call

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.counters.batches += 1
        self.batch_sizes.append(len(requests))
        seen: set[str] = set()
        steps, self.interrupt_after = self.interrupt_after, None
        results = [self._one(r, seen, steps) for r in requests]
        if steps is not None:
            raise Cut(results)
        return results

    def _one(self, request: GenerationRequest, seen: set[str], steps: int | None = None) -> Generation:
        prompt = render(request)
        # identical prompts in one batch are decoded once, as a real backend shares them
        prompt_tokens = 0 if prompt in seen else self.count_tokens(prompt)
        seen.add(prompt)
        text = self.script(request)
        words = text.split(" ")
        finish: Finish = "eos"
        if len(words) > request.params.max_tokens:
            text, finish = " ".join(words[: request.params.max_tokens]), "length"
        if steps is not None and len(text.split(" ")) > steps:  # Ctrl-C came first
            text, finish = " ".join(text.split(" ")[:steps]), "cut"
        generated = self.count_tokens(text)
        for stop in request.params.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
                generated = self.count_tokens(text) + 1
        self.counters.prompt_tokens += prompt_tokens
        self.counters.generated_tokens += generated
        self.counters.decode_calls += 1
        logprobs = self._logprobs(request, text, generated) if request.params.logprobs else None
        return Generation(
            text=text, prompt_tokens=prompt_tokens, generated_tokens=generated, finish=finish, logprobs=logprobs
        )

    def _logprobs(self, request: GenerationRequest, text: str, tokens: int) -> tuple[float, ...]:
        """One log-probability per generated token, from the `logprobs` function."""
        given = self.logprobs(request, text)
        values = [float(given)] * tokens if isinstance(given, (int, float)) else [float(x) for x in given]
        if len(values) != tokens:
            raise ValueError(f"the logprobs function gave {len(values)} values for {tokens} tokens")
        return tuple(values)

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        self._read(requests)
        return [self.probs(r, options) for r in requests]

    def hidden_states(self, requests: list[GenerationRequest]):
        import numpy as np

        self._read(requests)
        return np.array([self.hidden(r) for r in requests], dtype=np.float32).reshape(len(requests), -1)

    def _read(self, requests: list[GenerationRequest]) -> None:
        """Count a verifier pass's prompts, identical ones once."""
        seen: set[str] = set()
        for r in requests:
            prompt = render(r)
            self.counters.prompt_tokens += 0 if prompt in seen else self.count_tokens(prompt)
            seen.add(prompt)
        self.counters.decode_calls += 1


def text_features(request: GenerationRequest) -> list[float]:
    """Eight numbers about the reply so far: its length, digits, and words a PRM could learn
    from ("wrong", "correct"), so tests can train a head that must really separate them."""
    text = request.prefix.lower()
    words = text.split()
    return [
        len(words) / 10,
        sum(ch.isdigit() for ch in text) / 10,
        text.count("wrong"),
        text.count("correct"),
        text.count("answer"),
        float(bool(words)),
        len(text) % 7 / 7,
        1.0,
    ]
