"""The OpenAI-compatible backend: programs run against a model served over HTTP.

`model m = openai("http://host:8000/v1", model="name", concurrency=32)` sends a program's
requests to any server that speaks OpenAI's API: vLLM and SGLang (which batch, share prefixes
and scale across GPUs and machines) and llama.cpp's server. A `generate` call goes out so:

1. Requests that differ only in their seed are one HTTP request with `n` samples, where the
   server honours `n`. A server that ignores it (llama.cpp's) answers the first such request
   with one choice; the backend remembers that and sends one request per seed from then on.
2. At most `concurrency` HTTP requests are in flight at once, over every question and thread.
3. With `config=` (the served model's files on this machine: a known name, a GGUF file or a
   transformers directory; weights are not needed) the backend renders the chat template
   itself and uses /completions, so a partial solution (a request's `prefix`) continues exactly
   as on the local backends, and the config's numbers price the FLOPs. Without it, requests go
   to /chat/completions and a prefix is a final assistant message for the server to continue
   (`continue_final_message`, which vLLM and SGLang honour and llama.cpp's server does not).
4. The OpenAI client retries timeouts, dropped connections, 429 and 5xx with exponential
   backoff (`retries` times); what still fails is a `BackendError` naming the server.

Every reply is checked against the shape the backend reads (`checked_reply`): a body that is
not JSON, JSON nested too deeply to read, or a field of the wrong type or out of range is a
`BackendError` that names the server and says what was wrong, never a traceback.

Tokens are counted from the server's `usage` fields (tokens a server says it served from its
prefix cache are not charged). Self-verification reads the top log-probabilities of the next
token; a server that returns none makes it a clear error that names the verifiers that work.
A server never gives hidden states, so a trained `prm` head scores a local model's (`m=`).

Why one module: the requests, their retries, the reply parsing and the per-thread
sessions all follow one server's dialect (which it learns from its first replies); the
parallel threads themselves are in `ttcl.runtime.parallel`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttcl.backends.base import (
    Backend,
    BackendError,
    Counters,
    Finish,
    Generation,
    GenerationRequest,
    RequestError,
    SamplingParams,
    split_in_proportion,
)
from ttcl.backends.chat import render_chat
from ttcl.backends.decoding import declared, shared
from ttcl.source import NotJSON, parse_json

TOP_LOGPROBS = 20  # what next_token_probs asks for: vLLM's default ceiling
# llama.cpp's server samples with top_k 40, min_p 0.05 and a 1.1 repeat penalty unless told
# otherwise; these pin it to plain sampling, as the local backends do. vLLM and SGLang sample
# plainly by default (and reject top_k 0), and OpenAI's API rejects fields it does not know, so
# only a llama.cpp server (found by its /models reply) gets them.
LLAMA_CPP_SAMPLING = {"min_p": 0.0, "repeat_penalty": 1.0}
LLAMA_CPP_OWNERS = ("me", "llamacpp")  # `owned_by` in llama-cpp-python's and llama-server's /models
WORKING_VERIFIERS = "check(...), prm(..., m=<a local model>), hf_prm(...) or registered(...)"


@dataclass(frozen=True)
class Template:
    """A chat template and the BOS/EOS texts it may write, read from the served model's files."""

    source: str | None
    bos: str = ""
    eos: str = ""


@dataclass
class Call:
    """One HTTP request: a prompt and the seeds of the samples it asks for (n = len(seeds)),
    answering the batch's requests at `indices`."""

    request: GenerationRequest
    seeds: list[int]
    indices: list[int]


