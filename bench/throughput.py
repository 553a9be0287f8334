"""Generation throughput: 16 samples of 128 tokens of one question on SmolLM2-135M, 2 threads.

    python bench/throughput.py [--samples 16] [--tokens 128] [--threads 2] [--no-q8] [--beam-only]

Prints generated tokens per second for
  (a) TTCL: `ttcl.compile("... program main = sample(16) |> vote").run(...)`, tokens from the
      backend's counters (and the same 16 requests straight to `LlamaBackend.generate`),
  (b) 16 sequential `llama_cpp.Llama.create_completion` calls: the high-level API, what a
      user writes by hand (it has no `n`),
  (c) a minimal batched-decode loop on the raw low-level API: the ceiling,
and the ratios a/b (target >= 2.0) and a/c (target >= 0.85), plus the share of prompt tokens
that prefix sharing saved. End-of-generation tokens are masked everywhere (`ignore_eos` on the
backend, a logit bias elsewhere), so every sample is exactly --tokens long and all three do
the same work. All of it twice: on the embedded Q4_1 file, and on the same weights
requantized to Q8_0 (written to a temporary directory), whose batched matmul has tiled kernels
on this CPU. Then beam search with and without the backend's cross-call prefix cache.
Asserts nothing about time: a benchmark, not a test.

Run it alone. llama.cpp's OpenMP threads spin while they wait, so two llama.cpp processes on
the same cores (this bench and a test run, say) slow each other down a hundredfold;
OMP_WAIT_POLICY=PASSIVE avoids that, but costs about 4x on one sequence when alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from timing import Stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ttcl  # noqa: E402
from ttcl.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from ttcl.backends.llama import LlamaBackend, render_prompt  # noqa: E402
from ttcl.backends.models import resolve_model_path
from ttcl.prompts import solve_messages  # noqa: E402

QUESTION = "A farmer has 17 sheep and buys 25 more, then sells 9. How many sheep does he have?"
TEMPERATURE = 0.8


def ttcl_sample16(backend: LlamaBackend, samples: int, tokens: int, threads: int) -> tuple[int, float]:
    """(a) The TTCL program, run on `backend`: (generated tokens, seconds)."""
    program = ttcl.compile(
        f'model policy = llama("smollm2-135m", temperature={TEMPERATURE}, max_tokens={tokens}, threads={threads})\n'
        f"program main = sample({samples}) |> vote"
    )
    before = backend.counters.generated_tokens
    with Stopwatch() as clock:
        program.run(QUESTION, seed=0, backend=backend)
    return backend.counters.generated_tokens - before, clock.seconds


def backend_sample16(backend: LlamaBackend, samples: int, tokens: int) -> tuple[int, float, float]:
    """(a') The same requests straight to the backend: (generated tokens, seconds, share of
    prompt tokens saved by prefix sharing)."""
    requests = [
        GenerationRequest(
            messages=solve_messages(QUESTION, []),
            params=SamplingParams(temperature=TEMPERATURE, max_tokens=tokens, seed=seed),
        )
        for seed in range(samples)
    ]
    with Stopwatch() as clock:
        out = backend.generate(requests)
    elapsed = clock.seconds
    prompt_len = len(prompt_tokens(backend))
    saved = 1 - sum(g.prompt_tokens for g in out) / (samples * prompt_len)
    return sum(g.generated_tokens for g in out), elapsed, saved


def prompt_text(backend: LlamaBackend) -> str:
    """The prompt all three runs use: the question in TTCL's solve template, chat-rendered."""
    return render_prompt(backend.model, GenerationRequest(messages=solve_messages(QUESTION, [])), backend.name)


def prompt_tokens(backend: LlamaBackend) -> list[int]:
    return backend.model.tokenize(prompt_text(backend), special=True)


def high_level(path: str, prompt: str, eog: list[int], samples: int, tokens: int, threads: int) -> tuple[int, float]:
    """(b) One `create_completion` per sample, the way a user would write it."""
    llm = _high_level_llama(path, n_ctx=len(prompt) + tokens + 64, threads=threads)
    no_eog = {t: float("-inf") for t in eog}
    options = dict(max_tokens=tokens, temperature=TEMPERATURE, top_k=0, top_p=1.0, min_p=0.0, logit_bias=no_eog)
    llm.create_completion(prompt, **{**options, "max_tokens": 4})  # warm up
    generated = 0
    with Stopwatch() as clock:
        for seed in range(samples):
            out = llm.create_completion(prompt, seed=seed, **options)
            generated += out["usage"]["completion_tokens"]
    return generated, clock.seconds


