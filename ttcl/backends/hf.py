"""The torch backend: a Hugging Face transformers causal LM behind the `Backend` contract.

`model m = torch("smollm2-135m", device="cpu", dtype="float32")` runs a local checkpoint: a
transformers directory (config.json and weights), a GGUF file (dequantized by transformers
once and kept as a checkpoint under ~/.cache/ttcl/torch, so later loads take a second, not
half a minute), or a name `resolve_model_path` knows. Nothing is fetched from the Hub.

A `generate` call:

1. renders each request with the model's chat template (`chat.render_chat`, the function the
   llama backend uses too) and tokenizes it;
2. prefills each distinct prompt once (`TorchBackend._prefill`). A prompt that starts with a
   sequence kept from an earlier call gets that sequence's keys and values (`_Store`, looked
   up like the llama backend's `PrefixCache`) and prefills only the rest; a prefix that
   several prompts of the call share beyond what is cached (the chat header, a question) is
   prefilled first, once, and kept, so the prompts fork from it: a radix tree, one forward
   pass per level.
   `prompt_tokens` is what was really prefilled, each shared part charged to the first
   request that uses it;
3. lays the requests out as the rows of one left-padded KV cache, a prompt's keys and values
   repeated to each of its samples, and decodes them together (`_Decode`): one forward pass
   per step for all live rows, each row sampled with its own seeded torch.Generator.
   Finished rows leave the batch;
4. keeps every sequence's keys and values (its prompt and what it generated) for later calls
   to fork, least recently used first out, up to `kv_tokens` tokens.

Batch invariance: on the CPU a request gives bit-identical results alone, in any batch, and
forked from a kept prefix; `hf_model` says how.

torch and transformers are imported when a torch model is first used, so `import ttcl` works
without them.

Why one module: the KV caches, the radix-tree prefill and the batched decode loop share
one layout of rows and columns per forward pass; the model file and the batch-invariant
kernels are in `hf_model`, the shared decode rules in `decoding`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

from ttcl.backends.base import Backend, BackendError, Cut, Generation, GenerationRequest, SamplingParams
from ttcl.backends.chat import first_token, prompt_tokens
from ttcl.backends.decoding import Sequence, declared, first_stop, shared
from ttcl.backends.hf_model import DEVICES, DTYPES, LAYOUT, Group, group_rows, load_model, locate
from ttcl.backends.models import resolve_model_path
from ttcl.backends.prefix import Fork, PrefixCache

SHARE_MIN = 8  # a prefix shared within a call is prefilled on its own when it saves this many tokens
PREFILL_TOKENS = 8192  # cache columns × rows of one prefill forward pass (bounds its memory)
PREFILL_CHUNK = 1024  # new tokens of one prompt in one forward pass (bounds attention's memory)


# --------------------------------------------------------------------------- KV caches

KV = list  # per layer, (keys, values), each (kv heads, tokens, head dim): one sequence's cache


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """A transformers DynamicCache's (keys, values) per layer, each (rows, heads, columns, dim)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers 4


def _cache(layers: list[tuple[Any, Any]] | None) -> Any:
    """A DynamicCache holding `layers` (every layer a full one, whatever the model's config
    says about sliding windows: the masks do the windowing), or an empty one."""
    from transformers import DynamicCache

    if not layers:
        return DynamicCache()
    if _takes_layers(DynamicCache):
        return DynamicCache(ddp_cache_data=layers)
    return DynamicCache.from_legacy_cache(tuple(layers))  # type: ignore[attr-defined]  # transformers 4


@functools.cache
def _takes_layers(cls: type) -> bool:
    import inspect

    return "ddp_cache_data" in inspect.signature(cls).parameters


@dataclass
class _Kept:
    tokens: list[int]
    kv: KV


