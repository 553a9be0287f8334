"""The llama.cpp backend, on llama-cpp-python's low-level API (docs/runtime.md).

One llama context holds up to `n_seq_max` sequences in one unified KV cache. A `generate`
call runs its requests together:

1. Each prompt is the model's chat template (jinja2, sandboxed) applied to the messages, plus
   the request's `prefix`, tokenized.
2. Shared prompt prefixes are decoded once. The prompts are laid out as a token trie (sorted,
   in preorder), and each trie node is one batch entry carrying the seq_ids of every request
   whose prompt passes through it: the same cells `llama_memory_seq_cp` would give the other
   sequences, without the copy. Identical prompts cost one prompt; prompts that share a
   question but differ in a partial solution share the question.
3. Then each decode step advances every live sequence by one token, each with its own
   sampler chain and seed, until EOS/EOG, `max_tokens` or a stop string. A step is one
   `llama_decode` call, or several of at most `decode_batch` sequences each: how many
   sequences one call should carry depends on the model, the threads and the CPU, so it is
   measured (see `INVARIANCE_SIZES`).
4. The sequences stay in the cache when the call ends, and a later call forks from them
   (see `PrefixCache`): a request whose prompt starts with a cached sequence's tokens gets
   those cells with `llama_memory_seq_cp` and decodes only the rest. So the beams of the next
   step of a beam search, and the verifier prompts of the next step, start from the cells of
   the step before. Sequences no longer needed are pruned with `llama_memory_seq_rm`.

Results do not depend on batching: a request gives the same text alone as in a batch of 8 or
64 (tested), on the CPU. That needs (a) kernels that compute each row of a batch on its own
(no AMX or repacked weights), (b) flash attention on its per-row path, which visits a query's
own KV cells in cell order and skips the rest (see `call_sizes`), and (c) each sequence's
cells in position order. Cached prefixes keep (c) because no cell is freed until the whole
cache is cleared (see `PrefixCache`), and the values in a cell depend only on the tokens up
to it, so a forked prefix is bit for bit the prefix a fresh call would decode.

llama_cpp is imported lazily, so `import ttcl` works without it.

Why one module: the backend drives one llama.cpp context through its C API (batches,
sequence ids, cells); the prompt layout, the decode calls and the cache bookkeeping all
manipulate that context's state. The model registry, the prefix trie and the shared decode
rules are in `models`, `prefix` and `decoding`.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttcl.backends.base import Backend, BackendError, Cut, Generation, GenerationRequest, SamplingParams
from ttcl.backends.chat import first_token, prompt_tokens, render_chat
from ttcl.backends.decoding import Sequence, declared, first_stop, shared
from ttcl.backends.models import cache_dir, check_model_file, resolve_model_path
from ttcl.backends.prefix import Fork, PrefixCache, common_prefix, plan_prompts
from ttcl.source import parse_json

_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick a random one": never pass it

_DECODE_ERRORS = {
    1: "no free KV cache slot for the batch",
    2: "aborted",
    -1: "invalid input batch",
}


# --------------------------------------------------------------------------- the library


@functools.cache
def _lib() -> Any:
    """The low-level bindings, imported once, with llama.cpp's logging silenced."""
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as e:
        raise BackendError(f"the llama backend needs llama-cpp-python (pip install llama-cpp-python): {e}") from None
    lib.llama_log_set(_quiet_log(lib), ctypes.c_void_p(0))
    lib.llama_backend_init()
    return lib


@functools.cache
def _quiet_log(lib: Any) -> Any:
    """A no-op log callback, kept alive by the cache (llama.cpp holds a raw pointer to it)."""

    @lib.llama_log_callback
    def quiet(level: int, text: bytes, user_data: Any) -> None:
        return None

    return quiet


# --------------------------------------------------------------------------- the model