def _high_level_llama(path: str, n_ctx: int, threads: int):
    """`llama_cpp.Llama` with one workaround: this llama.cpp build crashes in its AMX kernels on
    batches of more than one token (e.g. any prompt), and `Llama` has no switch for the extra
    buffer types, so they are turned off in the default model params it starts from."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_extra_buffer_types():
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_extra_buffer_types
    try:
        return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        lib.llama_model_default_params = defaults


def raw_batched(
    path: str, prompt: list[int], eog: list[int], samples: int, tokens: int, threads: int, flash_attn: bool = True
) -> tuple[int, float]:
    """(c) The ceiling: the prompt decoded once for every sequence, then one llama_decode per
    step for all of them, one sampler chain per sequence; no text, no checks. Flash attention
    on is llama.cpp's default on the CPU and what the backend uses; off is faster here but
    its results depend on the batch's cache layout."""
    import llama_cpp.llama_cpp as lib

    model_params = lib.llama_model_default_params()
    model_params.use_extra_bufts = False  # see _high_level_llama
    model = lib.llama_model_load_from_file(path.encode(), model_params)
    params = lib.llama_context_default_params()
    params.n_ctx = len(prompt) + samples * tokens + 256
    params.n_batch = params.n_ubatch = max(512, len(prompt), samples)
    params.n_seq_max = samples
    params.kv_unified = True
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_threads = params.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, params)
    batch = lib.llama_batch_init(params.n_batch, 0, samples)
    biases = (lib.llama_logit_bias * len(eog))(*[lib.llama_logit_bias(t, float("-inf")) for t in eog])

    def chain(seed: int):
        c = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(
            c,
            lib.llama_sampler_init_logit_bias(
                lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)), len(eog), biases
            ),
        )
        lib.llama_sampler_chain_add(c, lib.llama_sampler_init_temp(TEMPERATURE))
        lib.llama_sampler_chain_add(c, lib.llama_sampler_init_dist(seed))
        return c

    def put(i: int, token: int, pos: int, seqs: range | list[int], logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, len(seqs), logits
        for j, s in enumerate(seqs):
            batch.seq_id[i][j] = s

    chains = [chain(seed) for seed in range(samples)]
    with Stopwatch() as clock:
        for i, token in enumerate(prompt):
            put(i, token, i, range(samples), i == len(prompt) - 1)
        batch.n_tokens = len(prompt)
        assert lib.llama_decode(ctx, batch) == 0
        last = [lib.llama_sampler_sample(c, ctx, len(prompt) - 1) for c in chains]
        for step in range(tokens - 1):
            for s in range(samples):
                put(s, last[s], len(prompt) + step, [s], True)
            batch.n_tokens = samples
            assert lib.llama_decode(ctx, batch) == 0
            last = [lib.llama_sampler_sample(c, ctx, s) for s, c in enumerate(chains)]
    elapsed = clock.seconds
    for c in chains:
        lib.llama_sampler_free(c)
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    return samples * tokens, elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--model", default="smollm2-135m", help="a GGUF file or known model name (default: the embedded SmolLM2)"
    )
    parser.add_argument("--no-q8", action="store_true", help="skip the figures on the model requantized to Q8_0")
    parser.add_argument("--beam-only", action="store_true", help="only the beam search figures")
    args = parser.parse_args(argv)
    if not args.beam_only:
        path = resolve_model_path(args.model)
        sampling(path, os.path.basename(path), args.samples, args.tokens, args.threads)
        if not args.no_q8:
            with tempfile.TemporaryDirectory() as tmp:
                sampling(
                    requantized(path, tmp),
                    "the same weights requantized to Q8_0",
                    args.samples,
                    args.tokens,
                    args.threads,
                )
    beam_search(args.threads)


def requantized(path: str, directory: str) -> str:
    """`path` requantized to Q8_0 in `directory`. ggml's batched matmul has tiled kernels
    (llamafile's tinyBLAS) for Q8_0 and Q4_0 but not for Q4_1, the embedded file's type."""
    import llama_cpp.llama_cpp as lib

    out = os.path.join(directory, "q8_0.gguf")
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = lib.LLAMA_FTYPE_MOSTLY_Q8_0, True, 2
    if lib.llama_model_quantize(path.encode(), out.encode(), params) != 0:
        raise SystemExit(f"could not requantize {path}")
    return out


