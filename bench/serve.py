"""`ttcl serve`'s requests per second with 1 and with 8 concurrent clients, on the embedded SmolLM2-135M.

    python bench/serve.py [--requests 16] [--samples 4] [--tokens 48] [--threads 0]

Serves `sample(n) |> vote` on 127.0.0.1 (in this process, on a free port) and sends the same
arith:1 questions twice through the `openai` client: one client at a time, then 8 clients at
once, each taking the next question as it gets its reply. Concurrent requests share the
server's batches (up to 8 questions), so the model decodes their samples together. Before each
run the model's prompt cache is emptied, and every request is seeded, so both runs do the same
work (the generated tokens printed are equal). Asserts nothing about time: a benchmark, not a
test.

Run it alone: a second llama.cpp process on the same cores slows both many times over.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from timing import Stopwatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

import ttcl  # noqa: E402
from ttcl.backends import backend_for  # noqa: E402
from ttcl.eval.datasets import load  # noqa: E402
from ttcl.serve import Server  # noqa: E402

CLIENTS = (1, 8)


def measure(server: Server, questions: list[str], clients: int) -> dict:
    """Send every question, `clients` at a time; the wall time, tokens and backend calls."""
    backend = backend_for(server.program.ir.models["policy"])
    backend.reset()  # each run decodes its prompts from scratch
    calls, tokens, lock = backend.counters.batches, [], threading.Lock()
    todo = iter(questions)

    def client() -> None:
        api = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=3600)
        while True:
            with lock:
                question = next(todo, None)
            if question is None:
                return
            reply = api.chat.completions.create(model=server.name, messages=[{"role": "user", "content": question}])
            with lock:
                tokens.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    with Stopwatch() as clock:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = clock.seconds
    return {
        "clients": clients,
        "seconds": seconds,
        "rps": len(questions) / seconds,
        "tokens": sum(tokens),
        "calls": backend.counters.batches - calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per run (default 16)")
    parser.add_argument("--samples", type=int, default=4, help="samples per question (default 4)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per sample (default 48)")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default 0: every core)")
    args = parser.parse_args()
    program = ttcl.compile(
        f'model policy = llama("smollm2-135m", temperature=0.7, max_tokens={args.tokens}, threads={args.threads})\n'
        f"program main = sample({args.samples}) |> vote"
    )
    questions = [q["question"] for q in load("arith:1", limit=args.requests).questions]
    with Server(program, "vote", port=0, max_batch=max(CLIENTS)).start() as server:
        measure(server, questions[:1], 1)  # warm: the model loaded, its first call made
        rows = [measure(server, questions, clients) for clients in CLIENTS]
    print(
        f"{args.requests} arith:1 questions through `ttcl serve`, sample({args.samples}) |> vote, "
        f"{args.tokens} tokens at most, seed 0, llama.cpp threads={args.threads}"
    )
    print(f"{'clients':>7} {'seconds':>8} {'req/s':>7} {'vs 1':>6} {'tokens':>7} {'backend calls':>14}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['seconds']:>8.1f} {r['rps']:>7.3f} {r['rps'] / rows[0]['rps']:>5.2f}x "
            f"{r['tokens']:>7} {r['calls']:>14}"
        )


if __name__ == "__main__":
    main()
