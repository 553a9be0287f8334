"""A program run locally and through a server, side by side, on the embedded SmolLM2-135M.

    python bench/served.py [--questions 6] [--samples 4] [--tokens 48]

Starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (`tests/llama_server.py`)
and runs the same eval, `sample(n) |> vote` on the first arith questions with the same seeds,
three ways: the llama backend in-process (one lockstep batch of every question's samples),
the `openai(...)` backend with one request in flight, and with `--questions` in flight (one
thread per question). It prints each one's generated tokens per second, HTTP requests and
accuracy, and the ratios to the local run. llama-cpp-python's server runs one request at a
time, so concurrency cannot speed it up here; on vLLM or SGLang it is what feeds their
continuous batching. Asserts nothing about time: a benchmark, not a test.

Run it alone: a second llama.cpp process on the same 2 cores slows both many times over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from timing import Stopwatch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llama_server import MODEL_ALIAS, Server  # noqa: E402

import ttcl  # noqa: E402
from ttcl.backends import backend_for  # noqa: E402
from ttcl.eval.datasets import load  # noqa: E402
from ttcl.runtime.answers import same_answer  # noqa: E402


def program(model: str, samples: int) -> ttcl.Program:
    return ttcl.compile(f"model m = {model}\nprogram main = sample({samples}) |> vote")


def measure(name: str, prog: ttcl.Program, questions: list[dict], server: Server | None) -> dict:
    """Run the questions once, warm (one question first), and time it."""
    prog.run(questions[0]["question"], seed=99)
    backend = backend_for(prog.ir.models["m"])
    before, served = backend.counters.generated_tokens, server.completions_served() if server else 0
    with Stopwatch() as clock:
        results = prog.run_many(questions, seed=0)
    seconds = clock.seconds
    tokens = backend.counters.generated_tokens - before
    right = sum(same_answer(r.answer, q["answer"]) for r, q in zip(results, questions))
    return {
        "name": name,
        "seconds": seconds,
        "tokens": tokens,
        "tok_s": tokens / seconds,
        "requests": server.completions_served() - served if server else 0,
        "right": right,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    questions = load("arith:1", limit=args.questions).questions
    options = f"temperature=0.7, max_tokens={args.tokens}"
    rows = [
        measure("llama.cpp in-process", program(f'llama("smollm2-135m", {options})', args.samples), questions, None)
    ]
    server = Server(Path(tempfile.mkdtemp()) / "server.log").start()
    try:
        for concurrency in (1, args.questions):
            served = (
                f'openai("{server.url}", model="{MODEL_ALIAS}", config="smollm2-135m", '
                f"concurrency={concurrency}, {options})"
            )
            rows.append(measure(f"served, concurrency {concurrency}", program(served, args.samples), questions, server))
    finally:
        server.kill()
    print(f"{args.questions} arith:1 questions, sample({args.samples}) |> vote, {args.tokens} tokens at most, seed 0")
    print(f"{'run':<26} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs local':>9} {'requests':>9} {'right':>6}")
    for r in rows:
        print(
            f"{r['name']:<26} {r['seconds']:>8.1f} {r['tokens']:>7} {r['tok_s']:>7.1f} "
            f"{r['tok_s'] / rows[0]['tok_s']:>8.2f}x {r['requests']:>9} {r['right']:>6}"
        )


if __name__ == "__main__":
    main()
