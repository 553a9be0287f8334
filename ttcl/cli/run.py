"""`ttcl run`: questions in, results out, shown with rich or written as JSON lines.

Results of a `--questions` file are written one line each as soon as each question finishes,
so an interrupted run keeps everything it computed.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ttcl.cli.present import estimate_or_none
from ttcl.eval.datasets import read_jsonl
from ttcl.program import Program
from ttcl.results import Result


def run_command(args, program: Program, out: Console, err: Console) -> int:
    if args.question is not None:
        with err.status(f"running {program.name} ({program.ir.generations} generations)"):
            result = program.run(args.question, seed=args.seed, answer=args.answer, time_limit=args.time_limit)
        results = [result]
        if args.json:
            sys.stdout.write(result.model_dump_json(exclude={"trace"}, indent=1) + "\n")
        else:
            show(result, out, estimate_or_none(program))
    else:
        results = run_file(args, program, err)
    if args.calibration_out:
        from ttcl.cost.fit import calibrate

        calibrate(program.graph, results).save(args.calibration_out)
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            for i, r in enumerate(results):
                for e in r.trace:
                    f.write(json.dumps({"question": i, **e.model_dump()}) + "\n")
    return 130 if any(r.stopped == "interrupted" for r in results) else 0


def run_file(args, program: Program, err: Console) -> list[Result]:
    questions = read_jsonl(args.questions, strict=True, need_answers=False).questions
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    done: dict[int, Result] = {}
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )

    def on_result(index: int, result: Result) -> None:
        done[index] = result
        line = {
            "index": index,
            "answer_expected": questions[index]["answer"],
            **result.model_dump(exclude={"trace", "candidates"}),
        }
        sink.write(json.dumps(line) + "\n")
        sink.flush()
        progress.advance(task)

    with progress:
        task = progress.add_task("questions", total=len(questions))
        results = program.run_many(questions, seed=args.seed, time_limit=args.time_limit, on_result=on_result)
    if sink is not sys.stdout:
        sink.close()
    return results


def show(result: Result, out: Console, estimate=None) -> None:
    """The answer, the candidates with their scores, and the measured cost per node beside
    the estimate."""
    status = f" [yellow](stopped early: {result.stopped})[/]" if result.stopped else ""
    out.print(f"[bold]answer:[/] {result.answer}{status}")
    table = Table(title="candidates", show_lines=False)
    for column in ("id", "node", "answer", "score", "tokens", "text"):
        table.add_column(column, overflow="fold")
    for c in result.candidates:
        score = "" if c.score is None else f"{c.score:.3f}"
        text = " ".join(c.text.split())
        table.add_row(
            str(c.id),
            str(c.node),
            str(c.answer),
            score,
            str(c.prompt_tokens + c.generated_tokens),
            text[:60] + ("..." if len(text) > 60 else ""),
        )
    out.print(table)
    cost = result.cost
    # the figures stay whole in a pipe too, where rich would assume 80 columns
    Console(file=out.file, width=max(out.width, 110), highlight=False).print(cost_table(result, estimate))
    flops = "unknown" if cost.flops is None else f"{cost.flops:.3g}"
    out.print(
        f"generations {cost.generations}, prompt tokens {cost.prompt_tokens}, generated tokens "
        f"{cost.generated_tokens}, verifier tokens {cost.verifier_prompt_tokens}, FLOPs {flops}, "
        f"{result.elapsed_s:.1f} s" + (f", difficulty bin {result.bin}" if result.bin else "")
    )


def cost_table(result: Result, estimate=None) -> Table:
    """Measured tokens and FLOPs per node, with the static estimate's FLOPs beside them."""
    estimated = {e.node: e for e in estimate.nodes} if estimate is not None else {}
    table = Table(title="cost per node: measured, and estimated before the run")
    for column in ("node", "op", "gens", "prompt", "generated", "verifier", "FLOPs", "estimate", "error"):
        table.add_column(column, justify="left" if column == "op" else "right")

    def row(name: str, op: str, c, guess: float | None) -> list[str]:
        error = f"{(guess - c.flops) / c.flops:+.0%}" if guess and c.flops else ""
        return [
            name,
            op,
            str(c.generations),
            str(c.prompt_tokens),
            str(c.generated_tokens),
            str(c.verifier_prompt_tokens),
            _flops(c.flops),
            _flops(guess),
            error,
        ]

    for node, c in sorted(result.cost.per_node.items()):
        guess = estimated[node].flops if node in estimated else None
        table.add_row(*row(f"n{node}", c.op, c, guess))
    total = estimate.expected.flops if estimate is not None else None
    table.add_row(*row("total", "", result.cost, total), style="bold")
    return table


def _flops(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"
