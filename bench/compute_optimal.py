"""The compute-optimal program against the paper's baselines, at matched budgets, on held-out
questions (Snell et al. 2024, Figure 1 and §5-6, at the scale of a 2-core CPU).

    python bench/compute_optimal.py [--fit 40] [--test 40] [--gsm8k 20] [--budgets 4,6] [--probe 2] [--levels 1,2]

For each budget B (generations per question), with SmolLM2-135M and self-verification:
  (a) weighted best-of-B, (b) majority voting over B, (c) beam search (B beams, width 2), and
  (d) the per-difficulty program `ttcl optimize` writes: P probe samples predict the
      difficulty bin, and each bin's arm (at B - P generations, so the probes count in the
      budget) is the candidate that did best on that bin of the *fit* questions.
All four run on the same *test* questions, arithmetic questions of levels 1 and 2 (the ones
SmolLM2-135M sometimes solves) drawn with another seed than the fit questions (and none of them among the fit questions), and on the
first GSM8K questions of ../shared/data/gsm8k/train.jsonl when it is there (never used for
fitting). It prints accuracy (95% interval) and FLOPs per question for each, the FLOPs (d)
needs to reach (a)'s best accuracy (interpolated on log FLOPs between budgets), and writes the
curves to bench/compute_optimal.png. Every run is appended to bench/compute_optimal.*.jsonl
(fit, arith, gsm8k); --resume continues an interrupted run. Run it alone (see bench/throughput.py on OpenMP).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ttcl  # noqa: E402
from ttcl.eval import optimize as opt  # noqa: E402
from ttcl.eval.datasets import arith, load  # noqa: E402
from ttcl.eval.evaluate import Eval, Summary, plot, summarize  # noqa: E402

BASE = """model policy = llama("smollm2-135m", temperature=0.6, max_tokens=64)
verifier prm = self_verify(policy)
"""
GSM8K = HERE.parent.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def baselines(b: int) -> dict[str, str]:
    return {
        "(a) weighted best-of-N": f"weighted_best_of_n({b}, prm)",
        "(b) majority": f"majority({b})",
        "(c) beam search": f"beam_search({b}, prm, width=2)",
    }


def candidates(arm: int) -> list[str]:
    return [
        f"majority({arm})",
        f"weighted_best_of_n({arm}, prm)",
        f"beam_search({arm}, prm, width=2)",
        f"sequential_revisions({arm}, prm)",
    ]


def questions(fit: int, test: int, levels: list[int]) -> tuple[list[dict], list[dict]]:
    """Fit and test arithmetic questions, the levels in turn, none shared."""
    per_level = max(fit, test) // len(levels) + 1
    fitting = [q for group in zip(*(arith(per_level, lv, seed=1) for lv in levels)) for q in group][:fit]
    seen = {q["question"] for q in fitting}
    pool = [q for group in zip(*(arith(3 * per_level, lv, seed=2) for lv in levels)) for q in group]
    return fitting, [q for q in pool if q["question"] not in seen][:test]


def run_set(ev: Eval, name: str, programs: dict, budget: int) -> None:
    """Every program on the set's questions, recorded at `budget`."""
    for label, program in programs.items():
        print(f"  {name}: {label} ...", flush=True)
        if not ev.run(program, label, budget):
            raise SystemExit("interrupted: run again with --resume")