class _Store:
    """Sequences kept from earlier calls (and prefixes shared within a call), with their keys
    and values, least recently used first, up to `budget` tokens in all. A prompt forks the
    kept sequence that shares most of it (`PrefixCache.forks`, as on llama.cpp)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.index = PrefixCache(0)  # its lookup and its recency order; seq ids are ours
        self.kept: dict[int, _Kept] = {}
        self.tokens = 0
        self._next = 0

    def add(self, tokens: list[int], kv: KV) -> None:
        self.kept[self._next] = _Kept(tokens, kv)
        self.index.held[self._next] = tokens
        self.tokens += len(tokens)
        self._next += 1

    def forks(self, prompts: list[list[int]]) -> list[Fork]:
        return self.index.forks(prompts)

    def prefix(self, fork: Fork) -> KV:
        """The first fork.length tokens' keys and values of the forked sequence (views)."""
        self.index.touch(fork.source)
        return [(k[:, : fork.length], v[:, : fork.length]) for k, v in self.kept[fork.source].kv]

    def evict(self) -> None:
        """Drop the least recently used sequences until the budget holds (between calls only:
        a call's forks stay valid while it runs)."""
        while self.tokens > self.budget and self.kept:
            oldest = next(iter(self.index.held))
            del self.index.held[oldest]
            self.tokens -= len(self.kept.pop(oldest).tokens)

    def clear(self) -> None:
        self.kept.clear()
        self.index.held.clear()
        self.tokens = 0


def _shared_prefixes(prompts: list[list[int]], forks: list[Fork]) -> list[list[int]]:
    """Prefixes to prefill before the prompts: those that two prompts share, SHARE_MIN tokens
    or more beyond what either could fork from the cache (neighbours in sorted order share the
    most: a radix tree's inner nodes), and a long prompt's first PREFILL_CHUNK multiple past
    its fork's end (so no forward pass attends over more than PREFILL_CHUNK new tokens)."""
    order = sorted(range(len(prompts)), key=prompts.__getitem__)
    shared: dict[tuple[int, ...], None] = {}
    for a, b in zip(order, order[1:]):
        n = min(len(os.path.commonprefix([prompts[a], prompts[b]])), len(prompts[a]) - 1, len(prompts[b]) - 1)
        if n >= max(forks[a].length, forks[b].length) + SHARE_MIN:
            shared[tuple(prompts[a][:n])] = None
    for prompt, fork in zip(prompts, forks):
        chunks = (len(prompt) - 1 - fork.length) // PREFILL_CHUNK
        if chunks:
            shared[tuple(prompt[: fork.length + chunks * PREFILL_CHUNK])] = None
    return [list(p) for p in shared]


@dataclass
class _Prefilled:
    """A prompt after prefill: its keys and values, and its final hidden state at the last token."""

    kv: KV
    hidden: Any


# --------------------------------------------------------------------------- sampling


@dataclass(kw_only=True)
class _Sequence(Sequence):
    """One request being generated (a row of the decode batch while it is live), drawing from
    its own seeded generator."""

    generator: Any