class _Model:
    """A loaded GGUF model: weights, vocabulary, tokenizer and chat template. Shared by every
    backend on the same file (see `_load_model`); never freed (it lives as long as the process)."""

    def __init__(self, path: str, n_gpu_layers: int):
        check_model_file(path)
        lib = _lib()
        self.path = path
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # No extra CPU buffer types (AMX, repacked weights): their kernels change with the
        # number of rows in a batch, so a sequence's results would depend on its batch; and
        # this llama.cpp build crashes in the AMX kernels on batches of more than one token.
        params.use_extra_bufts = False
        self.ptr = lib.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise BackendError(f"llama.cpp could not load the model file {path} (corrupt or unsupported GGUF)")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.n_embd = lib.llama_model_n_embd(self.ptr)
        self.bos = lib.llama_vocab_bos(self.vocab)
        self.eos = lib.llama_vocab_eos(self.vocab)
        template = lib.llama_model_chat_template(self.ptr, None)
        self.chat_template = template.decode("utf-8") if template else None
        self._pieces: dict[int, bytes] = {}

    def token_text(self, token: int) -> str:
        """The raw vocabulary text of a token ('' for none), e.g. for bos_token."""
        if token < 0:
            return ""
        text = _lib().llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def tokenize(self, text: str, special: bool) -> list[int]:
        """Tokens of `text`; `special`: add BOS if the model wants it and parse control tokens
        like <|im_start|> (for rendered prompts), else plain text (for options)."""
        lib = _lib()
        data = text.encode("utf-8")
        size = len(data) + 2
        buf = (lib.llama_token * size)()
        n = lib.llama_tokenize(self.vocab, data, len(data), buf, size, special, special)
        if n < 0:  # buffer too small: n is minus the size needed
            size = -n
            buf = (lib.llama_token * size)()
            n = lib.llama_tokenize(self.vocab, data, len(data), buf, size, special, special)
        tokens = list(buf[:n])
        if special and len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]  # the template wrote bos_token and the tokenizer added another
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing). Cached."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = _lib().llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = _lib().llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(_lib().llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token (EOS, EOT, ...): what `ignore_eos` masks."""
        return [t for t in range(self.n_vocab) if self.is_eog(t)]


@functools.cache
def _load_model(path: str, n_gpu_layers: int) -> _Model:
    """One loaded model per (file, offload): backends with different contexts share weights."""
    return _Model(path, n_gpu_layers)


# --------------------------------------------------------------------------- chat templates


def render_prompt(model: _Model, request: GenerationRequest, name: str) -> str:
    """The prompt text for a request by the model's own chat template (`chat.render_chat`,
    shared with the torch backend)."""
    return render_chat(model.chat_template, request, name, model.token_text(model.bos), model.token_text(model.eos))


# --------------------------------------------------------------------------- decode calls

# ggml's CPU flash attention has three paths. The per-row path visits a query's unmasked KV
# cells in cell order, so its result does not depend on the other sequences in the cache. The
# tiled path (64 or more query tokens in a call) and the split-KV path (exactly one query
# token, 512 or more KV cells) group cells into tiles or per-thread chunks, and their rounding
# depends on where a sequence's cells lie. So every decode call carries 2 to 63 tokens (fewer
# where the matmul kernels change with the rows, see `INVARIANCE_SIZES`): more are split into
# near-equal calls, and a lone token gets a pad token on a spare sequence.
MAX_CALL_TOKENS = 63
_SPLIT_KV_CELLS = 256  # a lone token gets a pad once the cache may reach 512 cells (256-cell padding)


def call_sizes(n: int, most: int = MAX_CALL_TOKENS) -> list[int]:
    """Split n batch entries into the fewest calls of at most `most`, as equal as possible
    (so no call is left with a single token unless n is 1)."""
    if n == 0:
        return []
    calls = -(-n // most)
    base, extra = divmod(n, calls)
    return [base + 1] * extra + [base] * (calls - extra)


# --------------------------------------------------------------------------- measured call sizes

# Two things about decode calls depend on the model file's tensor types, the llama.cpp build,
# the threads and the CPU, so they are measured on first use (`LlamaBackend._settle`) and kept
# in the cache directory per (file, threads, CPU, llama.cpp version, OpenMP wait policy):
# - the largest call whose rows come out bit for bit as in calls of one token. Some matmul
#   kernels change their algorithm with the number of rows (the K-quant ones from 8 rows, on
#   the development machine: Qwen2.5's Q4_K_M file), and a request must give alone what it
#   gives in a batch, so no call is larger (`max_call`);
# - the most sequences one call of a generation step carries. One call over many sequences
#   reads each weight row once for all of them, but past some count a call can be slower per
#   token than several smaller ones. A short timed probe picks it (`decode_batch`).
INVARIANCE_SIZES = (2, 3, 4, 5, 6, 7, 8, 16, 32, MAX_CALL_TOKENS)
PROBE_BATCHES = (2, 4, 8, 16)  # one per call is never faster: a call each, and pads past 256 cells
PROBE_ROUNDS = 3  # each round times every candidate once, so slow spells hit them alike
PROBE_STEPS = 1  # decode steps of all the probe's sequences per candidate and round
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog, then counts 1, 2, 3 and 4 sheep. " * 8
_RECORDS: dict[str, dict] = {}  # this process's measurements, by probe key


def probe_key(path: str, threads: int) -> dict[str, str]:
    """What the measured call sizes depend on: the model file (path, size, modification
    time), the threads, the CPU, llama.cpp's version and OpenMP's wait policy."""
    import llama_cpp

    stat = os.stat(path)
    return {
        "file": f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}",
        "threads": str(threads),
        "cpu": _cpu_model(),
        "llama_cpp": str(getattr(llama_cpp, "__version__", "")),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} x{os.cpu_count()}"


