"""Estimated against measured FLOPs, per stdlib strategy, on SmolLM2-135M.

    python bench/cost_accuracy.py [--questions 40] [--level 2] [--threads 2] [--calibration-out FILE]

Runs each stdlib strategy (small settings: 4 samples or beams, 128 tokens an answer) on the
same arithmetic questions (`ttcl.eval.datasets.arith`, seeded), with self-verification as the
verifier, and prints per strategy the measured FLOPs per question (from the backend's
counters: every decoded token at its position, `ttcl.cost.flops.counted_flops`) beside
  - the estimate before calibration, from the program alone (every answer as long as its
    max_tokens, prompts from their templates), and
  - the estimate once calibrated on the same questions (`ttcl.cost.fit.calibrate`: token
    lengths, and measured over estimated tokens per op and component): how well the cost
    model's structure fits, and
  - the estimate calibrated by 2-fold cross-validation: calibrated on one half of the
    questions and compared with the other half's measurement, and the other way round: how
    well it predicts questions it has not seen.
The error is (estimate - measured) / measured; the target is within ±25% once calibrated.
"fold s.e." is the standard error of each fold's mean FLOPs, relative: a held-out error a
couple of times that size is the luck of which questions fell in the fold, not the model.
The backend's prefix cache is cleared before each run, so no strategy starts from another's
cached prompts.
Run it alone (see bench/throughput.py on OpenMP). Asserts nothing: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from timing import Stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ttcl  # noqa: E402
from ttcl.backends.llama import backend_for  # noqa: E402
from ttcl.cost.calibration import Calibration  # noqa: E402
from ttcl.cost.fit import calibrate  # noqa: E402
from ttcl.eval.datasets import arith  # noqa: E402

STRATEGIES = {
    "majority": ("parallel", "majority(4)"),
    "best_of_n": ("parallel", "best_of_n(4, prm)"),
    "weighted_best_of_n": ("parallel", "weighted_best_of_n(4, prm)"),
    "beam_search": ("search", "beam_search(4, prm, width=2)"),
    "lookahead_search": ("search", "lookahead_search(4, prm, width=2, k=1)"),
    "diverse_tree_search": ("search", "diverse_tree_search(4, prm, width=2)"),
    "sequential_revisions": ("revision", "sequential_revisions(4, prm)"),
    "parallel_revisions": ("revision", "parallel_revisions(2, 2, prm)"),
    "revision_ratio": ("revision", "revision_ratio(4, 2, prm)"),
}


def program(module: str, call: str, threads: int) -> ttcl.Program:
    return ttcl.compile(
        f'import "{module}"\n'
        f'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=128, threads={threads})\n'
        "verifier prm = self_verify(policy)\n"
        f"program main = {call}\n"
    )


def error(estimate: float, measured: float) -> str:
    return f"{(estimate - measured) / measured:+7.1%}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--level", type=int, default=2, help="arith difficulty level, 1 to 5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="strategies to run (default: all)")
    parser.add_argument("--calibration-out", help="write the calibration measured on all questions here")
    args = parser.parse_args(argv)
    questions = arith(args.questions, args.level, seed=1)
    half = len(questions) // 2
    folds = (questions[:half], questions[half:])
    print(
        f"SmolLM2-135M Q4_1, {args.threads} threads; {len(questions)} arith questions of level {args.level} "
        f"(seed 1), run seed 0; 2-fold calibration ({half} + {len(questions) - half})"
    )
    print(
        f"{'strategy':<22} {'measured FLOPs/q':>16} {'uncalibrated':>13} {'error':>8} "
        f"{'same questions':>15} {'held-out folds':>15} {'fold s.e.':>10} {'s':>5}"
    )
    calibrations = []
    worst = {"same": 0.0, "held-out": 0.0}
    for name in args.only or STRATEGIES:
        module, call = STRATEGIES[name]
        prog = program(module, call, args.threads)
        backend = backend_for(prog.ir.models["policy"])
        runs = []
        with Stopwatch() as clock:
            for fold in folds:
                backend.reset()
                runs.append(prog.run_many(fold, seed=0))
        seconds = clock.seconds
        everything = runs[0] + runs[1]
        measured = [statistics.mean(r.cost.flops for r in fold) for fold in runs]
        overall = statistics.mean(r.cost.flops for r in everything)
        before = prog.cost(calibration=Calibration()).expected.flops  # the program alone, not the shipped priors
        whole = calibrate(prog.graph, everything)
        same = (prog.cost(calibration=whole).expected.flops - overall) / overall
        fitted = [calibrate(prog.graph, fold) for fold in runs]
        # fold i is estimated with the calibration of the other fold
        held_out = [(prog.cost(calibration=fitted[1 - i]).expected.flops - m) / m for i, m in enumerate(measured)]
        worst["same"] = max(worst["same"], abs(same))
        worst["held-out"] = max(worst["held-out"], *map(abs, held_out))
        # the standard error of each fold's mean: how far a fold strays by the luck of its questions
        spread = [
            statistics.stdev(r.cost.flops for r in fold) / math.sqrt(len(fold)) / m for fold, m in zip(runs, measured)
        ]
        print(
            f"{name:<22} {overall:16.3g} {before:13.3g} {error(before, overall)} {same:+15.1%} "
            f"{'/'.join(f'{e:+.0%}' for e in held_out):>15} {'/'.join(f'{e:.0%}' for e in spread):>10} "
            f"{seconds:5.0f}",
            flush=True,
        )
        calibrations.append(whole)
    print(
        f"largest calibrated error: {worst['same']:.0%} on the same questions, {worst['held-out']:.0%} "
        "on held-out folds (target: within 25%)"
    )
    if args.calibration_out and calibrations:
        total = calibrations[0]
        for c in calibrations[1:]:
            total = total.merge(c)
        total.save(args.calibration_out)
        print(f"calibration written to {args.calibration_out}")


if __name__ == "__main__":
    main()