def sampling(path: str, label: str, n: int, tokens: int, threads: int) -> None:
    """(a), (b) and (c) on one model file, side by side."""
    backend = LlamaBackend(path, n_ctx=1024, threads=threads, n_seq_max=max(n, 1), ignore_eos=True)
    backend.generate([GenerationRequest(messages=solve_messages(QUESTION, []), params=SamplingParams(max_tokens=4))])
    prompt = prompt_tokens(backend)
    eog = backend.model.eog_tokens
    print(f"\n{label}: {threads} threads, {n} samples x {tokens} tokens, prompt {len(prompt)} tokens")

    backend.reset()
    rows = {
        "(a)  TTCL program sample(N) |> vote": ttcl_sample16(backend, n, tokens, threads),
    }
    backend.reset()  # so (a') decodes its prompt and the sharing figure is its own
    a_gen, a_time, saved = backend_sample16(backend, n, tokens)
    rows["(a') LlamaBackend.generate, N requests"] = (a_gen, a_time)
    rows["(b)  N x Llama.create_completion"] = high_level(path, prompt_text(backend), eog, n, tokens, threads)
    rows["(c)  raw low-level batched loop"] = raw_batched(path, prompt, eog, n, tokens, threads)
    rows["(c') the same, flash attention off"] = raw_batched(path, prompt, eog, n, tokens, threads, flash_attn=False)

    rate = {}
    for row, (generated, seconds) in rows.items():
        rate[row[:4].strip()] = generated / seconds
        print(f"{row:<40} {generated:5d} tokens {seconds:6.2f} s {generated / seconds:7.1f} tok/s")
    a, a_backend, b, c, c_off = (rate[k] for k in ("(a)", "(a')", "(b)", "(c)", "(c')"))
    print(f"a/b  = {a / b:.2f}   (target >= 2.0)")
    print(f"c/b  = {c / b:.2f}   (the most batching can give here)")
    print(f"a/c  = {a / c:.2f}   (target >= 0.85)")
    print(f"a/c' = {a / c_off:.2f}   (flash attention off: faster here when idle, not batch-invariant)")
    print(f"a'/c = {a_backend / c:.2f}   (the backend alone)")
    print(f"prompt tokens saved by prefix sharing: {saved:.1%} ({n} x {len(prompt)} -> {len(prompt)})")


def beam_search(threads: int) -> None:
    """Beam search (n=16, width 4) through TTCL with self-verification, twice: with the
    backend's prefix cache (each step's beams and verifier prompts fork the cells of the step
    before) and with the cache cleared before every call (each call decodes its prompts from
    scratch). Generated tokens per second of wall time, verifier passes included, and the
    prompt tokens each processed. The answers must agree: forking changes no result."""
    backend = LlamaBackend(resolve_model_path("smollm2-135m"), n_ctx=2048, threads=threads, n_seq_max=16)
    program = ttcl.compile(
        f'model policy = llama("smollm2-135m", temperature={TEMPERATURE}, max_tokens=64, threads={threads})\n'
        "verifier prm = self_verify(policy)\n"
        "program main = beam(16, prm, width=4, depth=6) |> weighted_vote(prm)"
    )
    results = {}
    for label, target in (("prefix cache", backend), ("cleared every call", _Forgetful(backend))):
        backend.reset()
        with Stopwatch() as clock:
            result = program.run(QUESTION, seed=0, backend=target)
        seconds = clock.seconds
        cost, results[label] = result.cost, result
        print(
            f"beam(16, prm, width=4, depth=6), {label:<18}: {cost.generated_tokens} generated tokens in "
            f"{seconds:5.1f} s = {cost.generated_tokens / seconds:5.1f} tok/s overall; prompt tokens decoded "
            f"{cost.prompt_tokens} (generation) + {cost.verifier_prompt_tokens} (verifier)"
        )
    same = len({(r.answer, r.text) for r in results.values()}) == 1
    print(f"same answer and text both ways: {same}")


class _Forgetful:
    """A backend that clears its prefix cache before every call (the comparison above)."""

    def __init__(self, backend: LlamaBackend):
        self.backend = backend
        self.name, self.counters = backend.name, backend.counters

    def generate(self, requests):
        self.backend.reset()
        return self.backend.generate(requests)

    def next_token_probs(self, requests, options):
        self.backend.reset()
        return self.backend.next_token_probs(requests, options)

    def count_tokens(self, text):
        return self.backend.count_tokens(text)


if __name__ == "__main__":
    main()
