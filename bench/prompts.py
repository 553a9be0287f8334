"""Solve prompts on the embedded SmolLM2-135M: pass@1 on held-out arithmetic, old vs new default.

    python bench/prompts.py [--set test] [--per-level 20] [--samples 4] [--threads 2]

Each prompt runs `sample(k)` at the model's default temperature (0.8) on the same questions;
pass@1 is the mean over questions of the fraction of the k samples whose extracted answer is
right (the unbiased estimate from k samples), with its 95% interval over questions. A
"placeholder" sample is one whose final statement copies a placeholder ("The answer is N.").

The question sets never meet: `--set fit` (arith levels 1 to 3, seed 31) is where prompt
wording was chosen; `--set test` (seed 32, less every question of the fit set and of seeds 0,
1, 2, 7 and 99 that other benchmarks and the shipped PRM head use) is where the figures in
docs/benchmarks.md come from. Run it alone (see bench/throughput.py on OpenMP).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ttcl  # noqa: E402
from ttcl.eval.datasets import arith  # noqa: E402
from ttcl.prompts import HEAD_CONTEXT, SOLVE_PROMPTS  # noqa: E402
from ttcl.runtime.answers import NumberAnswer  # noqa: E402

LEVELS = (1, 2, 3)
FIT_SEED, TEST_SEED = 31, 32
OTHER_SEEDS = (0, 1, 2, 7, 99)  # seeds other benchmarks and the shipped head draw from
PROMPTS = {"old default": HEAD_CONTEXT, "new default": SOLVE_PROMPTS["number"]}


def questions(which: str, per_level: int) -> list[dict]:
    """`per_level` questions of each level: the fit set, or the test set (which excludes the
    fit set's questions and those of OTHER_SEEDS)."""
    if which == "fit":
        return [q for level in LEVELS for q in arith(per_level, level, FIT_SEED)]
    out = []
    for level in LEVELS:
        taken = {
            q["question"] for seed in (FIT_SEED, *OTHER_SEEDS) for q in arith(min(100, 4 * per_level), level, seed)
        }
        fresh = [q for q in arith(min(810, 10 * per_level), level, TEST_SEED) if q["question"] not in taken]
        out += fresh[:per_level]
    return out


def program(template: str, samples: int, threads: int) -> ttcl.Program:
    escaped = template.replace("\\", "\\\\").replace('"', '\\"')
    return ttcl.compile(
        f'model policy = llama("smollm2-135m", threads={threads})\n'
        f'prompt solve = """{escaped}"""\n'
        f"program main = sample({samples}, prompt=solve) |> vote\n"
    )


def measure(template: str, qs: list[dict], samples: int, threads: int) -> dict:
    kind = NumberAnswer()
    results = program(template, samples, threads).run_many(qs, seed=0)
    per_question, placeholders, tokens = [], 0, 0
    for q, result in zip(qs, results):
        right = [kind.same(c.answer, q["answer"]) for c in result.candidates]
        per_question.append(sum(right) / len(right))
        placeholders += sum(bool(re.search(r"answer is \**\s*N\b", c.text)) for c in result.candidates)
        tokens += sum(c.generated_tokens for c in result.candidates)
    mean = statistics.fmean(per_question)
    half = 1.96 * statistics.stdev(per_question) / math.sqrt(len(per_question))
    return {
        "pass@1": mean,
        "ci": (max(0.0, mean - half), min(1.0, mean + half)),
        "placeholder": placeholders / (len(qs) * samples),
        "tokens": tokens / (len(qs) * samples),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", choices=("fit", "test"), default="test")
    p.add_argument("--per-level", type=int, default=20)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    qs = questions(args.set, args.per_level)
    print(f"{args.set} set: arith levels 1-3, {len(qs)} questions, {args.samples} samples each, SmolLM2-135M")
    print(f"{'prompt':<14} {'pass@1':>8} {'95% interval':>16} {'placeholder':>12} {'tokens':>7}")
    for name, template in PROMPTS.items():
        m = measure(template, qs, args.samples, args.threads)
        lo, hi = m["ci"]
        print(
            f"{name:<14} {m['pass@1']:>8.1%} {f'{lo:.1%}-{hi:.1%}':>16} {m['placeholder']:>12.1%} {m['tokens']:>7.0f}"
        )


if __name__ == "__main__":
    main()