class OpenAIBackend(Backend):
    """A model behind an OpenAI-compatible server. Thread-safe: questions run in parallel
    threads (see `parallel.run_concurrently`), each through a `session()` of one backend."""

    concurrent = True  # questions may run in threads of their own; the server batches them

    def __init__(
        self,
        url: str,
        model: str,
        concurrency: int = 32,
        config: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 600.0,
        retries: int = 5,
    ):
        try:
            import openai
        except ImportError:
            raise BackendError("openai(...) models need the openai package: pip install 'ttcl[openai]'") from None
        self.url, self.model, self.concurrency = url.rstrip("/"), model, concurrency
        super().__init__(f"{model} at {self.url}")
        self.supports_n: bool | None = None  # learned from the first reply to an n > 1 request
        self.says_stop_reason = False  # vLLM's replies say which stop string (if any) ended a choice
        facts, template = _read_config(config) if config else (None, None)
        self.facts, self.template = facts, template
        # errors of the chat template name the file it came from
        self.template_name = f"{self.name} (chat template from {config})"
        self.client = openai.OpenAI(
            base_url=self.url, api_key=os.environ.get(api_key_env) or "none", timeout=timeout, max_retries=retries
        )
        self.retries = retries
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ttcl-http")
        self._lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(concurrency)  # over every thread's requests

    @property
    def n_params(self) -> float | None:  # type: ignore[override]  # read only, unlike Backend's default
        """N of the FLOPs formula, where `config=` says what the server runs."""
        return self.facts.params_non_embedding if self.facts else None

    def session(self, cancel: threading.Event | None = None) -> Session:
        """A view for one question's thread: its own counters, this backend's connections."""
        return Session(self, cancel)

    # ---- the contract ----------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Every request's generation, sent as `n`-sample or parallel HTTP requests."""
        return self._generate(requests, [self.counters], None)

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        """P(option) for the next token after each request, read from the server's top
        log-probabilities (an option outside the top 20 has probability 0)."""
        return self._next_token_probs(requests, options, [self.counters], None)

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        raise BackendError(
            f"model {self.name}: a server gives no hidden states, so a prm(...) head cannot "
            'score it; give the prm a local model (prm("head.safetensors", m=local)) or use '
            "self_verify, check or hf_prm"
        )

    def count_tokens(self, text: str) -> int:
        """Tokens by the server's tokenizer: vLLM's and SGLang's /tokenize, or llama.cpp's
        /extras/tokenize."""
        root = self.url.removesuffix("/v1")
        for path, body in (("/tokenize", {"model": self.model, "prompt": text}), ("/extras/tokenize", {"input": text})):
            try:
                tokens = _post_json(root + path, body)["tokens"]
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                continue
            if isinstance(tokens, list):
                return len(tokens)
        raise BackendError(f"model {self.name}: the server offers no tokenize endpoint")

    # ---- batches ---------------------------------------------------------------------------

    def _generate(
        self, requests: list[GenerationRequest], counters: list[Counters], cancel: threading.Event | None
    ) -> list[Generation]:
        calls = _group(requests)
        self._count(counters, 0, [], batches=1)
        results: list[Generation | None] = [None] * len(requests)
        first = next((c for c in calls if len(c.seeds) > 1), None) if self.supports_n is None else None
        if first is not None:  # learn whether the server honours n before sending the rest
            _fill(results, first, self._complete(first, counters))
            calls.remove(first)
        if not self.supports_n:
            calls = [Call(c.request, [s], [i]) for c in calls for s, i in zip(c.seeds, c.indices)]
        for call, generations in zip(calls, self._map(lambda c: self._complete(c, counters), calls, cancel)):
            _fill(results, call, generations)
        return results  # type: ignore[return-value]

    def _complete(self, call: Call, counters: list[Counters]) -> list[Generation]:
        """One call's generations: one HTTP request with n samples, and one per remaining seed
        if the server ignored n (the first time; later calls are split beforehand)."""
        got = self._send(call.request, call.seeds[0], len(call.seeds), counters)
        if len(call.seeds) > 1 and self.supports_n is None:
            self.supports_n = len(got) == len(call.seeds)
        for seed in call.seeds[len(got) :]:
            got += self._send(call.request, seed, 1, counters)
        return got

    def _next_token_probs(
        self,
        requests: list[GenerationRequest],
        options: list[str],
        counters: list[Counters],
        cancel: threading.Event | None,
    ) -> list[list[float]]:
        def probs(call: Call) -> list[float]:
            top = self._top_logprobs(call.request, counters)
            return [_option_probability(top, option) for option in options]

        calls = [Call(r, [0], [i]) for i, r in enumerate(requests)]
        self._count(counters, 0, [], batches=1)
        return list(self._map(probs, calls, cancel))

    def _map(self, fn: Callable[[Call], Any], calls: list[Call], cancel: threading.Event | None) -> list:
        """fn over calls in the HTTP pool, results in order; the first failure cancels the rest.
        A set `cancel` event (Ctrl-C) raises KeyboardInterrupt here while requests are still
        pending; replies that all came are returned, not thrown away."""
        futures: list[Future] = [self._pool.submit(fn, c) for c in calls]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                for f in done:
                    failure = f.exception()
                    if failure is not None:
                        raise failure
                if pending and cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
        finally:
            for f in pending:
                f.cancel()
        return [f.result() for f in futures]

    def _sampling(self, top_k: int) -> dict:
        """The sampling fields beyond OpenAI's own, in the server's dialect."""
        if self.llama_cpp:
            return {"top_k": top_k, **LLAMA_CPP_SAMPLING}
        return {"top_k": top_k} if top_k else {}

    @functools.cached_property
    def llama_cpp(self) -> bool:
        """Whether the server is llama.cpp's (its /models says who owns the models)."""
        try:
            owners = {m.owned_by for m in self.client.models.list().data}
        except Exception:  # no /models: an unknown server, spoken to in plain OpenAI
            return False
        return bool(owners & set(LLAMA_CPP_OWNERS))

    # ---- one HTTP request ------------------------------------------------------------------

    def _send(self, request: GenerationRequest, seed: int, n: int, counters: list[Counters]) -> list[Generation]:
        p = request.params
        body: dict[str, Any] = {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": seed,
            "n": n,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        # The generated tokens tell a stop string from EOS where the server does not say which
        # (see `_finish`); log-probabilities cost llama-cpp-python's server 2-3x, so only then.
        if p.logprobs or (p.stop and not self.says_stop_reason):
            body["logprobs"] = True
        reply = self._request(request, body, {"top_k": p.top_k})
        choices = [c for _, c in sorted(enumerate(reply["choices"]), key=lambda ic: ic[1].get("index", ic[0]))]
        if "stop_reason" in choices[0]:
            self.says_stop_reason = True
        parsed = [self._parse_choice(c, p) for c in choices]
        prompt, generated = _usage(reply, [n if n is not None else len(text) + 1 for text, _, _, n in parsed])
        self._count(counters, prompt, generated)
        return [
            Generation(
                text=text,
                prompt_tokens=prompt if i == 0 else 0,
                generated_tokens=g,
                finish=finish,
                logprobs=logprobs if p.logprobs else None,
            )
            for i, ((text, finish, logprobs, _), g) in enumerate(zip(parsed, generated))
        ]

    def _top_logprobs(self, request: GenerationRequest, counters: list[Counters]) -> dict[str, float]:
        """The next token's top log-probabilities after the request's prompt, token text -> logprob."""
        body = {"max_tokens": 1, "temperature": 0.0, "n": 1, "logprobs": True}
        reply = self._request(request, body, {"top_logprobs": TOP_LOGPROBS})
        top = _first_top(reply["choices"][0], chat=self.template is None)
        if not top:
            raise BackendError(
                f"model {self.name}: the server returns no log-probabilities, so self_verify "
                f"cannot run on it; verifiers that can: {WORKING_VERIFIERS}"
            )
        prompt, _ = _usage(reply, [1])
        self._count(counters, prompt, [0], logits=1)
        return top

    def _request(self, request: GenerationRequest, body: dict, extra: dict) -> dict:
        """POST the request to /completions (a local template) or /chat/completions; the reply as
        a dict, checked (`checked_reply`). Errors that survive the client's retries, and replies
        that are not what an OpenAI-compatible server sends, become a BackendError."""
        import openai

        extra |= self._sampling(extra.pop("top_k", 0))
        try:
            with self._in_flight:
                raw = self._post(request, body, extra).content
        except openai.APITimeoutError:
            raise BackendError(
                f"model {self.name}: the server did not answer in time (after {self.retries} retries)"
            ) from None
        except openai.APIConnectionError as e:
            raise BackendError(
                f"model {self.name}: cannot reach the server (after {self.retries} retries): {e.__cause__ or e}"
            ) from None
        except openai.APIStatusError as e:  # 400, 413, 422: this request's fault (too long, say)
            refused = RequestError if e.status_code in (400, 413, 422) else BackendError
            raise refused(
                f"model {self.name}: the server refused the request (HTTP {e.status_code}): {_message(e)}"
            ) from None
        except openai.OpenAIError as e:
            raise BackendError(f"model {self.name}: {e}") from None
        try:
            return checked_reply(_parse_json(raw), chat=self.template is None, n=body["n"])
        except MalformedReply as e:
            raise BackendError(
                f"model {self.name}: the server's reply is not an OpenAI-compatible completion: {e}"
            ) from None

    def _post(self, request: GenerationRequest, body: dict, extra: dict) -> Any:
        if self.template is not None:
            prompt = render_chat(
                self.template.source, request, self.template_name, self.template.bos, self.template.eos
            )
            if body.get("logprobs") is True:
                body["logprobs"] = extra.pop("top_logprobs", 1)
            return self.client.completions.with_raw_response.create(
                model=self.model, prompt=prompt, extra_body=extra, **body
            )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.prefix:  # vLLM and SGLang continue a final assistant message
            messages.append({"role": "assistant", "content": request.prefix})
            extra |= {"continue_final_message": True, "add_generation_prompt": False}
        if "top_logprobs" in extra:
            body["top_logprobs"] = extra.pop("top_logprobs")
        return self.client.chat.completions.with_raw_response.create(  # the body is parsed here, in `_request`
            model=self.model,
            messages=messages,  # type: ignore[arg-type]  # plain dicts for openai's message TypedDicts
            extra_body=extra,
            **body,
        )

    def _parse_choice(
        self, choice: dict, params: SamplingParams
    ) -> tuple[str, Finish, tuple[float, ...] | None, int | None]:
        """(text, finish, logprobs, generated tokens) of a (checked) choice; the last two where the
        server reports the generated tokens."""
        logprobs = choice.get("logprobs") or {}
        if self.template is not None:
            text = choice.get("text") or ""
            tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
        else:
            text = (choice.get("message") or {}).get("content") or ""
            content = logprobs.get("content")
            tokens = [t["token"] for t in content] if content else None
            values = [t["logprob"] for t in content] if content else None
        finish = _finish(choice, text, tokens, params.stop)
        return text, finish, tuple(v or 0.0 for v in values) if values else None, len(tokens) if tokens else None

    def _count(
        self, counters: list[Counters], prompt: int, generated: list[int], logits: int | None = None, batches: int = 0
    ) -> None:
        """Add a reply's tokens to every counter. Positions follow the prompt-then-samples layout
        of one request: the prompt once, each sample after it."""
        attended = prompt * (prompt + 1) // 2 + sum(g * prompt + g * (g + 1) // 2 for g in generated)
        with self._lock:
            for c in counters:
                c.batches += batches
                c.prompt_tokens += prompt
                c.generated_tokens += sum(generated)
                c.forward_tokens += prompt + sum(generated)
                c.attended += attended
                c.logits += sum(generated) + (1 if prompt else 0) if logits is None else logits


class Session(Backend):
    """One question's view of a shared `OpenAIBackend`. The executor reads a batch's cost as
    the change in its backend's counters, which other questions' threads must not disturb, so
    a session has its own counters (and adds to the backend's too); a set `cancel` event
    (Ctrl-C) interrupts the session's next wait."""

    def __init__(self, backend: OpenAIBackend, cancel: threading.Event | None):
        super().__init__(backend.name)
        self.backend, self.cancel = backend, cancel
        self.facts, self.n_params = backend.facts, backend.n_params

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return self.backend._generate(requests, [self.counters, self.backend.counters], self.cancel)

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        return self.backend._next_token_probs(requests, options, [self.counters, self.backend.counters], self.cancel)

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        return self.backend.hidden_states(requests)

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)


