"""The compute-optimal program against best-of-N, majority voting, beam search and adaptive
stopping, at budgets 1 to 16 generations, on held-out questions (Snell et al. 2024, Figure 1
and sections 5-6, at the scale of a 2-core CPU).

    python bench/compute_optimal.py [--model qwen2.5-coder-0.5b] [--fit 25] [--test 30] [--gsm8k 12]
        [--budgets 1,2,4,8,16] [--beam 4,8] [--beam-sets arith,gsm8k] [--probe 2] [--bins 3] [--threads 2] [--resume]

Questions: fit on arithmetic levels 1-5 drawn with seed 11; test on levels 1-5 drawn with seed
12 (less any fit question, and less the level 1-2 questions of seed 0 the shipped PRM head was
trained on), and on the first --gsm8k questions of ../shared/data/gsm8k/train.jsonl (never
used for fitting). Verifier: the policy's own self-verification (`self_verify`): no PRM head
is trained for this policy, and training one (`ttcl train-prm`: rollouts per step of every
solution) would take hours of this machine for a 0.5B model.

One pool per question: `sample(16) |> weighted_vote(prm)` draws 16 samples and scores every
one. `sample(k)` draws the seeds `sample(16)` draws first, on a batch-invariant backend, so
every row below that is a selector over independent samples is computed *exactly* from the
pool's first k candidates, not estimated:
  (a) weighted best-of-N over the first N, (b) majority over the first N,
  (e) `adaptive(N) |> vote` (rounds of 4, the Beta rule at 0.95): the rounds it would draw,
      from the pool's first candidates, stopping where the rule says;
  (d) the per-difficulty program: the first P candidates are the probes (their mean verifier
      score predicts the difficulty bin), the next N - P the arm, and the probes join the
      arm's selector (as `match difficulty` runs it), so it costs N generations. Its arms
      are chosen by `ttcl optimize`'s own procedure (`ttcl.eval.optimize.choose`, bins at
      quantiles of the fit questions' probe scores, 2-fold cross-validated) among majority,
      weighted best-of-N and adaptive stopping at N - P, evaluated the same way on the fit
      questions' pools; the program it would write is saved beside the results.
  (c) beam search (`beam_search(N, prm, width=2)`) cannot come from a pool (beams are kept
      by score) and runs for real at the --beam budgets.
A subset's cost is what it costs run alone (`ttcl.eval.sweep.subset_cost`): the prompt once,
its own generated tokens at the pool's measured FLOPs per token, the verifier on its texts.

It prints accuracy with its 95% Wilson interval and FLOPs per question per row and budget, the
FLOPs (d) and (e) need to reach (a)'s best accuracy as a multiple of (a)'s FLOPs there, with a
percentile bootstrap interval over test questions, and draws the curves to
bench/compute_optimal.png. Every pool and beam run is appended to bench/out/*.jsonl as it
finishes; --resume continues. Run it alone (see bench/throughput.py on OpenMP).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ttcl  # noqa: E402
from ttcl.cost.stopping import rounds, settled  # noqa: E402
from ttcl.eval import optimize as opt  # noqa: E402
from ttcl.eval.datasets import arith, load  # noqa: E402
from ttcl.eval.evaluate import Eval, Record, run_isolating, wilson  # noqa: E402
from ttcl.eval.sweep import PoolPlan, select, subset_cost  # noqa: E402
from ttcl.results import Result  # noqa: E402
from ttcl.runtime.answers import NumberAnswer  # noqa: E402

GSM8K = HERE.parent.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
OUT = HERE / "out"
FIT_SEED, TEST_SEED, HEAD_SEED = 11, 12, 0
ANSWERS = NumberAnswer()
PLAN = PoolPlan(sample=1, selector=2, op="weighted_vote", verifier="prm", agg="last")


def arms(k: int) -> list[str]:
    """(d)'s candidate arms at k generations, as `ttcl optimize` writes them."""
    return [f"majority({k})", f"weighted_best_of_n({k}, prm)", f"adaptive_majority({k})"]


ROWS = ("(a) weighted best-of-N", "(b) majority", "(c) beam search", "(d) compute-optimal", "(e) adaptive")