def _record_path(key: dict[str, str]) -> Path:
    return cache_dir("batch") / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".json")


def read_record(key: dict[str, str]) -> dict | None:
    """The measurement kept for this key (in this process, else on disk), or None:
    {"invariant": bool, "max_call": int, "batch": int, "tokens_per_s": {batch: figure}}."""
    name = json.dumps(key, sort_keys=True)
    if name not in _RECORDS:
        try:
            stored = parse_json(_record_path(key).read_bytes())
            if stored.get("key") != key or int(stored["max_call"]) < 1 or int(stored["batch"]) < 1:
                return None
            _RECORDS[name] = {k: stored[k] for k in ("invariant", "max_call", "batch", "tokens_per_s")}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
    return _RECORDS[name]


def write_record(key: dict[str, str], record: dict) -> None:
    """Keep a measurement for later backends and processes. Written atomically; a read-only
    cache directory only means measuring again in the next process."""
    _RECORDS[json.dumps(key, sort_keys=True)] = record
    path = _record_path(key)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, **record}, f, indent=1)
            os.replace(temp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)  # gone after the rename; a half-written record is removed


def best_batch(tokens_per_s: dict[int, float], most: int) -> int:
    """The batch size to use from the probe's figures: the largest within 10 % of the fastest
    (bigger calls are fewer calls, and the figures are noisy), and `most` (no cap but the
    call's own) when that is the largest size probed."""
    fastest = max(tokens_per_s.values())
    chosen = max(b for b, v in tokens_per_s.items() if v >= 0.9 * fastest)
    return most if chosen == max(tokens_per_s) else chosen


# --------------------------------------------------------------------------- the backend


@dataclass(kw_only=True)
class _Sequence(Sequence):
    """One request being generated: its sampler chain, and its text decoded as it comes."""

    sampler: Any
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


Entry = tuple[int, int, list[int], bool]  # token, position, seq_ids, whether its logits are needed


