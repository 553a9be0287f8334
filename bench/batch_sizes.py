"""Sequences per decode call: tokens/s of `sample(16)` decoding with the calls of each
generation step capped at 1, 2, 4, 8 and 16 sequences, per model.

    python bench/batch_sizes.py [--models smollm2-135m qwen2.5-coder-0.5b] [--samples 16]
                                [--tokens 64] [--threads 2] [--batches 1 2 4 8 16] [--repeat 1]

For each model and cap, 16 requests for one question at temperature 0.8, seeds 0..15,
end-of-generation masked so every sample is --tokens long; the figure is generated tokens
over the wall time of the `generate` call (the one shared prompt included), the best of
--repeat runs. Each cap is set on the backend after its first call, past the largest call
that keeps results batch-invariant where a cap is above it (so every cap is measured); the
table says whether each cap gave the texts of one sequence per call. Also: one sequence
alone (tokens/s), and what the backend settles on by itself (`batch=0`): the largest
invariant call and the batch size its probe picked, with the probe's own figures, as kept
in the cache directory (delete ~/.cache/ttcl/batch to measure again).
Asserts nothing about time: a benchmark, not a test.

Run it alone. llama.cpp's OpenMP threads spin while they wait, so two llama.cpp processes on
the same cores slow each other down badly; OMP_WAIT_POLICY=PASSIVE avoids that, at a cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timing import Stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttcl.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from ttcl.backends.llama import MAX_CALL_TOKENS, LlamaBackend, probe_key, read_record  # noqa: E402
from ttcl.backends.models import resolve_model_path  # noqa: E402
from ttcl.prompts import solve_messages  # noqa: E402

QUESTION = "A farmer has 17 sheep and buys 25 more, then sells 9. How many sheep does he have?"


def requests(samples: int, tokens: int) -> list[GenerationRequest]:
    """`samples` requests for the question, seeds 0..samples-1."""
    return [
        GenerationRequest(
            messages=solve_messages(QUESTION, []),
            params=SamplingParams(temperature=0.8, max_tokens=tokens, seed=seed),
        )
        for seed in range(samples)
    ]


def timed(backend: LlamaBackend, batch: list[GenerationRequest], repeat: int) -> tuple[float, list[str]]:
    """(tokens/s, texts): the best of `repeat` runs, each from an empty cache."""
    best, out = 0.0, []
    for _ in range(repeat):
        backend.reset()
        before = backend.counters.generated_tokens
        with Stopwatch() as clock:
            out = backend.generate(batch)
        best = max(best, (backend.counters.generated_tokens - before) / clock.seconds)
    return best, [g.text for g in out]


def measure(model: str, args: argparse.Namespace) -> dict:
    """Every figure for one model."""
    path = resolve_model_path(model)
    n_ctx = 512 + args.tokens

    def backend(cap: int) -> LlamaBackend:
        # room for the shared prompt and every sample's tokens in the unified cache
        cells = n_ctx + args.samples * args.tokens + 64
        b = LlamaBackend(
            path, n_ctx=n_ctx, threads=args.threads, n_seq_max=args.samples, kv_cells=cells, ignore_eos=True
        )
        b.generate(requests(2, 4))  # warm up; the backend settles its call sizes (measured, or kept)
        if cap:
            b.max_call, b.decode_batch = max(b.max_call, cap), cap
        return b

    batch = requests(args.samples, args.tokens)
    rates, texts = {}, {}
    for cap in args.batches:
        rates[cap], texts[cap] = timed(backend(cap), batch, args.repeat)
        print(f"  {model}: batch {cap}: {rates[cap]:.1f} tok/s", file=sys.stderr, flush=True)
    alone, _ = timed(backend(1), batch[:1], args.repeat)
    settled = backend(0)
    return {
        "rates": rates,
        "same": {cap: texts[cap] == texts[min(texts)] for cap in texts},
        "alone": alone,
        "settled": (settled.max_call, settled.decode_batch),
        "record": read_record(probe_key(settled.path, settled.threads)) or {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    results = {model: measure(model, args) for model in args.models}

    print(f"sample({args.samples}) x {args.tokens} tokens, {args.threads} threads: generated tokens/s")
    print("| sequences per call | " + " | ".join(results) + " |")
    print("|---" + "|---" * len(results) + "|")
    for cap in args.batches:
        cells = [f"{r['rates'][cap]:.1f}" + ("" if r["same"][cap] else " (other texts)") for r in results.values()]
        print(f"| {cap} | " + " | ".join(cells) + " |")
    print("| one sequence alone | " + " | ".join(f"{r['alone']:.1f}" for r in results.values()) + " |")
    for model, r in results.items():
        most, batch = r["settled"]
        figures = ", ".join(f"{b}: {float(v):.0f}" for b, v in r["record"].get("tokens_per_s", {}).items())
        cap = "no cap" if batch == MAX_CALL_TOKENS else f"batch {batch}"
        print(f"{model}: calls of at most {most} tokens keep results invariant; probe ({figures} tok/s) -> {cap}")


if __name__ == "__main__":
    main()
