"""Torch against llama.cpp: 16 samples of 128 tokens of one question on SmolLM2-135M, side by side.

    python bench/torch_vs_llama.py [--samples 16] [--tokens 128] [--threads 2] [--dtype float32] [--device cpu]

Sends the same `sample(16)` batch (the question in TTCL's solve template, temperature 0.8,
seeds 0..15) to `LlamaBackend` on the embedded Q4_1 GGUF file and to `TorchBackend` on the
same file dequantized (float32 by default), and prints for each the generated tokens per
second, the prompt tokens it prefilled and the share of the 16 prompts that prefilling the
shared prompt once saved; then torch's speed as a share of llama.cpp's. End-of-generation
tokens are masked on both (`ignore_eos`), so every sample is exactly --tokens long and both do
the same work. Each backend is loaded and warmed up (one short call) before it is timed, and
its kept sequences are dropped, so the timed call prefills its prompt. Asserts nothing about
time: a benchmark, not a test.

Run it alone: llama.cpp's OpenMP threads spin while they wait, so a second process on the
same cores (another benchmark, a test run) slows both down many times over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timing import Stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttcl.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from ttcl.prompts import solve_messages  # noqa: E402

QUESTION = "A farmer has 17 sheep and buys 25 more, then sells 9. How many sheep does he have?"
TEMPERATURE = 0.8


def requests(samples: int, tokens: int) -> list[GenerationRequest]:
    """The sample(n) batch: one prompt, n seeds."""
    return [
        GenerationRequest(
            messages=solve_messages(QUESTION, []),
            params=SamplingParams(temperature=TEMPERATURE, max_tokens=tokens, seed=seed),
        )
        for seed in range(samples)
    ]


def timed(backend, samples: int, tokens: int) -> dict:
    """One warm-up call, then the timed batch from an empty cache: generated tokens, seconds,
    tokens per second, prompt tokens prefilled, and the share of samples × prompt saved."""
    backend.generate(requests(2, 4))
    backend.reset()
    batch = requests(samples, tokens)
    before = backend.counters.model_copy()
    with Stopwatch() as clock:
        out = backend.generate(batch)
    seconds = clock.seconds
    generated = backend.counters.generated_tokens - before.generated_tokens
    prefilled = sum(g.prompt_tokens for g in out)
    prompt = len(backend._prompt(batch[0], 0))
    return {
        "generated": generated,
        "seconds": seconds,
        "tok/s": generated / seconds,
        "prefilled": prefilled,
        "saved": 1 - prefilled / (samples * prompt),
    }


def llama(model: str, threads: int, samples: int, tokens: int) -> dict:
    from ttcl.backends.llama import LlamaBackend

    backend = LlamaBackend(model, n_ctx=1024, threads=threads, n_seq_max=samples, ignore_eos=True)
    return timed(backend, samples, tokens)


def torch(model: str, threads: int, samples: int, tokens: int, dtype: str, device: str) -> dict:
    from ttcl.backends.hf import TorchBackend

    backend = TorchBackend(
        model, device=device, dtype=dtype, n_ctx=1024, threads=threads, n_seq_max=samples, ignore_eos=True
    )
    return timed(backend, samples, tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--model", default="smollm2-135m", help="a GGUF file or known model name (default: the embedded SmolLM2)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="torch's dtype")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch's device")
    args = parser.parse_args(argv)
    runs = {
        "llama.cpp": llama(args.model, args.threads, args.samples, args.tokens),
        f"torch ({args.device}, {args.dtype})": torch(
            args.model, args.threads, args.samples, args.tokens, args.dtype, args.device
        ),
    }
    print(f"sample({args.samples}) × {args.tokens} tokens on {args.model}, {args.threads} threads")
    print(f"{'backend':<24} {'generated':>9} {'seconds':>8} {'tok/s':>8} {'prefilled':>9} {'prefill saved':>13}")
    for name, r in runs.items():
        print(
            f"{name:<24} {r['generated']:>9} {r['seconds']:>8.2f} {r['tok/s']:>8.1f} {r['prefilled']:>9} "
            f"{r['saved']:>13.0%}"
        )
    llama_run, torch_run = runs.values()
    print(f"torch / llama.cpp: {torch_run['tok/s'] / llama_run['tok/s']:.2f}x the generated tokens per second")


if __name__ == "__main__":
    main()