class LlamaBackend(Backend):
    """A llama.cpp model behind the `Backend` contract (see the module docstring).

    path: a GGUF file, or a known name (`models.KNOWN_MODELS`). n_ctx: the context of one
    sequence (prompt + max_tokens must fit). n_gpu_layers: layers offloaded on a GPU build
    (-1: all). threads: CPU threads, 0 for all cores. n_seq_max: sequences decoded together;
    more requests run in chunks. batch: the most sequences one decode call of a generation
    step carries, 0 to measure it on first use (see `INVARIANCE_SIZES`). kv_cells: the unified
    KV cache shared by the live sequences of a chunk (default 4 × n_ctx). ignore_eos: mask
    end-of-generation tokens so every sequence runs to max_tokens (for benchmarks).
    `batch_invariant`: on the CPU (n_gpu_layers 0), a request gives the same result alone as
    in any batch."""

    def __init__(
        self,
        path: str,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        threads: int = 0,
        n_seq_max: int = 64,
        name: str | None = None,
        *,
        kv_cells: int = 0,
        ignore_eos: bool = False,
        batch: int = 0,
    ):
        super().__init__(name or path)
        self.path = resolve_model_path(path)
        self.n_ctx = n_ctx
        self.n_seq_max = n_seq_max
        self.kv_cells = max(kv_cells or 4 * n_ctx, n_ctx)
        self.threads = threads or os.cpu_count() or 1
        self.ignore_eos = ignore_eos
        # On the CPU, results do not depend on batching (see `call_sizes`). On a GPU the matmul
        # kernels change with batch size anyway, so calls are as big as the GPU likes.
        self.batch_invariant = n_gpu_layers == 0
        self.max_call = MAX_CALL_TOKENS if self.batch_invariant else 512
        if batch < 0:
            raise BackendError(f"model {self.name}: batch must be 0 (measure it) or positive, not {batch}")
        self._batch_option = batch  # 0: measured on first use (see `_settle`)
        self.decode_batch = min(batch or self.max_call, self.max_call)
        self._settled = not self.batch_invariant  # on a GPU there is nothing to measure
        # seq_ids: twice n_seq_max for requests (a chunk's sequences and the cached ones they
        # fork from), then the spare sequence that pad tokens go to, then the retired one
        self.cache = PrefixCache(2 * n_seq_max)
        self._pad_seq = self.cache.n_ids
        self._retired_seq = self._pad_seq + 1
        self._cells = 0  # KV cells taken since the cache was last cleared
        self._lock = threading.Lock()
        try:
            check_model_file(self.path)  # before importing llama_cpp: a wrong path is the likelier mistake
            self._check_limits()
            self.model = _load_model(self.path, n_gpu_layers)
        except BackendError as e:  # name the model, unless the message names its file already
            raise BackendError(e.message if self.path in e.message else f"model {self.name}: {e.message}") from None
        self._lib = _lib()
        self._ctx = self._new_context(n_gpu_layers)
        self._memory = self._lib.llama_get_memory(self._ctx)
        self._batch = self._lib.llama_batch_init(self.max_call + 1, 0, self._retired_seq + 1)

    def _check_limits(self) -> None:
        if self.n_ctx < 1 or self.n_seq_max < 1:
            raise BackendError("n_ctx and n_seq_max must be positive")
        most = (_lib().llama_max_parallel_sequences() - 2) // 2  # see `self.cache`
        if self.n_seq_max > most:
            raise BackendError(f"n_seq_max {self.n_seq_max} is over llama.cpp's limit of {most}")

    def _new_context(self, n_gpu_layers: int) -> Any:
        lib = _lib()
        params = lib.llama_context_default_params()
        params.n_ctx = self.kv_cells + 1  # + the pad token's cell
        # llama.cpp reserves one output per sequence, within n_batch; our calls stay smaller
        params.n_seq_max = self._retired_seq + 1
        params.n_batch = params.n_ubatch = max(self.max_call + 1, params.n_seq_max)
        params.n_outputs_max_per_seq = 0  # a shared prompt entry outputs for several sequences
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # one cache: a shared prefix lives once, for all its sequences
        # flash attention on the CPU is what skips other sequences' cells (see above)
        params.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.batch_invariant else lib.LLAMA_FLASH_ATTN_TYPE_AUTO
        )
        params.no_perf = True
        ctx = lib.llama_init_from_model(self.model.ptr, params)
        if not ctx:
            raise BackendError(f"model {self.name}: llama.cpp could not create a context of {self.kv_cells} cells")
        return ctx

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # at interpreter exit the process lets go of everything (and module globals are gone)
        if "_batch" in self.__dict__ and not _finalizing():
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)

    @functools.cached_property
    def facts(self) -> Any:  # type: ignore[override]  # read only, unlike Backend's default
        """The model's `ttcl.facts.ModelFacts` (parameters, layers, widths), for FLOPs."""
        from ttcl.backends.models import facts_from_gguf

        return facts_from_gguf(self.path)

    @property
    def n_params(self) -> float:  # type: ignore[override]  # read only, unlike Backend's default
        """Non-embedding parameters: what a token costs is about 2 FLOPs each."""
        return self.facts.params_non_embedding

    def __repr__(self) -> str:
        return f"LlamaBackend({self.name!r}, n_ctx={self.n_ctx}, n_seq_max={self.n_seq_max}, batch={self.decode_batch})"

    # ----------------------------------------------------------------- the contract

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Run all requests together (in chunks of n_seq_max); results in request order.
        Ctrl-C raises `Cut` with what each request had generated by then."""
        with self._lock:
            self._settle()
            self.counters.batches += 1
            prompts = [self._prompt(r, r.params.max_tokens) for r in requests]
            results: list[Generation] = []
            try:
                for chunk in self._chunks(prompts, [r.params.max_tokens for r in requests]):
                    room = [requests[i].params.max_tokens for i in chunk]
                    run = _Run(self, [requests[i] for i in chunk], [prompts[i] for i in chunk], room)
                    results.extend(run.generate())
            except KeyboardInterrupt as stop:
                raise Cut.of_call(results, stop, len(requests)) from None
            return results

    def next_token_probs(self, requests: list[GenerationRequest], options: list[str]) -> list[list[float]]:
        """For each request, the probability of each option's first token as the next token."""
        option_tokens = [self._first_token(o) for o in options]
        with self._lock:
            self._settle()
            prompts = [self._prompt(r, 0) for r in requests]
            results: list[list[float]] = []
            for chunk in self._chunks(prompts, [0] * len(prompts)):
                run = _Run(self, [requests[i] for i in chunk], [prompts[i] for i in chunk], [0] * len(chunk))
                results.extend(run.next_token_probs(option_tokens))
            return results

    def hidden_states(self, requests: list[GenerationRequest]) -> Any:
        """For each request, the final hidden state (after the output norm) at its last
        token, as a float32 array (len(requests), d_model): llama.cpp's embeddings output
        with no pooling, switched on for this call only."""
        import numpy as np

        lib = _lib()
        with self._lock:
            self._settle()
            prompts = [self._prompt(r, 0) for r in requests]
            rows: list[Any] = []
            lib.llama_set_embeddings(self._ctx, True)
            try:
                for chunk in self._chunks(prompts, [0] * len(prompts)):
                    run = _Run(self, [requests[i] for i in chunk], [prompts[i] for i in chunk], [0] * len(chunk))
                    rows.extend(run.hidden_states())
            finally:
                lib.llama_set_embeddings(self._ctx, False)
            return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.model.n_embd), np.float32)

    def reset(self) -> None:
        """Forget every cached sequence: the next call decodes its prompts from scratch."""
        with self._lock:
            self._clear()

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by this model's tokenizer (no BOS, no control tokens parsed)."""
        return len(self.model.tokenize(text, special=False))

    # ----------------------------------------------------------------- requests

    def _prompt(self, request: GenerationRequest, room: int) -> list[int]:
        """The request's prompt tokens, checked against n_ctx with room for its answer."""
        return prompt_tokens(
            self.model.tokenize, render_prompt(self.model, request, self.name), room, self.n_ctx, self.name
        )

    def _first_token(self, option: str) -> int:
        return first_token(self.model.tokenize, option, self.name)

    def _chunks(self, prompts: list[list[int]], room: list[int]) -> list[list[int]]:
        """Request indices in consecutive chunks that fit n_seq_max sequences and the KV cache.
        A request needs its answer's room and the prompt tokens it does not share with the
        request before it (an upper bound: the trie may share more)."""
        chunks: list[list[int]] = []
        used = 0
        for i, prompt in enumerate(prompts):
            shared = common_prefix(prompts[i - 1], prompt) if i and chunks and chunks[-1] else 0
            need = len(prompt) - shared + room[i]
            if not chunks or len(chunks[-1]) == self.n_seq_max or used + need > self.kv_cells:
                chunks.append([])
                used, need = 0, len(prompt) + room[i]
            chunks[-1].append(i)
            used += need
        return chunks

    def _sampler(self, params: SamplingParams) -> Any:
        """A sampler chain for one sequence: [no EOG] → top-k → top-p → temperature → seeded
        draw, or greedy at temperature 0."""
        lib = _lib()
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = lib.llama_sampler_chain_init(chain_params)
        add = functools.partial(lib.llama_sampler_chain_add, chain)
        if self.ignore_eos:
            eog = self.model.eog_tokens
            biases = (lib.llama_logit_bias * len(eog))(*[lib.llama_logit_bias(t, float("-inf")) for t in eog])
            add(lib.llama_sampler_init_logit_bias(self.model.n_vocab, len(eog), biases))
        if params.temperature == 0:
            add(lib.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(lib.llama_sampler_init_top_p(params.top_p, 1))
        add(lib.llama_sampler_init_temp(params.temperature))
        add(lib.llama_sampler_init_dist(params.seed % _DEFAULT_SEED))
        return chain

    # ----------------------------------------------------------------- decoding

    def _decode(self, entries: list[Entry], on_output: Callable[[int, int], None], most: int = 0) -> None:
        """Decode entries in calls of 2..`most` tokens (default and at most max_call; see
        `call_sizes`); after each call, on_output(entry number, index in the call) for each
        entry whose logits are needed (they are gone after the next call)."""
        start = 0
        for size in call_sizes(len(entries), min(most or self.max_call, self.max_call)):
            call = entries[start : start + size]
            for i, (token, pos, seq_ids, output) in enumerate(call):
                self._set_entry(i, token, pos, seq_ids, output)
            pad = size == 1 and self.batch_invariant and self._cells + 1 > _SPLIT_KV_CELLS
            if pad:  # position 0 of the spare sequence, attending to nothing but itself
                self._set_entry(1, call[0][0], 0, [self._pad_seq], False)
            self._llama_decode(size + pad)
            self._cells += size
            self.counters.forward_tokens += size  # pads left out: not the request's work
            self.counters.attended += sum(pos + 1 for _, pos, _, _ in call)
            self.counters.logits += sum(output for *_, output in call)
            if pad:  # its cell is the newest, so the next token takes it: cells stay in order
                _lib().llama_memory_seq_rm(self._memory, self._pad_seq, -1, -1)
            for i, (_, _, _, output) in enumerate(call):
                if output:
                    on_output(start + i, i)
            start += size

    # ----------------------------------------------------------------- measured call sizes

    def _settle(self) -> None:
        """Before the first decode on the CPU: the largest call that keeps results
        batch-invariant and the batch size, read from the cache directory or measured now
        (see `INVARIANCE_SIZES`). A model whose rows change even between calls of one and
        two tokens is not batch-invariant here, and says so."""
        if self._settled:
            return
        self._settled = True
        key = probe_key(self.path, self.threads)
        known = read_record(key)
        record = known or self._measure()
        if known is None and "tokens_per_s" in record:
            write_record(key, record)  # only a whole measurement: a small context skips the timing
        self.batch_invariant = bool(record["invariant"])
        self.max_call = min(int(record["max_call"]), MAX_CALL_TOKENS)
        self.decode_batch = min(self._batch_option or int(record["batch"]), self.max_call)

    def _measure(self) -> dict:
        """Measure the largest invariant call, then time the batch sizes where there is room
        (16 sequences); uses the context's cells and clears them after, counts nothing."""
        saved = self.counters.model_copy()
        try:
            most = self.largest_invariant_call()
            invariant = most >= 2  # else no call size helps: calls stay as large as they may
            most = most if invariant else MAX_CALL_TOKENS
            record: dict[str, Any] = {"invariant": invariant, "max_call": most, "batch": most}
            n = max(PROBE_BATCHES)
            if n <= self.cache.n_ids and self._probe_cells(n) <= self.kv_cells:
                self.max_call = most
                batches = sorted({b for b in PROBE_BATCHES if b <= most} | {min(most, n)})
                figures = self.probe(n, tuple(batches))
                record.update(batch=best_batch(figures, most), tokens_per_s=figures)
            return record
        finally:
            self._clear()
            for name, value in saved:
                setattr(self.counters, name, value)

    def largest_invariant_call(self) -> int:
        """The largest of `INVARIANCE_SIZES` such that a prompt decoded in one call of that
        many tokens, and in every smaller size tried, gives bit for bit the logits of the
        same tokens decoded one call each (1 if not even 2 does). Past 8 tokens the reference
        is decoded in calls of the largest size already shown equal to calls of one."""
        import numpy as np

        tokens = ((self.model.tokenize(_PROBE_TEXT, special=False) or [0]) * MAX_CALL_TOKENS)[:MAX_CALL_TOKENS]
        sizes = [size for size in INVARIANCE_SIZES if size <= min(len(tokens), self.kv_cells - 1)]
        reference = self._prompt_logits(tokens[:8], 1)
        most = 1
        for size in sizes:
            if size > len(reference):
                reference = self._prompt_logits(tokens, most)
            rows = self._prompt_logits(tokens[:size], size)
            if not all(np.array_equal(row, ref) for row, ref in zip(rows, reference)):
                break
            most = size
        self._clear()
        return most

    def _prompt_logits(self, tokens: list[int], most: int) -> list[Any]:
        """The logits after every token of one fresh sequence, decoded in calls of `most`."""
        self._clear()
        rows: list[Any] = []
        for start in range(0, len(tokens), most):
            call = tokens[start : start + most]
            rows += self._one_call([(t, start + i, [0], True) for i, t in enumerate(call)])
        return rows

    @staticmethod
    def _probe_cells(n: int) -> int:
        return n * (1 + PROBE_ROUNDS * len(PROBE_BATCHES) * PROBE_STEPS) + 1

    def probe(self, n: int, batches: tuple[int, ...] = PROBE_BATCHES) -> dict[int, float]:
        """Tokens per second of decode steps over `n` sequences, in calls of at most each of
        `batches` sequences (the best of PROBE_ROUNDS rounds of PROBE_STEPS steps each).
        Uses the context's cells and clears them after."""
        token = (self.model.tokenize("1", special=False) or [0])[0]
        best = dict.fromkeys(batches, float("inf"))
        self._clear()
        try:
            self._decode([(token, 0, list(range(n)), False)], lambda *_: None)
            pos = 1
            for _ in range(PROBE_ROUNDS):
                for batch in batches:
                    start = time.perf_counter()
                    for _ in range(PROBE_STEPS):
                        self._decode([(token, pos, [s], True) for s in range(n)], lambda *_: None, batch)
                        pos += 1
                    best[batch] = min(best[batch], time.perf_counter() - start)
        finally:
            self._clear()
        return {batch: n * PROBE_STEPS / seconds for batch, seconds in best.items()}

    def _one_call(self, entries: list[Entry]) -> list[Any]:
        """Decode `entries` in exactly one call; copies of the logits of those that want them."""
        for i, (token, pos, seq_ids, output) in enumerate(entries):
            self._set_entry(i, token, pos, seq_ids, output)
        self._llama_decode(len(entries))
        self._cells += len(entries)
        return [self._logits(i).copy() for i, entry in enumerate(entries) if entry[3]]

    # ----------------------------------------------------------------- llama.cpp calls

    def _set_entry(self, i: int, token: int, pos: int, seq_ids: list[int], output: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = len(seq_ids)
        for j, seq in enumerate(seq_ids):
            batch.seq_id[i][j] = seq
        batch.logits[i] = output

    def _llama_decode(self, n_tokens: int) -> None:
        self._batch.n_tokens = n_tokens
        self.counters.decode_calls += 1
        code = _lib().llama_decode(self._ctx, self._batch)
        if code != 0:
            reason = _DECODE_ERRORS.get(code, "fatal error")
            raise BackendError(f"model {self.name}: llama_decode failed with code {code} ({reason})")

    def _clear(self) -> None:
        """Forget every sequence and free every cell."""
        _lib().llama_memory_clear(self._memory, True)
        self.cache.held.clear()
        self._cells = 0

    def _fork(self, prompts: list[list[int]], room: list[int]) -> tuple[list[int], list[Fork]]:
        """seq_ids for a chunk's prompts, each given the cells of its fork (seq_cp), and the
        forks. Cached sequences no one forked from make room (seq_rm, see `PrefixCache`).
        When the new cells would not fit beside the cached ones, the cache is cleared first."""
        lib, cache = _lib(), self.cache
        forks = cache.forks(prompts)
        fresh = sum(len(p) - f.length for p, f in zip(prompts, forks))  # an upper bound: no trie sharing
        if self._cells + fresh + sum(room) + 1 > self.kv_cells:  # + the pad token's cell
            self._clear()
            forks = [Fork() for _ in prompts]
        ids, retire = cache.free_ids(len(prompts), keep={f.source for f in forks})
        for seq in retire:  # first: their ids are among the new ones
            lib.llama_memory_seq_cp(self._memory, seq, self._retired_seq, -1, -1)
            lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
            del cache.held[seq]
        for seq, fork in zip(ids, forks):
            if fork.length:
                lib.llama_memory_seq_cp(self._memory, fork.source, seq, 0, fork.length)
                cache.touch(fork.source)
        return ids, forks

    def _logits(self, i: int) -> Any:
        """The logits of entry i of the last call, as a numpy view (valid until the next call)."""
        import numpy as np

        return np.ctypeslib.as_array(_lib().llama_get_logits_ith(self._ctx, i), shape=(self.model.n_vocab,))


class _Run:
    """One chunk of requests on the backend's context: fork the cached prefixes, decode the
    rest of the prompts (shared parts once), then generate. Request i is sequence `ids[i]`.
    The sequences stay cached when the run ends; if it fails, the cache is cleared."""

    def __init__(
        self, backend: LlamaBackend, requests: list[GenerationRequest], prompts: list[list[int]], room: list[int]
    ):
        self.b = backend
        self.requests = requests
        self.prompts = prompts
        self.ids, forks = backend._fork(prompts, room)
        self.plan = plan_prompts(prompts, forks)
        self.ends_at: dict[int, list[int]] = {}  # plan entry -> sequences whose prompt ends there
        for seq, entry in sorted(self.plan.last.items()):
            self.ends_at.setdefault(entry, []).append(seq)

    def decode_prompts(self, on_prompt_end: Callable[[int, int], None]) -> None:
        """Decode the plan; on_prompt_end(sequence, index in call) for every sequence as soon
        as the logits after its prompt are there."""
        plan = self.plan
        self.b.counters.prompt_tokens += len(plan.tokens)
        entries = [
            (token, pos, [self.ids[s] for s in seqs], i in self.ends_at)
            for i, (token, pos, seqs) in enumerate(zip(plan.tokens, plan.positions, plan.seq_ids))
        ]

        def prompt_ends(entry: int, index: int) -> None:
            for seq in self.ends_at[entry]:
                on_prompt_end(seq, index)

        self.b._decode(entries, prompt_ends)

    def next_token_probs(self, option_tokens: list[int]) -> list[list[float]]:
        import numpy as np

        probs: dict[int, list[float]] = {}

        def read(seq: int, index: int) -> None:
            logits = self.b._logits(index).astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            probs[seq] = [float(p[t]) for t in option_tokens]

        with self.caching(self.prompts):
            self.decode_prompts(read)
        return [probs[s] for s in range(len(self.requests))]

    def hidden_states(self) -> list[Any]:
        import numpy as np

        rows: dict[int, Any] = {}
        width = self.b.model.n_embd

        def read(seq: int, index: int) -> None:
            row = _lib().llama_get_embeddings_ith(self.b._ctx, index)
            rows[seq] = np.ctypeslib.as_array(row, shape=(width,)).copy()

        with self.caching(self.prompts):
            self.decode_prompts(read)
        return [rows[s] for s in range(len(self.requests))]

    def generate(self) -> list[Generation]:
        b = self.b
        seqs = [_Sequence(r, p, sampler=b._sampler(r.params)) for r, p in zip(self.requests, self.prompts)]

        def held() -> list[list[int]]:
            # what each sequence's cells hold when done: its prompt and what it sampled, less
            # the last token sampled (never decoded)
            return [seq.prompt + seq.sampled[:-1] for seq in seqs]

        try:
            with self.caching(held):
                self.decode_prompts(lambda s, index: self.sample(seqs[s], index))
                live = [s for s, seq in enumerate(seqs) if seq.finish is None]
                while live:
                    # finished sequences keep their cells: freeing them would let new tokens take
                    # lower cells, out of position order (see `call_sizes` and `PrefixCache`)
                    entries = [(seqs[s].sampled[-1], seqs[s].pos, [self.ids[s]], True) for s in live]
                    b._decode(entries, functools.partial(self._sample_live, seqs, live), b.decode_batch)
                    live = [s for s in live if seqs[s].finish is None]
        except KeyboardInterrupt:  # the text so far is kept (the cache was cleared by `caching`)
            raise Cut([self.result(s, seq.cut()) for s, seq in enumerate(seqs)]) from None
        finally:
            for seq in seqs:
                _lib().llama_sampler_free(seq.sampler)
        return [self.result(s, seq) for s, seq in enumerate(seqs)]

    @contextlib.contextmanager
    def caching(self, held: list[list[int]] | Callable[[], list[list[int]]]) -> Iterator[None]:
        """Cache the run's sequences (holding the tokens `held` gives) when the block ends;
        clear the whole cache if it fails (Ctrl-C included): half-decoded cells are no use."""
        try:
            yield
        except BaseException:
            self.b._clear()
            raise
        for seq, tokens in zip(self.ids, held() if callable(held) else held):
            self.b.cache.held[seq] = tokens

    def _sample_live(self, seqs: list[_Sequence], live: list[int], k: int, index: int) -> None:
        """Sample the k-th live sequence from the logits at `index` of the decode call."""
        self.sample(seqs[live[k]], index)

    def sample(self, seq: _Sequence, index: int) -> None:
        """Sample the next token of `seq` from output `index` of the last call, and see
        whether the sequence is done."""
        b = self.b
        token = _lib().llama_sampler_sample(seq.sampler, b._ctx, index)
        b.counters.generated_tokens += 1
        eog = not b.ignore_eos and b.model.is_eog(token)
        if not eog:  # the text as it comes: an end-of-generation token adds none
            seq.text += seq.decoder.decode(b.model.piece(token))
        seq.add(token, eog, lambda: _logprob(b._logits(index), token), lambda: self.find_stop(seq))

    @staticmethod
    def find_stop(seq: _Sequence) -> int | None:
        # a new stop string ends in the newest text: search only the tail that could hold it
        stops = seq.request.params.stop
        return first_stop(seq.text, stops, max(0, len(seq.text) - max(len(s) for s in stops) - 16))

    def result(self, s: int, seq: _Sequence) -> Generation:
        return seq.result(seq.text + seq.decoder.decode(b"", final=True), self.plan.charged[s])


def _logprob(logits: Any, token: int) -> float:
    """log softmax(logits)[token], in float64."""
    import numpy as np

    x = logits.astype(np.float64)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum()))


