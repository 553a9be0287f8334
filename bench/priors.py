"""The shipped priors: token lengths measured per known model, the calibration every estimate
uses by default for those models (ttcl/cost/priors.json).

    python bench/priors.py [--model smollm2-135m] [--questions 24] [--search-questions 6]
                           [--seed 18] [--threads 1] [--only PROGRAM...] [-o FILE]

Each program of PROGRAMS runs on arith questions of levels 1 to 3, drawn with seed 18 (the
seed no test or other benchmark draws with; "What is 2 + 3?", the question docs/cost.md checks
the first run's estimate on, is left out), with the model's default settings and the default
prompts (ttcl/prompts.py); beam search, ten times dearer, runs on the first
`--search-questions` of them (the levels interleave, so any prefix has all three). Questions
run one at a time from an empty prefix cache, as a first `ttcl run -q` does, so nothing is
credited to sharing across questions.

The priors take each length from the program that measures it: the prompt, whole answers and
verifier passes over whole answers from weighted best-of-N; steps per search answer and tokens
per step from beam search. Then each program's factors (measured over estimated tokens per op
and component) are fitted against those lengths, each op from the program that runs it. The
model's entry in the output file is replaced; other models' entries are kept, so models can be
measured one at a time. Run it alone (see bench/throughput.py on OpenMP).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timing import Stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ttcl  # noqa: E402
from ttcl.backends import backend_for  # noqa: E402
from ttcl.backends.models import KNOWN_MODELS  # noqa: E402
from ttcl.cost.calibration import Calibration, Priors  # noqa: E402
from ttcl.cost.fit import calibrate, with_factors  # noqa: E402
from ttcl.eval.datasets import arith  # noqa: E402

PRIORS = Path(__file__).resolve().parent.parent / "ttcl" / "cost" / "priors.json"
CHECKED = "What is 2 + 3?"  # the first run docs/cost.md reports: not a question the priors saw
# the program each length is taken from, in order: a length comes from the first that measures it
# (imports, program, whether it searches)
PROGRAMS = {
    "weighted_best_of_n": ('import "parallel"', "weighted_best_of_n(8, prm)", False),
    "beam": ("", "beam(8, prm, width=2) |> vote", True),
}


def program(model: str, threads: int, header: str, body: str) -> ttcl.Program:
    """The program on the model with its default settings (but threads)."""
    return ttcl.compile(
        f'{header}\nmodel policy = llama("{model}", threads={threads})\n'
        f"verifier prm = self_verify(policy)\nprogram main = {body}\n"
    )


def questions(n: int, seed: int) -> list[str]:
    """n questions of levels 1 to 3, a third each, interleaved, without the checked question."""
    per_level = [arith(n // 3 + 1, level, seed=seed) for level in (1, 2, 3)]
    drawn = [q["question"] for three in zip(*per_level) for q in three]
    return [q for q in drawn if q != CHECKED][:n]


def measure(prog: ttcl.Program, asked: list[str]) -> list[ttcl.Result]:
    """One run per question, each from an empty prefix cache."""
    backend = backend_for(prog.ir.models["policy"])
    results = []
    for q in asked:
        backend.reset()
        results.append(prog.run(q, seed=0))
    return results


def first_measured(calibrations: list[Calibration], key: str) -> Priors:
    """Each length from the first calibration that measured it; the most questions seen."""
    found = [c.models[key] for c in calibrations if key in c.models]
    values = {
        name: next((getattr(p, name) for p in found if getattr(p, name) is not None), None)
        for name in Priors.model_fields
        if name not in ("factors", "questions")
    }
    return Priors(**values, questions=max(p.questions for p in found))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=KNOWN_MODELS)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--search-questions", type=int, default=6, help="of them, those beam search runs on")
    parser.add_argument("--seed", type=int, default=18, help="the arith questions' seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(PROGRAMS), help="programs to run (default: all)")
    parser.add_argument("-o", "--output", default=str(PRIORS))
    args = parser.parse_args(argv)
    if min(args.questions, args.search_questions) < 1:
        parser.error("--questions and --search-questions take a positive number")
    asked = questions(args.questions, args.seed)
    print(f"{args.model}, {args.threads} threads; {len(asked)} arith questions of levels 1-3 (seed {args.seed})")
    runs = []
    for name in args.only or PROGRAMS:
        header, body, search = PROGRAMS[name]
        prog = program(args.model, args.threads, header, body)
        with Stopwatch() as clock:
            results = measure(prog, asked[: args.search_questions] if search else asked)
        measured = sum(r.cost.flops or 0 for r in results) / len(results)
        print(
            f"{name:<20} {len(results):3} questions, {measured:10.3g} FLOPs per question, {clock.seconds:5.0f} s",
            flush=True,
        )
        runs.append((prog, results, calibrate(prog.graph, results)))
    key = args.model
    lengths = first_measured([c for _, _, c in runs], key)
    factors: dict[str, float] = {}
    for prog, results, _ in runs:
        fitted = with_factors(Calibration(models={key: lengths}), prog.graph, results).models[key].factors
        factors.update({k: v for k, v in fitted.items() if k not in factors})
    priors = lengths.model_copy(update={"factors": factors})
    shipped = Calibration.load(args.output) if Path(args.output).exists() else Calibration()
    Calibration(models={**shipped.models, key: priors}).save(args.output)
    print(priors.model_dump_json(indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