def base(model: str, threads: int) -> str:
    return (
        'import "parallel"\nimport "search"\n'
        f'model policy = llama("{model}", temperature=0.7, max_tokens=160, threads={threads})\n'
        "verifier prm = self_verify(policy)\n"
    )


def question_sets(fit: int, test: int, gsm8k: int) -> dict[str, list[dict]]:
    """Fit and test arithmetic (levels 1-5 interleaved, none shared, none of the PRM head's
    training questions) and a GSM8K slice."""
    per = -(-max(fit, test) // 5)
    fitting = [q for group in zip(*(arith(per, lv, FIT_SEED) for lv in range(1, 6))) for q in group][:fit]
    used = {q["question"] for q in fitting} | {q["question"] for lv in (1, 2) for q in arith(100, lv, HEAD_SEED)}
    drawn = [q for group in zip(*(arith(4 * per, lv, TEST_SEED) for lv in range(1, 6))) for q in group]
    sets = {"fit": fitting, "arith": [q for q in drawn if q["question"] not in used][:test]}
    if gsm8k and GSM8K.exists():
        sets["gsm8k"] = load(str(GSM8K), gsm8k).questions
    return sets


# ---- runs ------------------------------------------------------------------------------------


def pools(program: ttcl.Program, name: str, questions: list[dict], path: Path, size: int) -> list[Result]:
    """Each question's pool, drawn once and kept in `path` (a JSON line per question)."""
    kept: dict[int, Result] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            item = json.loads(line)
            kept[item["index"]] = Result.model_validate(item["result"])
    todo = [i for i in range(len(questions)) if i not in kept]
    if todo:
        print(f"  {name}: drawing {len(todo)} pools of {size} ...", flush=True)
        with path.open("a") as sink:

            def save(index: int, result: Result) -> None:
                if result.stopped is None:
                    kept[index] = result
                    sink.write(json.dumps({"index": index, "result": result.model_dump(mode="json")}) + "\n")
                    sink.flush()

            if not run_isolating(program, questions, todo, save):
                raise SystemExit("interrupted: run again with --resume")
    return [kept[i] for i in range(len(questions))]


def beams(program: ttcl.Program, questions: list[dict], budgets: list[int], path: Path, resume: bool) -> dict:
    """Beam search run for real at each budget: its records by budget."""
    ev = Eval(path, questions, resume=resume or path.exists())
    for b in budgets:
        print(f"  beam search at {b} ...", flush=True)
        if not ev.run(program, "beam", b, "n"):
            raise SystemExit("interrupted: run again with --resume")
    return {b: sorted((r for r in ev.records if r.budget == b), key=lambda r: r.index) for b in budgets}


# ---- rows from a pool ------------------------------------------------------------------------


def scores_of(result: Result) -> tuple[list, list[float]]:
    pool = [c for c in result.candidates if c.node == PLAN.sample]
    return pool, [c.scores.get("prm", [0.0])[-1] for c in pool]


def outcome(result: Result, op: str, take: list[int], truth: str, scored: list[int]) -> dict:
    """The selector `op` over the pool's candidates `take`: right or not, and the cost of
    drawing `take` and scoring `scored` alone."""
    pool, scores = scores_of(result)
    chosen = select(op, [pool[i] for i in take], [scores[i] for i in take], ANSWERS)
    tokens, flops = subset_cost(result, PLAN, pool, take, scored)
    return {"correct": ANSWERS.same(chosen.answer if chosen else None, truth), "flops": flops, "tokens": tokens}


def drawn_until_settled(result: Result, take: list[int], start: int = 0) -> int:
    """How many of `take` `adaptive` draws (rounds of 4 after `start` already drawn, the
    Beta rule at 0.95), from the pool's candidates in order."""
    pool, _ = scores_of(result)
    drawn = start
    for size in rounds(len(take) - start, 4):
        drawn += size
        if settled("beta", ANSWERS.classes([pool[i].answer for i in take[:drawn]]), size, 0.95):
            break
    return drawn


def adaptive(result: Result, n: int, truth: str) -> dict:
    """`adaptive(n) |> vote`: the rounds it draws from the pool's first candidates."""
    drawn = drawn_until_settled(result, list(range(n)))
    return {**outcome(result, "vote", list(range(drawn)), truth, []), "generations": drawn}


def arm(result: Result, strategy: str, take: list[int], truth: str) -> dict:
    """A candidate arm of (d) over the candidates `take` (its share of the pool)."""
    if strategy.startswith("majority"):
        return outcome(result, "vote", take, truth, [])
    if strategy.startswith("weighted_best_of_n"):
        return outcome(result, "weighted_vote", take, truth, take)
    return outcome(result, "vote", take[: drawn_until_settled(result, take)], truth, [])


def probe_score(result: Result, probe: int) -> float:
    return sum(scores_of(result)[1][:probe]) / probe


def as_record(index: int, row: dict, difficulty: float | None = None) -> Record:
    return Record(
        program="",
        budget=None,
        index=index,
        question="",
        expected="",
        answer=None,
        correct=row["correct"],
        difficulty=difficulty,
        flops=row["flops"],
        tokens=round(row["tokens"]),
        generations=0,
        seed=0,
        elapsed_s=0.0,
    )


def choose_arms(fit: list[Result], truths: list[str], n: int, probe: int, bins: int) -> tuple[opt.Choice, float]:
    """`ttcl optimize`'s choice at budget n: per bin (quantiles of the fit questions' probe
    scores) the arm at n - probe with the most right answers; and its 2-fold CV accuracy."""
    take = list(range(probe, n))
    candidates = arms(n - probe)
    results = {s: [as_record(i, arm(r, s, take, truths[i])) for i, r in enumerate(fit)] for s in candidates}
    scores = [probe_score(r, probe) for r in fit]
    probes = [as_record(i, {"correct": False, "flops": 0.0, "tokens": 0}, scores[i]) for i in range(len(fit))]
    everyone = list(range(len(fit)))
    choice = opt.choose(candidates, results, scores, everyone, bins)
    cv, _ = opt.cross_validate(candidates, results, scores, probes, bins)
    return choice, cv


def compute_optimal(result: Result, choice: opt.Choice, n: int, probe: int, truth: str) -> dict:
    """(d) on one question: the probes (scored) predict the bin; its arm's selector runs over
    the probes and the arm's draws together, as `match difficulty` runs it."""
    strategy = choice.winners[opt.predicted_bin(probe_score(result, probe), choice.thresholds)]
    probes, everything = list(range(probe)), list(range(n))
    if strategy.startswith("weighted_best_of_n"):
        return {**outcome(result, "weighted_vote", everything, truth, everything), "generations": n}
    drawn = drawn_until_settled(result, everything, probe) if strategy.startswith("adaptive") else n
    return {**outcome(result, "vote", list(range(drawn)), truth, probes), "generations": drawn}


# ---- summaries -------------------------------------------------------------------------------


def curve(rows: list[dict]) -> tuple[float, float, float, float]:
    """Accuracy, its Wilson interval and mean FLOPs of one row at one budget."""
    n, right = len(rows), sum(r["correct"] for r in rows)
    low, high = wilson(right, n)
    return right / n, low, high, sum(r["flops"] or 0.0 for r in rows) / n


def needed(points: list[tuple[float, float]], accuracy: float) -> float | None:
    """The FLOPs at which a curve (accuracy by FLOPs) first reaches `accuracy`, interpolated
    on log FLOPs; None if it never does."""
    points = sorted(points)
    for i, (f1, a1) in enumerate(points):
        if a1 >= accuracy - 1e-12:
            if i == 0 or a1 == points[i - 1][1]:
                return f1
            f0, a0 = points[i - 1]
            t = (accuracy - a0) / (a1 - a0)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return None


def multiple(table: dict, row: str, budgets: list[int], questions: list[int]) -> float | None:
    """FLOPs `row` needs to reach (a)'s best accuracy, over (a)'s FLOPs there, on `questions`."""
    a = [curve([table["(a) weighted best-of-N"][b][i] for i in questions]) for b in budgets]
    best = max(acc for acc, *_ in a)
    if best == 0:  # nothing to reach: no multiple
        return None
    reference = needed([(f, acc) for acc, _, _, f in a], best)
    points = [curve([table[row][b][i] for i in questions]) for b in budgets if b in table[row]]
    found = needed([(f, acc) for acc, _, _, f in points], best)
    return None if found is None or not reference else found / reference


def bootstrap_multiple(table: dict, row: str, budgets: list[int], n: int, resamples: int = 1000):
    """The multiple on the test questions, and its 95% percentile interval over bootstrap
    resamples of them (seed 0); `never` is the share of resamples where `row` does not reach
    (a)'s best accuracy at any budget measured."""
    point = multiple(table, row, budgets, list(range(n)))
    rng = random.Random(0)
    found = [multiple(table, row, budgets, rng.choices(range(n), k=n)) for _ in range(resamples)]
    values = sorted(v for v in found if v is not None)
    never = 1 - len(values) / resamples
    if not values:
        return point, None, None, never
    return point, values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1], never


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--fit", type=int, default=25)
    p.add_argument("--test", type=int, default=30)
    p.add_argument("--gsm8k", type=int, default=12)
    p.add_argument("--budgets", default="1,2,4,8,16")
    p.add_argument("--beam", default="4,8", help="beam search budgets run for real ('' for none)")
    p.add_argument("--beam-sets", default="arith,gsm8k", help="the test sets beam search runs on")
    p.add_argument("--probe", type=int, default=2)
    p.add_argument("--bins", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--plot", default=str(HERE / "compute_optimal.png"))
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    beam_budgets = [int(b) for b in args.beam.split(",") if b.strip()]
    size = max(budgets)
    OUT.mkdir(exist_ok=True)
    tag = args.model.replace("/", "_")
    if not args.resume:
        for old in OUT.glob(f"compute_optimal.{tag}.*"):
            old.unlink()
    sets = question_sets(args.fit, args.test, args.gsm8k)
    text = base(args.model, args.threads)
    pool_program = ttcl.compile(text + f"program main = weighted_best_of_n({size}, prm)\n")
    beam_program = ttcl.compile(text + "program main(n: int = 4) = beam_search(n, prm, width=2)\n")
    print(f"{args.model}: fit {len(sets['fit'])}, " + ", ".join(f"{k} {len(v)}" for k, v in sets.items() if k != "fit"))
    drawn = {
        name: pools(pool_program, name, qs, OUT / f"compute_optimal.{tag}.{name}.pools.jsonl", size)
        for name, qs in sets.items()
    }
    fit_truths = [q["answer"] for q in sets["fit"]]
    choices = {b: choose_arms(drawn["fit"], fit_truths, b, args.probe, args.bins) for b in budgets if b > args.probe}
    for b, (choice, cv) in choices.items():
        print(
            f"  (d) at {b}: arms {choice.winners}, thresholds {[round(t, 3) for t in choice.thresholds]}, 2-fold CV on fit {cv:.1%}"
        )
    largest = max(choices)
    written = opt.render(
        opt.read_base(text, None),
        choices[largest][0],
        "prm",
        args.probe,
        largest,
        [f"chosen on {len(sets['fit'])} fit questions, seed {FIT_SEED}"],
    )
    ttcl.compile(written)  # the program (d) is: it compiles
    (OUT / f"compute_optimal.{tag}.optimized.ttcl").write_text(written)

    report = {}
    for name in [k for k in sets if k != "fit"]:
        qs, results = sets[name], drawn[name]
        table: dict[str, dict[int, list[dict]]] = {row: {} for row in ROWS}
        for b in budgets:
            first = list(range(b))
            table["(a) weighted best-of-N"][b] = [
                outcome(r, "weighted_vote", first, q["answer"], first) for r, q in zip(results, qs)
            ]
            table["(b) majority"][b] = [outcome(r, "vote", first, q["answer"], []) for r, q in zip(results, qs)]
            table["(e) adaptive"][b] = [adaptive(r, b, q["answer"]) for r, q in zip(results, qs)]
            if b in choices:
                table["(d) compute-optimal"][b] = [
                    compute_optimal(r, choices[b][0], b, args.probe, q["answer"]) for r, q in zip(results, qs)
                ]
        if beam_budgets and name in args.beam_sets.split(","):
            ran = beams(beam_program, qs, beam_budgets, OUT / f"compute_optimal.{tag}.{name}.beam.jsonl", args.resume)
            for b, records in ran.items():
                table["(c) beam search"][b] = [
                    {"correct": r.correct, "flops": r.flops, "tokens": r.tokens} for r in records
                ]
        report[name] = table
        show(name, table, budgets + [b for b in beam_budgets if b not in budgets], len(qs))
        sweep_check(results, qs, budgets, table)
    plot(report, args.plot, args.model)
    print(f"wrote {args.plot} and bench/out/compute_optimal.{tag}.*")


def show(name: str, table: dict, budgets: list[int], n: int) -> None:
    print(f"\n{name}: {n} test questions; accuracy [95% interval] and FLOPs per question")
    print(f"{'row':<24}" + "".join(f"{'N=' + str(b):>24}" for b in sorted(set(budgets))))
    for row in ROWS:
        cells = []
        for b in sorted(set(budgets)):
            if b not in table[row]:
                cells.append(f"{'-':>24}")
                continue
            acc, low, high, flops = curve(table[row][b])
            cells.append(f"{acc:>6.1%} [{low:.0%}-{high:.0%}] {flops:>8.2g}")
        print(f"{row:<24}" + "".join(f"{c:>24}" for c in cells))
    drawn = [sum(r.get("generations", b) for r in table["(e) adaptive"][b]) / n for b in sorted(table["(e) adaptive"])]
    print(
        "(e) mean generations drawn: "
        + ", ".join(f"N={b}: {d:.1f}" for b, d in zip(sorted(table["(e) adaptive"]), drawn))
    )
    for row in ("(d) compute-optimal", "(e) adaptive"):
        pool_budgets = sorted(b for b in table["(a) weighted best-of-N"])
        point, low, high, never = bootstrap_multiple(table, row, pool_budgets, n)
        shown = "never reaches it" if point is None else f"{point:.2f}x"
        interval = "" if low is None else f" [95% bootstrap {low:.2f}x-{high:.2f}x]"
        print(
            f"{row} FLOPs to reach (a)'s best accuracy, over (a)'s: {shown}{interval}, never in {never:.0%} of resamples"
        )


def sweep_check(results: list[Result], qs: list[dict], budgets: list[int], table: dict) -> None:
    """`ttcl eval`'s pooled sweep (random subsets of the largest pool, `ttcl.eval.sweep`)
    against the runs it stands for (the pool's first N, which is what weighted best-of-N at N
    draws): the same accuracy within the sweep's bootstrap interval?"""
    from ttcl.eval.evaluate import bootstrap
    from ttcl.eval.sweep import outcomes

    shares = {b: [] for b in budgets}
    for i, (result, q) in enumerate(zip(results, qs)):
        rng = random.Random(f"0:sweep:{i}")
        for b, o in outcomes(result, PLAN, budgets, ANSWERS, q["answer"], rng).items():
            shares[b].append(o.share)
    print("(a) as ttcl eval's pooled sweep estimates it, against the runs themselves:")
    for b in budgets:
        low, high = bootstrap(shares[b])
        run = curve(table["(a) weighted best-of-N"][b])[0]
        inside = "inside" if low - 1e-9 <= run <= high + 1e-9 else "OUTSIDE"
        print(f"  N={b}: sweep {sum(shares[b]) / len(shares[b]):.1%} [{low:.1%}-{high:.1%}], run {run:.1%} ({inside})")


def plot(report: dict, path: str, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report), figsize=(6.5 * len(report), 4.5), squeeze=False)
    for ax, (name, table) in zip(axes[0], report.items()):
        for row in ROWS:
            points = sorted((curve(rows)[3], curve(rows)[0], b) for b, rows in table[row].items())
            if not points:
                continue
            ax.plot([f for f, _, _ in points], [100 * a for _, a, _ in points], marker="o", label=row)
            for f, a, b in points:
                ax.annotate(str(b), (f, 100 * a), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per question")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model} on {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