# --------------------------------------------------------------------------- replies

MAX_TOKENS_REPORTED = 10**9  # a usage count above this is no count of one request's tokens


class MalformedReply(ValueError):
    """What is wrong with a server's reply: where in its JSON, and what was found there."""


def _parse_json(raw: bytes) -> Any:
    """A reply body's JSON (MalformedReply if it is none, or nested too deeply to read)."""
    try:
        return parse_json(raw)
    except NotJSON as e:
        preview = raw[:80].decode("utf-8", "replace")
        shown = repr(preview) + (" ..." if len(raw) > 80 else "") if raw.strip() else "an empty body"
        raise MalformedReply(f"the body is {e}: {shown}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + (" ..." if len(value) > 40 else "")
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_logprob(value: Any) -> bool:
    """A log-probability: a number, at most 0 (allowing rounding), not NaN; -inf is fine."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 1e-4


class _Shape:
    """Checks of one reply, each naming the field (`choices[0].message.content`) it is about."""

    @staticmethod
    def fail(where: str, value: Any, expected: str) -> MalformedReply:
        return MalformedReply(f"{where} is {_kind(value)}, not {expected}")

    def object(self, value: Any, where: str, optional: bool = True) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, value, "an object")
        return value

    def list(self, value: Any, where: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, value, "a list")
        return value

    def string(self, value: Any, where: str) -> None:
        if value is not None and not isinstance(value, str):
            raise self.fail(where, value, "a string")

    def count(self, value: Any, where: str) -> None:
        if value is not None and not (_is_int(value) and 0 <= value <= MAX_TOKENS_REPORTED):
            raise self.fail(where, value, f"a whole number of tokens (0 to {MAX_TOKENS_REPORTED:,})")

    def logprob(self, value: Any, where: str, optional: bool = False) -> None:
        if not (value is None and optional) and not _is_logprob(value):
            raise self.fail(where, value, "a log-probability (a number at most 0)")

    def top(self, value: Any, where: str) -> None:
        """OpenAI's chat top log-probabilities: a list of {"token": str, "logprob": number}."""
        for i, entry in enumerate(self.list(value, where)):
            entry = self.object(entry, f"{where}[{i}]", optional=False)
            if not isinstance(entry.get("token"), str):
                raise self.fail(f"{where}[{i}].token", entry.get("token"), "a string")
            self.logprob(entry.get("logprob"), f"{where}[{i}].logprob")

    def logprobs(self, value: Any, where: str, chat: bool) -> None:
        logprobs = self.object(value, where)
        if chat:
            for i, entry in enumerate(self.list(logprobs.get("content"), f"{where}.content")):
                entry = self.object(entry, f"{where}.content[{i}]", optional=False)
                if not isinstance(entry.get("token"), str):
                    raise self.fail(f"{where}.content[{i}].token", entry.get("token"), "a string")
                self.logprob(entry.get("logprob"), f"{where}.content[{i}].logprob")
                self.top(entry.get("top_logprobs"), f"{where}.content[{i}].top_logprobs")
            return
        tokens = self.list(logprobs.get("tokens"), f"{where}.tokens")
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise self.fail(f"{where}.tokens[{i}]", token, "a string")
        values = self.list(logprobs.get("token_logprobs"), f"{where}.token_logprobs")
        for i, v in enumerate(values):
            self.logprob(v, f"{where}.token_logprobs[{i}]", optional=True)
        if tokens and values and len(tokens) != len(values):
            raise MalformedReply(f"{where} has {len(tokens)} tokens and {len(values)} token_logprobs")
        for i, top in enumerate(self.list(logprobs.get("top_logprobs"), f"{where}.top_logprobs")):
            for token, v in self.object(top, f"{where}.top_logprobs[{i}]").items():
                self.logprob(v, f"{where}.top_logprobs[{i}][{token[:40]!r}]")


def checked_reply(reply: Any, chat: bool, n: int) -> dict:
    """A completion reply, checked to have the shape the backend reads (else MalformedReply,
    naming the field): an object whose `choices` is a non-empty list of at most `n` objects,
    each with a distinct integer `index` below n (where given), its text a string (`text`, or
    `message.content` on the chat endpoint; null reads as empty), `finish_reason` a string,
    `logprobs` of OpenAI's shape (strings for tokens, numbers at most 0 for log-probabilities,
    lists where lists belong); and `usage` counts whole numbers of tokens. Fields the backend
    does not read are not checked."""
    shape = _Shape()
    reply = shape.object(reply, "the reply", optional=False)
    choices = shape.list(reply.get("choices"), "choices")
    if not choices:
        raise MalformedReply("it has no choices")
    if len(choices) > n:
        raise MalformedReply(f"it has {len(choices)} choices for a request of {n}")
    seen: set[int] = set()
    for i, choice in enumerate(choices):
        where = f"choices[{i}]"
        choice = shape.object(choice, where, optional=False)
        index = choice.get("index", i)
        if not (_is_int(index) and 0 <= index < n) or index in seen:
            expected = f"a distinct integer from 0 to {n - 1}" if n > 1 else "0"
            raise shape.fail(f"{where}.index", index, expected)
        seen.add(index)
        if chat:
            shape.string(
                shape.object(choice.get("message"), f"{where}.message").get("content"), f"{where}.message.content"
            )
        else:
            shape.string(choice.get("text"), f"{where}.text")
        shape.string(choice.get("finish_reason"), f"{where}.finish_reason")
        if not isinstance(choice.get("stop_reason"), (str, int, type(None))):
            raise shape.fail(f"{where}.stop_reason", choice.get("stop_reason"), "a string, a token id or null")
        shape.logprobs(choice.get("logprobs"), f"{where}.logprobs", chat)
    usage = shape.object(reply.get("usage"), "usage")
    for field in ("prompt_tokens", "completion_tokens"):
        shape.count(usage.get(field), f"usage.{field}")
    details = shape.object(usage.get("prompt_tokens_details"), "usage.prompt_tokens_details")
    shape.count(details.get("cached_tokens"), "usage.prompt_tokens_details.cached_tokens")
    return reply


def _group(requests: list[GenerationRequest]) -> list[Call]:
    """Requests that differ only in their seed, as one call each (in first-seen order)."""
    calls: dict[GenerationRequest, Call] = {}
    for i, r in enumerate(requests):
        key = r.model_copy(update={"params": r.params.model_copy(update={"seed": 0})})
        call = calls.setdefault(key, Call(r, [], []))
        call.seeds.append(r.params.seed)
        call.indices.append(i)
    return list(calls.values())


def _fill(results: list, call: Call, generations: list[Generation]) -> None:
    for index, generation in zip(call.indices, generations):
        results[index] = generation


def _usage(reply: dict, weights: list[int]) -> tuple[int, list[int]]:
    """(prompt tokens, generated tokens per choice) from a reply's usage. A prompt shared by n
    samples is counted once; tokens the server's prefix cache served are not charged; the
    completion tokens are split over the choices by `weights` (their token counts where the
    server reports them, so the split is exact)."""
    usage = reply.get("usage") or {}
    cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    prompt = max(0, int(usage.get("prompt_tokens") or 0) - int(cached))
    return prompt, split_in_proportion(int(usage.get("completion_tokens") or sum(weights)), weights)


def _finish(choice: dict, text: str, tokens: list[str] | None, stop: tuple[str, ...]) -> Finish:
    """ "length", "stop" (a stop string ended it) or "eos". OpenAI's "stop" covers both of the
    last two: vLLM says which in `stop_reason`; otherwise the generated tokens, which run past
    the text by the stop string when one matched."""
    if choice.get("finish_reason") == "length":
        return "length"
    if not stop:
        return "eos"
    if "stop_reason" in choice:  # vLLM's: the stop string, or None (EOS) or a stop token id
        return "stop" if isinstance(choice["stop_reason"], str) else "eos"
    if tokens is not None:
        rest = "".join(tokens)[len(text) :]
        return "stop" if any(s in rest or rest and s.startswith(rest) for s in stop) else "eos"
    return "stop"


def _first_top(choice: dict, chat: bool) -> dict[str, float]:
    """The first generated position's top log-probabilities, token text -> logprob."""
    logprobs = choice.get("logprobs") or {}
    if chat:
        content = logprobs.get("content") or [{}]
        return {t["token"]: t["logprob"] for t in content[0].get("top_logprobs") or []}
    top = logprobs.get("top_logprobs") or [None]
    return dict(top[0] or {})


def _option_probability(top: dict[str, float], option: str) -> float:
    """P(the option's first token): the listed token equal to the option, else the longest
    listed token the option starts with; 0 when none is listed."""
    if option in top:
        return math.exp(top[option])
    starts = [t for t in top if t and option.startswith(t)]
    return math.exp(top[max(starts, key=len)]) if starts else 0.0


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    else:
        text = str(getattr(error, "message", error))
    return text if len(text) <= 400 else text[:400] + " ..."  # servers may send whole tracebacks


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return parse_json(reply.read())


# --------------------------------------------------------------------------- set-up


def _read_config(config: str) -> tuple[Any, Template]:
    """The served model's facts and chat template from its files on this machine: a known
    model name or a GGUF file (its metadata), or a transformers directory (config.json and
    tokenizer_config.json or chat_template.jinja)."""
    from ttcl.backends.models import facts_from_path, resolve_model_path

    facts = facts_from_path(config)
    path = config if os.path.exists(os.path.expanduser(config)) else resolve_model_path(config)
    path = os.path.expanduser(path)
    return facts, (_directory_template(path) if os.path.isdir(path) or path.endswith(".json") else _gguf_template(path))


@functools.lru_cache(maxsize=16)
def _gguf_template(path: str) -> Template:
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
        source = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
        tokens = fields["tokenizer.ggml.tokens"].contents() if "tokenizer.ggml.tokens" in fields else []

        def token(key: str) -> str:
            return tokens[int(fields[key].contents())] if key in fields and tokens else ""

        return Template(source, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
    except Exception as e:  # the reader raises whatever numpy or struct hit on a broken file
        raise BackendError(f"cannot read the chat template of {path}: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=16)
def _directory_template(path: str) -> Template:
    directory = os.path.dirname(path) if path.endswith(".json") else path
    try:
        config = parse_json(Path(directory, "tokenizer_config.json").read_bytes())
    except (OSError, NotJSON):
        config = {}
    if not isinstance(config, dict):  # not a tokenizer config: no template from it
        config = {}
    source = config.get("chat_template")
    jinja = Path(directory, "chat_template.jinja")
    if source is None and jinja.is_file():
        source = jinja.read_text(encoding="utf-8", errors="replace")

    def text(token: Any) -> str:
        return token.get("content", "") if isinstance(token, dict) else str(token or "")

    return Template(
        source if isinstance(source, str) else None, text(config.get("bos_token")), text(config.get("eos_token"))
    )


def backend_for(decl: dict) -> OpenAIBackend:
    """The shared backend of an `openai(...)` declaration, e.g. {"kind": "openai", "url":
    "http://127.0.0.1:8000/v1", "model": "smol", "concurrency": 32}."""
    url, model = str(decl.get("url", "")), str(decl.get("model", ""))
    if not url.startswith(("http://", "https://")):
        raise BackendError(
            f'an openai(...) model needs the server\'s http(s) URL, e.g. "http://host:8000/v1"; got {url!r}'
        )
    if not model:
        raise BackendError(
            f'openai({url!r}) needs model="...": the name the server serves (GET {url}/models lists them)'
        )
    return shared(OpenAIBackend, **declared(decl, OpenAIBackend, "openai"))