def _draw(logits: Any, params: SamplingParams, generator: Any) -> int:
    """A token from one row of logits, as llama.cpp's sampler chain does it: greedy at
    temperature 0, else top-k, then top-p (on the untempered distribution), then the
    temperature, then a draw from the row's own generator."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits))
    x = logits
    if 0 < params.top_k < x.shape[-1]:
        x = x.masked_fill(x < torch.topk(x, params.top_k).values[-1], float("-inf"))
    if params.top_p < 1.0:
        probs, order = torch.sort(torch.softmax(x, -1), descending=True)
        beyond = torch.cumsum(probs, -1) - probs >= params.top_p  # after the set that reaches top_p
        x = x.index_fill(0, order[beyond], float("-inf"))
    # inverse transform sampling: one uniform from the row's generator (torch.multinomial
    # takes a millisecond over a large vocabulary, this a tenth of it)
    cdf = torch.cumsum(torch.softmax(x / params.temperature, -1), -1)
    u = torch.rand((), generator=generator) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), x.shape[-1] - 1)


def _logprob(logits: Any, token: int) -> float:
    """log softmax(logits)[token], in float64."""
    import torch

    return float(torch.log_softmax(logits.double(), -1)[token])


# --------------------------------------------------------------------------- the backend


class TorchBackend(Backend):
    """A transformers causal LM on torch behind the `Backend` contract (see the module docstring).

    path: a transformers model directory, a GGUF file, or a known name ("smollm2-135m", ...).
    device: "cpu" or "cuda". dtype: "float32", "bfloat16" or "float16". n_ctx: the context of
    one sequence (prompt + max_tokens must fit). threads: torch's CPU threads (process-wide;
    0 leaves torch's default, which follows OMP_NUM_THREADS). n_seq_max: sequences decoded
    together; more requests run in chunks. kv_tokens: tokens of kept sequences for later calls
    to fork (default 4 × n_ctx). ignore_eos: never stop at an end-of-generation token (for
    benchmarks). `batch_invariant`: on the CPU in float32, a request gives the same result
    alone as in any batch."""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        n_ctx: int = 4096,
        threads: int = 0,
        n_seq_max: int = 64,
        name: str | None = None,
        *,
        kv_tokens: int = 0,
        ignore_eos: bool = False,
    ):
        super().__init__(name or path)
        self.n_ctx, self.threads, self.n_seq_max, self.ignore_eos = n_ctx, threads, n_seq_max, ignore_eos
        self.store = _Store(kv_tokens or 4 * n_ctx)
        self._lock = threading.Lock()
        try:
            if device not in DEVICES or dtype not in DTYPES:
                raise BackendError(
                    f"device must be one of {', '.join(DEVICES)} and dtype one of "
                    f"{', '.join(DTYPES)}, got {device!r} and {dtype!r}"
                )
            if n_ctx < 1 or n_seq_max < 1:
                raise BackendError("n_ctx and n_seq_max must be positive")
            self.path = resolve_model_path(path)
            locate(self.path)  # before importing torch: a wrong path is the likelier mistake
            self._threads()
            self.model = load_model(self.path, device, dtype)
        except BackendError as e:  # name the model, unless the message names its file already
            where = getattr(self, "path", path)
            raise BackendError(e.message if where in e.message else f"model {self.name}: {e.message}") from None
        self.source = path  # what facts are read from: a known name, a file or a directory
        self.batch_invariant = self.model.batch_invariant

    def __repr__(self) -> str:
        return f"TorchBackend({self.name!r}, device={self.model.device.type!r}, n_ctx={self.n_ctx})"

    @functools.cached_property
    def facts(self) -> Any:  # type: ignore[override]  # read only, unlike Backend's default
        """The model's `ttcl.facts.ModelFacts` (parameters, layers, widths), for FLOPs."""
        from ttcl.backends.models import facts_from_path

        return facts_from_path(self.path)

    @property
    def n_params(self) -> float:  # type: ignore[override]  # read only, unlike Backend's default
        """Non-embedding parameters: what a token costs is about 2 FLOPs each."""
        return self.facts.params_non_embedding

    # ----------------------------------------------------------------- the contract

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Run all requests together (in chunks of n_seq_max); results in request order.
        Ctrl-C raises `Cut` with what each request had generated by then."""
        with self._call():
            self.counters.batches += 1
            prompts = [self._prompt(r, r.params.max_tokens) for r in requests]
            results: list[Generation] = []
            try:
                for start in range(0, len(requests), self.n_seq_max):
                    chunk = slice(start, start + self.n_seq_max)
                    results.extend(self._generate(requests[chunk], prompts[chunk]))
            except KeyboardInterrupt as stop:
                raise Cut.of_call(results, stop, len(requests)) from None
            return results

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        """For each request, the probability of each option's first token as the next token."""
        import torch

        option_tokens = [self._first_token(o) for o in options]
        with self._call():
            prompts = [self._prompt(r, 0) for r in requests]
            done, _ = self._prefill(prompts, keep=True)
            if not done:
                return []
            probs = torch.softmax(self._logits([d.hidden for d in done]).double(), -1)
            return [[float(row[t]) for t in option_tokens] for row in probs]

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        """For each request, the final hidden state (after the last norm) at its last token:
        a float32 array (len(requests), d_model)."""
        import numpy as np
        import torch

        with self._call():
            prompts = [self._prompt(r, 0) for r in requests]
            done, _ = self._prefill(prompts, keep=True)
            if not done:
                return np.zeros((0, self.model.n_embd), np.float32)
            return torch.stack([d.hidden for d in done]).float().cpu().numpy()

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by this model's tokenizer (no BOS)."""
        return len(self.model.tokenize(text, special=False))

    def reset(self) -> None:
        """Forget every kept sequence: the next call prefills its prompts from scratch."""
        with self._lock:
            self.store.clear()

    # ----------------------------------------------------------------- requests

    @contextlib.contextmanager
    def _call(self) -> Any:
        """One call: the lock, torch's inference mode and thread count; kept sequences over the
        budget are dropped when it ends."""
        import torch

        with self._lock, torch.inference_mode():
            self._threads()
            try:
                yield
            finally:
                self.store.evict()

    def _threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def prompt_text(self, request: GenerationRequest) -> str:
        """The rendered prompt of a request (chat template, then the prefix)."""
        return self.model.render(request, self.name)

    def _prompt(self, request: GenerationRequest, room: int) -> list[int]:
        """The request's prompt tokens, checked against n_ctx with room for its answer."""
        return prompt_tokens(self.model.tokenize, self.prompt_text(request), room, self.n_ctx, self.name)

    def _first_token(self, option: str) -> int:
        return first_token(self.model.tokenize, option, self.name)

    # ----------------------------------------------------------------- forward passes

    def _forward(self, ids: Any, positions: Any, cache: Any, mask: Any, layout: list[Group]) -> Any:
        """One forward pass of the decoder over ids (rows, columns) at `positions`, appending
        to `cache`; the final hidden state of each row's last column. The 2-D mask marks the
        real columns (the pads' are 0) for a GPU's sdpa; on the CPU, `layout` does that."""
        device = self.model.device
        token = LAYOUT.set(layout)
        try:
            out = self.model.base(
                input_ids=ids.to(device),
                position_ids=positions.to(device),
                attention_mask=mask.to(device),
                use_cache=True,
                **{self.model.cache_kw: cache},
            )
        finally:
            LAYOUT.reset(token)
        self.counters.decode_calls += 1
        return out.last_hidden_state[:, -1]

    def _logits(self, hidden: list[Any]) -> Any:
        import torch

        self.counters.logits += len(hidden)
        return self.model.logits(torch.stack(hidden))

    def _count(self, positions: list[range]) -> None:
        """Counters for tokens forwarded at these positions (each attends to pos + 1)."""
        self.counters.forward_tokens += sum(len(r) for r in positions)
        self.counters.attended += sum((r.start + 1 + r.stop) * len(r) // 2 for r in positions)

    # ----------------------------------------------------------------- prefill

    def _prefill(self, prompts: list[list[int]], keep: bool) -> tuple[list[_Prefilled], list[int]]:
        """Prefill the prompts, identical ones once; `keep` them for later calls to fork. Returns
        each prompt's `_Prefilled` and the prompt tokens charged to each: what was prefilled
        for it, a part that several share charged to the first."""
        distinct: dict[tuple[int, ...], int] = {}
        for p in prompts:
            distinct.setdefault(tuple(p), len(distinct))
        spent: list[tuple[list[int], int, bool]] = []
        done = self._prefill_tree([list(p) for p in distinct], keep, spent, exact=True)
        charged = [0] * len(prompts)
        for tokens, count, exact in spent:
            n = len(tokens)
            first = next(i for i, p in enumerate(prompts) if (p == tokens if exact else p[:n] == tokens))
            charged[first] += count
        self.counters.prompt_tokens += sum(charged)
        return [done[distinct[tuple(p)]] for p in prompts], charged

    def _prefill_tree(self, prompts: list[list[int]], keep: bool, spent: list, exact: bool) -> list[_Prefilled]:
        """Prefill distinct prompts: first, once, the prefixes they share beyond the cache
        (recursively: those prefixes' own shared prefixes first), kept so the prompts fork
        from them; then the prompts, one forward pass per chunk."""
        forks = self.store.forks(prompts)
        shared = _shared_prefixes(prompts, forks)
        if shared:
            self._prefill_tree(shared, True, spent, exact=False)
            forks = self.store.forks(prompts)
        order = sorted(range(len(prompts)), key=lambda i: (forks[i].length, len(prompts[i])))
        done: list[Any] = [None] * len(prompts)
        for chunk in self._prefill_chunks(order, prompts, forks):
            rows = self._prefill_rows([prompts[i] for i in chunk], [forks[i] for i in chunk])
            for i, row in zip(chunk, rows):
                done[i] = row
        for prompt, fork, row in zip(prompts, forks, done):
            spent.append((prompt, len(prompt) - fork.length, exact))
            if keep:
                self.store.add(prompt, row.kv)
        return done

    def _prefill_chunks(self, order: list[int], prompts: list[list[int]], forks: list[Fork]) -> list[list[int]]:
        """Consecutive prompts (by fork and length) in chunks of at most n_seq_max rows and
        PREFILL_TOKENS cache columns × rows."""
        chunks: list[list[int]] = []
        for i in order:
            if chunks and len(chunks[-1]) < self.n_seq_max:
                rows = chunks[-1] + [i]
                past = max(forks[j].length for j in rows)
                width = past + max(len(prompts[j]) - forks[j].length for j in rows)
                if len(rows) * width <= PREFILL_TOKENS:
                    chunks[-1].append(i)
                    continue
            chunks.append([i])
        return chunks

    def _prefill_rows(self, prompts: list[list[int]], forks: list[Fork]) -> list[_Prefilled]:
        """One forward pass over prompts sorted by (fork length, length). Row i holds its
        fork's keys and values right-aligned in the first P columns and its remaining tokens
        right-aligned in the last W, so every row's last token is in the last column; the
        columns between are padding that attention skips."""
        import torch

        lengths = [f.length for f in forks]
        suffixes = [len(p) - f for p, f in zip(prompts, lengths)]
        rows, past, width = len(prompts), max(lengths), max(suffixes)
        ids = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        mask = torch.zeros((rows, past + width), dtype=torch.long)

        def columns(key: tuple[int, int]) -> Any:
            f, s = key
            return torch.cat([torch.arange(past - f, past), torch.arange(past + width - s, past + width)])

        for i, (prompt, f, s) in enumerate(zip(prompts, lengths, suffixes)):
            ids[i, width - s :] = torch.tensor(prompt[f:])
            positions[i, width - s :] = torch.arange(f, f + s)
            mask[i, past - f : past] = 1
            mask[i, past + width - s :] = 1
        keys = list(zip(lengths, suffixes))
        layout = group_rows(keys, lambda key: (columns(key).to(self.model.device), slice(width - key[1], None)))
        cache = _cache(self._past(forks, past))
        hidden = self._forward(ids, positions, cache, mask, layout)
        self._count([range(f, f + s) for f, s in keys])
        kv = _layers(cache)
        out = []
        for i, key in enumerate(keys):
            cols = columns(key).to(self.model.device)
            out.append(_Prefilled([(k[i][:, cols], v[i][:, cols]) for k, v in kv], hidden[i]))
        return out

    def _past(self, forks: list[Fork], width: int) -> list[tuple[Any, Any]] | None:
        """The forked keys and values of prefill rows, right-aligned in `width` columns."""

        if width == 0:
            return None
        prefixes = [self.store.prefix(f) if f.length else None for f in forks]
        sample = next(p for p in prefixes if p is not None)
        layers = []
        for layer, (k0, v0) in enumerate(sample):
            keys = k0.new_zeros((len(forks), k0.shape[0], width, k0.shape[2]))
            values = v0.new_zeros((len(forks), v0.shape[0], width, v0.shape[2]))
            for i, prefix in enumerate(prefixes):
                if prefix is not None:
                    k, v = prefix[layer]
                    keys[i, :, width - k.shape[1] :] = k
                    values[i, :, width - v.shape[1] :] = v
            layers.append((keys, values))
        return layers

    # ----------------------------------------------------------------- generation

    def _generate(self, requests: list[GenerationRequest], prompts: list[list[int]]) -> list[Generation]:
        import torch

        done, charged = self._prefill(prompts, keep=False)
        distinct = list({id(d): d for d in done}.values())
        logits = dict(zip(map(id, distinct), self._logits([d.hidden for d in distinct])))
        seqs = [
            _Sequence(r, p, generator=torch.Generator().manual_seed(r.params.seed)) for r, p in zip(requests, prompts)
        ]
        try:
            for seq, d in zip(seqs, done):
                self._sample(seq, logits[id(d)])
            _Decode(self, seqs, done).run()
        except KeyboardInterrupt:  # the text so far is kept
            raise Cut([self._result(seq.cut(), n) for seq, n in zip(seqs, charged)]) from None
        return [self._result(seq, n) for seq, n in zip(seqs, charged)]

    def _sample(self, seq: _Sequence, logits: Any) -> None:
        """Sample the next token of `seq` from its row of logits, and see whether it is done."""
        raw = logits
        if self.ignore_eos and self.model.eog:
            logits = logits.index_fill(0, self.model.eog_index, float("-inf"))
        token = _draw(logits, seq.request.params, seq.generator)
        self.counters.generated_tokens += 1
        eog = not self.ignore_eos and token in self.model.eog
        seq.add(token, eog, lambda: _logprob(raw, token), lambda: self._stop(seq))

    def _stop(self, seq: _Sequence) -> int | None:
        """Where the first stop string starts in the text, once one has appeared (`seq.text`
        is then the whole text). A new stop string ends in the newest text, so only a tail
        is decoded at each step (a tokenizer decodes whole token lists, not token by token)."""
        stops = seq.request.params.stop
        tail = self.model.detokenize(seq.sampled[-(max(map(len, stops)) + 8) :])
        if not any(s in tail for s in stops):
            return None
        seq.text = self.model.detokenize(seq.sampled)
        return first_stop(seq.text, stops)

    def _result(self, seq: _Sequence, prompt_tokens: int) -> Generation:
        if seq.finish == "stop":
            return seq.result(seq.text, prompt_tokens)
        return seq.result(
            self.model.detokenize(seq.sampled[:-1] if seq.finish == "eos" else seq.sampled), prompt_tokens
        )


class _Decode:
    """The requests of one chunk decoding together, one forward pass per step.

    Rows are ordered longest prompt first, so rows with the same left padding are neighbours
    (one attention group); every row advances one token per step, so its padding never
    changes. A finished row leaves the batch, its sequence kept for later calls; columns that
    have become padding in every remaining row are dropped."""

    def __init__(self, backend: TorchBackend, seqs: list[_Sequence], done: list[_Prefilled]):
        self.b = backend
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i].prompt), id(done[i])))
        self.seqs = [seqs[i] for i in order]
        self.width = len(self.seqs[0].prompt) if seqs else 0
        self.starts = [self.width - len(s.prompt) for s in self.seqs]
        self.cache = self._layout([done[i] for i in order])

    def _layout(self, done: list[_Prefilled]) -> Any:
        """The batch cache: each row its prompt's keys and values, right-aligned; rows of one
        prompt are filled by one broadcast copy."""
        if not done:
            return None
        blocks = group_rows([id(d) for d in done], lambda key: (None, slice(None)))
        layers = []
        for layer, (k0, v0) in enumerate(done[0].kv):
            keys = k0.new_zeros((len(done), k0.shape[0], self.width, k0.shape[2]))
            values = v0.new_zeros((len(done), v0.shape[0], self.width, v0.shape[2]))
            for block in blocks:
                k, v = done[block.rows.start].kv[layer]
                keys[block.rows, :, self.width - k.shape[1] :] = k
                values[block.rows, :, self.width - v.shape[1] :] = v
            layers.append((keys, values))
        return _cache(layers)

    def run(self) -> None:
        import torch

        self._leave()
        while self.seqs:
            ids = torch.tensor([[s.sampled[-1]] for s in self.seqs])
            positions = torch.tensor([[s.pos] for s in self.seqs])
            width = self.width + 1
            mask = (torch.arange(width)[None, :] >= torch.tensor(self.starts)[:, None]).long()
            layout = group_rows(self.starts, lambda start: (slice(start, None), slice(None)))
            hidden = self.b._forward(ids, positions, self.cache, mask, layout)
            self.width = width
            self.b._count([range(s.pos, s.pos + 1) for s in self.seqs])
            logits = self.b._logits(list(hidden))
            for seq, row in zip(self.seqs, logits):
                self.b._sample(seq, row)
            self._leave()

    def _leave(self) -> None:
        """Keep the finished rows' sequences (their prompt and all they sampled but the last
        token, which was never decoded) and drop them from the batch."""
        import torch

        done = [i for i, s in enumerate(self.seqs) if s.finish is not None]
        if not done:
            return
        layers = _layers(self.cache)
        for i in done:
            seq, start = self.seqs[i], self.starts[i]
            self.b.store.add(
                seq.prompt + seq.sampled[:-1], [(k[i, :, start:].clone(), v[i, :, start:].clone()) for k, v in layers]
            )
        live = [i for i, s in enumerate(self.seqs) if s.finish is None]
        self.seqs = [self.seqs[i] for i in live]
        self.starts = [self.starts[i] for i in live]
        if not live:
            self.cache = None
            return
        trim = min(self.starts)  # columns that are padding in every live row
        rows = torch.tensor(live, device=layers[0][0].device)
        self.cache = _cache([(k[rows, :, trim:], v[rows, :, trim:]) for k, v in layers])
        self.starts = [s - trim for s in self.starts]
        self.width -= trim


# --------------------------------------------------------------------------- shared backends


def load_backend(
    path: str,
    device: str = "cpu",
    dtype: str = "float32",
    n_ctx: int = 4096,
    threads: int = 0,
    n_seq_max: int = 64,
    kv_tokens: int = 0,
) -> TorchBackend:
    """The shared backend for a model and settings: the same model (by name or by path) and
    settings give the same object, so one loaded model, one store of kept sequences and one set
    of counters serve every model declaration and verifier that uses them."""
    path = resolve_model_path(path)
    name = os.path.basename(path.rstrip(os.sep))  # one backend serves every name the model goes by
    return shared(TorchBackend, path, device, dtype, n_ctx, threads, n_seq_max, name, kv_tokens=kv_tokens)


def backend_for(model: dict) -> TorchBackend:
    """The shared backend for a model declaration such as {"kind": "torch", "path":
    "smollm2-135m", "device": "cpu", "dtype": "float32", "n_ctx": 4096, ...}. Sampling keys
    are the caller's business (they go in each request's SamplingParams)."""
    return load_backend(**declared(model, load_backend, "torch"))
