"""The trained PRM head against self-verification and majority voting (issue 6's figures).

    python bench/prm.py [--head heads/arith.safetensors] [--questions 30] [--n 16] [--levels 1-2] [--resume]

Prints the head's card (held-out step-label accuracy and AUROC beside self-verification's on
the same steps, from `ttcl train-prm`), then runs, on held-out arithmetic questions (seed 7,
none of them among the head's training questions), with SmolLM2-135M at temperature 0.8:
  weighted best-of-n scored by the trained head, weighted best-of-n scored by
  self-verification, and majority voting over n,
all on the same samples (the same run seed, so each question's n samples are identical
across the three), and prints accuracy with a 95% interval and FLOPs per question. Results
go to bench/prm.jsonl (gitignored); --resume continues an interrupted run. Run it alone (see
bench/throughput.py on OpenMP).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import ttcl  # noqa: E402
from ttcl.eval.datasets import load  # noqa: E402
from ttcl.eval.evaluate import Eval, summarize  # noqa: E402
from ttcl.runtime.prm import read_card, resolve_head_path  # noqa: E402

POLICY = 'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=96)\n'
PROGRAMS = {
    "weighted best-of-n, trained PRM": 'verifier v = prm("{head}")\nprogram main = sample({n}) |> weighted_vote(v)\n',
    "weighted best-of-n, self-verify": "verifier v = self_verify(policy)\nprogram main = sample({n}) |> weighted_vote(v)\n",
    "majority voting": "program main = sample({n}) |> vote\n",
}


def held_out(levels: str, count: int, training: set[str]) -> list[dict]:
    """Arithmetic questions drawn with another seed than training's, none of them seen."""
    pool = load(f"arith:{levels}", 4 * count, seed=7).questions
    return [q for q in pool if q["question"] not in training][:count]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="heads/arith.safetensors")
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--levels", default="1-2")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    head = resolve_head_path(args.head)
    card = read_card(head)
    print(
        f"head {head}: trained on {card.get('questions')} {card.get('dataset')} questions "
        f"({card.get('steps')} steps, {card.get('labels', {}).get('good_fraction')} of them good)"
    )
    print("held out:", json.dumps(card.get("held_out", {})))
    data = head.with_suffix(".steps.jsonl")
    training = {json.loads(line)["question"] for line in data.open()} if data.exists() else set()
    questions = held_out(args.levels, args.questions, training)
    ev = Eval(HERE / "prm.jsonl", questions, resume=args.resume)
    print(f"\n{len(questions)} held-out arith:{args.levels} questions, n = {args.n}, SmolLM2-135M Q4_1")
    for label, body in PROGRAMS.items():
        print(f"  {label} ...", flush=True)
        program = ttcl.compile(POLICY + body.format(head=head, n=args.n), "bench.ttcl")
        if not ev.run(program, label, args.n):
            raise SystemExit("interrupted: run again with --resume")
    print(f"\n{'strategy':<34} {'accuracy':>9} {'interval':>15} {'FLOPs/q':>10}")
    for s in summarize([r for r in ev.records if r.budget == args.n]):
        print(f"{s.program:<34} {s.accuracy:>9.1%} {s.low:>7.1%}–{s.high:<7.1%} {s.flops:>10.3g}")


if __name__ == "__main__":
    main()