def needed_flops(curve: list[Summary], accuracy: float) -> float | None:
    """The FLOPs at which `curve` first reaches `accuracy`, interpolated on log FLOPs."""
    points = sorted((s.flops, s.accuracy) for s in curve if s.flops)
    for (f0, a0), (f1, a1) in zip([(None, None)] + points, points):
        if a1 >= accuracy:
            if f0 is None or a1 == a0:
                return f1
            t = (accuracy - a0) / (a1 - a0)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=40)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--gsm8k", type=int, default=20, help="GSM8K test questions (0: none)")
    parser.add_argument("--budgets", default="4,6")
    parser.add_argument("--probe", type=int, default=2)
    parser.add_argument("--levels", default="1,2", help="arith levels (SmolLM2-135M rarely solves 3 and up)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    levels = [int(lv) for lv in args.levels.split(",")]
    fitting, testing = questions(args.fit, args.test, levels)
    sets = {"arith": testing}
    if args.gsm8k and GSM8K.exists():
        sets["gsm8k"] = load(str(GSM8K), limit=args.gsm8k).questions
    out = HERE / "compute_optimal"
    fit_ev = Eval(out.with_suffix(".fit.jsonl"), fitting, resume=args.resume)
    evals = {name: Eval(out.with_suffix(f".{name}.jsonl"), qs, resume=args.resume) for name, qs in sets.items()}
    base = opt.read_base(BASE, "bench.ttcl")
    print(
        f"SmolLM2-135M Q4_1, self-verification; fit on {len(fitting)} arith questions of levels {levels} "
        f"(seed 1), test on "
        f"{len(testing)} others (seed 2)"
        + (f" and {len(sets.get('gsm8k', []))} GSM8K" if "gsm8k" in sets else "")
        + f"; budgets {budgets} generations, {args.probe} probes; run seed 0"
    )
    chosen = {}
    for b in budgets:
        arm = opt.arm_budget(b, args.probe)
        space = candidates(arm)
        print(f"budget {b}: fitting {len(space)} candidates at {arm} generations ...", flush=True)
        found = opt.optimize(base, fit_ev, b, "prm", args.probe, space, note=[f"bench budget {b}"])
        if found is None:
            raise SystemExit("interrupted: run again with --resume")
        choice, cv, text = found.choice, found.cv_accuracy, found.text
        chosen[b] = choice
        print(f"  per bin: {choice.winners}, thresholds {choice.thresholds}; 2-fold CV accuracy on fit {cv:.1%}")
        programs = {label: base.program(expr) for label, expr in baselines(b).items()}
        programs["(d) compute-optimal"] = ttcl.compile(text, "optimized.ttcl")
        for name, ev in evals.items():
            run_set(ev, name, programs, b)
    report({name: [r for r in ev.records if r.budget in budgets] for name, ev in evals.items()})


def report(records: dict[str, list]) -> None:
    curves_for_plot = []
    for name, rs in records.items():
        summaries = summarize(rs)
        print(f"\n{name}: accuracy (95% interval) and FLOPs per question")
        print(f"{'strategy':<26} {'budget':>6} {'accuracy':>9} {'interval':>15} {'FLOPs/q':>10}")
        for s in sorted(summaries, key=lambda s: (s.program, s.budget)):
            print(f"{s.program:<26} {s.budget:>6} {s.accuracy:>9.1%} {s.low:>7.1%}–{s.high:<7.1%} {s.flops:>10.3g}")
        curve = {p: [s for s in summaries if s.program == p] for p in {s.program for s in summaries}}
        a, d = curve.get("(a) weighted best-of-N", []), curve.get("(d) compute-optimal", [])
        if a and d:
            best = max(a, key=lambda s: (s.accuracy, -s.flops))
            need = needed_flops(d, best.accuracy)
            if best.accuracy == 0:
                print("(a) answers none right at these budgets: there is no accuracy to match")
            elif need is None:
                print(
                    f"(d) does not reach (a)'s best accuracy {best.accuracy:.1%} ({best.flops:.3g} FLOPs) at these budgets"
                )
            else:
                print(
                    f"(a)'s best accuracy {best.accuracy:.1%} costs it {best.flops:.3g} FLOPs per question; "
                    f"(d) reaches it with {need:.3g}: {best.flops / need:.2f}x (a)'s compute saved "
                    "(below 1: (d) needs more)"
                )
        for s in summaries:
            curves_for_plot.append(s.model_copy(update={"program": f"{name}: {s.program}"}))
    plot(curves_for_plot, str(HERE / "compute_optimal.png"), title="SmolLM2-135M: accuracy against FLOPs")
    print(f"\ncurves: {HERE / 'compute_optimal.png'}")


if __name__ == "__main__":
    main()