# --------------------------------------------------------------------------- shared backends


def load_backend(
    path: str,
    n_ctx: int = 4096,
    n_gpu_layers: int = 0,
    threads: int = 0,
    n_seq_max: int = 64,
    kv_cells: int = 0,
    batch: int = 0,
) -> LlamaBackend:
    """The shared backend for a model file and settings: the same file (by name or by path)
    and settings give the same object, so one loaded model, one context and one set of
    counters serve every model declaration and verifier that uses them."""
    threads = threads or os.cpu_count() or 1
    kv_cells = max(kv_cells or 4 * n_ctx, n_ctx)
    path = resolve_model_path(path)
    name = os.path.basename(path)  # the file: one backend serves every name the file goes by
    return shared(LlamaBackend, path, n_ctx, n_gpu_layers, threads, n_seq_max, name, kv_cells=kv_cells, batch=batch)


def backend_for(model: dict) -> LlamaBackend:
    """The shared backend for a model declaration such as {"kind": "llama", "path":
    "smollm2-135m", "temperature": 0.8, "max_tokens": 256, "n_ctx": 4096, ...}. Sampling
    keys are the caller's business (they go in each request's SamplingParams); optional
    "n_seq_max" and "kv_cells" keys size the context, "batch" sets the sequences per decode
    call (`load_backend`'s parameters)."""
    return load_backend(**declared(model, load_backend, "llama"))
