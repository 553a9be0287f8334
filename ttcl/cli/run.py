"""`ttcl run`: questions in, results out, shown with rich or written as JSON lines.

Results of a `--questions` file are written one line each as soon as each question finishes,
so an interrupted run keeps everything it computed. Each line says what it is a result of
(its question's and its program's hashes, and its seed), so `--resume` can run only what the
file lacks, and refuses a file written by another run. An existing results file is never
overwritten. Every output path is checked before any model work. A question the model cannot
take (a prompt longer than its context) gets a line with its "error", and the rest go on.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ttcl.cli.present import estimate_or_none, fitting, progress_bar, wrote
from ttcl.cli.progress import Meter
from ttcl.cost.estimator import short_number
from ttcl.errors import UsageError
from ttcl.eval.datasets import read_jsonl
from ttcl.eval.evaluate import run_isolating, where
from ttcl.program import Program
from ttcl.results import (
    Result,
    check_writable,
    cut_torn_line,
    end_line,
    program_hash,
    question_hash,
    read_lines,
)
from ttcl.runtime.answers import AnswerKind, answer_kind
from ttcl.source import NotJSON, parse_json


def run_command(args, program: Program, out: Console, err: Console) -> int:
    _check_args(args)
    earlier = None  # resuming: the calibration the earlier run wrote, merged with this one's
    if args.resume and args.calibration_out and Path(args.calibration_out).exists():
        from ttcl.cost.calibration import Calibration

        earlier = Calibration.load(args.calibration_out)
    if args.question is not None:
        with err.status(f"running {program.name} ({program.ir.generations} generations)"):
            result = program.run(args.question, seed=args.seed, answer=args.answer, time_limit=args.time_limit)
        results = {0: result}
        if args.json:
            sys.stdout.write(result.model_dump_json(exclude={"trace"}, indent=1) + "\n")
        else:
            show(result, out, estimate_or_none(program))
    else:
        results = run_file(args, program, err)
    if args.calibration_out:
        from ttcl.cost.fit import calibrate

        measured = calibrate(program.graph, list(results.values()))
        (measured if earlier is None else earlier.merge(measured)).save(args.calibration_out)
    if args.trace:
        try:  # resuming: after the earlier run's events
            with open(args.trace, "a" if args.resume else "w", encoding="utf-8") as f:
                for i, r in results.items():
                    for e in r.trace:
                        f.write(json.dumps({"question": i, **e.model_dump()}) + "\n")
        except OSError as e:
            raise UsageError(f"--trace {args.trace}: cannot write: {e.strerror or e}") from None
    return 130 if any(r.stopped == "interrupted" for r in results.values()) else 0


def _check_args(args) -> None:
    """Refuse what cannot work before any model work: a time limit that is not a positive
    number of seconds, an output that cannot be written, or results that would be lost."""
    limit = args.time_limit
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise UsageError(f"--time-limit takes a positive number of seconds, not {limit}")
    if args.question is not None and args.output:
        raise UsageError("-o/--output writes the results of --questions; with -q, use --json (and redirect it)")
    if args.resume and not (args.questions and args.output):
        raise UsageError("--resume continues a --questions run in its -o/--output file; give both")
    check_writable({"--output": args.output, "--trace": args.trace, "--calibration-out": args.calibration_out})


def run_file(args, program: Program, err: Console) -> dict[int, Result]:
    """Run a questions file; its results (those this run computed) by question index. Ends
    saying how many results there are and, where the questions have answers, how many are
    right."""
    questions = read_jsonl(args.questions, strict=True, need_answers=False).questions
    hashes = [question_hash(q["question"]) for q in questions]
    digest = program_hash(program.ir)
    lines: dict[int, dict[str, Any]] = {}  # finished lines by question: the file's, then this run's
    if args.output:
        lines = _answered(args.output, hashes, digest, args.seed, err) if args.resume else _fresh(args.output)
    todo = [i for i in range(len(questions)) if i not in lines]
    before = len(lines)
    try:
        sink = open(args.output, "a", encoding="utf-8") if args.output else sys.stdout
    except OSError as e:
        raise UsageError(f"--output {args.output}: cannot write: {e.strerror or e}") from None
    results: dict[int, Result] = {}
    progress = progress_bar(err)
    identity = {"seed": args.seed, "program_hash": digest}

    def write(line: dict[str, Any]) -> None:
        sink.write(json.dumps(line) + "\n")
        sink.flush()
        if line.get("stopped") != "interrupted":
            lines[line["index"]] = line
        meter.advance()

    def on_result(index: int, result: Result) -> None:
        results[index] = result
        write(
            {
                "index": index,
                "answer_expected": questions[index]["answer"],
                **result.model_dump(exclude={"trace", "candidates"}),
                "question_hash": hashes[index],
                **identity,
            }
        )

    def on_failure(index: int, reason: str) -> None:
        message = f"{where(questions[index], index)}: {reason}"
        err.print(Text("failed ", style="yellow"), Text(message), sep="")
        write(
            {
                "index": index,
                "answer_expected": questions[index]["answer"],
                "question": questions[index]["question"],
                "answer": None,
                "error": message,
                "question_hash": hashes[index],
                **identity,
            }
        )

    try:
        with progress:
            meter = Meter(progress, "questions", len(todo))
            run_isolating(program, questions, todo, on_result, on_failure, seed=args.seed, time_limit=args.time_limit)
    finally:
        if sink is not sys.stdout:
            sink.close()
        kind = answer_kind(program.ir.answer)  # graded as the program's votes compare answers
        what = _tally(list(lines.values()), len(lines) - before, len(questions), kind, bool(args.output))
        if args.output:
            wrote(args.output, what)
        else:
            err.print(what)
    return results


def _tally(lines: list[dict[str, Any]], new: int, total: int, kind: AnswerKind, resumable: bool) -> str:
    """How many results there are (how many new, failed, interrupted) and, of those whose
    question has an answer, the share right."""
    parts = [f"{len(lines)} result{'s' if len(lines) != 1 else ''}"]
    if new != len(lines):
        parts[0] += f", {new} new"
    failed = sum("error" in line for line in lines)
    if failed:
        parts.append(f"{failed} failed")
    if len(lines) < total:
        parts.append(f"{total - len(lines)} interrupted" + (": --resume runs them" if resumable else ""))
    graded = [line for line in lines if line.get("answer_expected") is not None]
    if graded:
        right = sum(kind.same(line.get("answer"), line["answer_expected"]) for line in graded)
        of = f"{right} of {len(graded)}" + ("" if len(graded) == len(lines) else " with an answer to check")
        parts.append(f"accuracy {right / len(graded):.1%} ({of})")
    return "; ".join(parts)


def _fresh(path: str) -> dict[int, dict[str, Any]]:
    """Refuse to overwrite results: an output that already holds some needs --resume."""
    target = Path(path)
    if target.is_file() and target.stat().st_size:
        raise UsageError(
            f"{path} already holds results: --resume to continue it, or choose another --output "
            "(nothing is overwritten)"
        )
    return {}


def _answered(path: str, hashes: list[str], digest: str, seed: int, err: Console) -> dict[int, dict[str, Any]]:
    """The lines of the questions a results file already answers, by question index, after
    checking each line is a result of this questions file, program and seed (else `UsageError`
    saying what differs). A torn last line is cut off, the file as it was kept in PATH.torn. A
    question whose line says it was interrupted runs again; its new line follows."""
    lines, torn = read_lines(path)
    found: dict[str, str] = {}
    answered: dict[int, dict[str, Any]] = {}
    for number, text in lines:
        try:
            line = parse_json(text)
        except NotJSON:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("index"), int):
            raise UsageError(f"{path}:{number}: not a result of `ttcl run --questions`; is this a results file?")
        if not all(isinstance(line.get(k), str) for k in ("question_hash", "program_hash")):
            raise UsageError(
                f"{path} was written by an older TTCL: its lines do not say which questions and program "
                f"they are results of, so --resume cannot check they belong to this run; choose another "
                f"--output, or remove {path} to start over"
            )
        index = line["index"]
        if line.get("seed") != seed:
            found.setdefault("seed", f"the seed differs (--seed {line.get('seed')} in the file, {seed} now)")
        if not 0 <= index < len(hashes) or line["question_hash"] != hashes[index]:
            found.setdefault(
                "questions", f"the questions differ (line {number} is not a result of question {index} of this file)"
            )
        if line["program_hash"] != digest:
            found.setdefault(
                "program", "the program differs (edited since, another --program, or other --param or --set values?)"
            )
        if line.get("stopped") != "interrupted":
            answered[index] = line
    if found:
        raise UsageError(
            f"{path} holds results of another run: " + "; ".join(found.values()) + ". --resume only continues "
            f"the run that wrote the file: choose another --output for this one, or remove {path} to start over"
        )
    if torn is not None:
        backup = cut_torn_line(path, torn)
        err.print(
            Text("note ", style="yellow"),
            Text(
                f"{path}: its last line was torn (a write cut short) and is cut off; the file as it was is kept in "
                f"{backup}; that question runs again"
            ),
            sep="",
        )
    end_line(path)
    return answered


def show(result: Result, out: Console, estimate=None) -> None:
    """The answer, the candidates with their scores, and the measured cost per node beside
    the estimate; each table as wide as the terminal allows."""
    status = f" [yellow](stopped early: {result.stopped})[/]" if result.stopped else ""
    out.print(f"[bold]answer:[/] {_answer(result.answer)}{status}")
    out.print(candidates_table(result))
    out.print(fitting(out, [cost_table(result, estimate, compact) for compact in (False, True)]))
    if estimate is not None:
        out.print(estimate_line(result, estimate))
    cost = result.cost
    flops = "unknown" if cost.flops is None else f"{cost.flops:.3g}"
    cut = sum(c.cut for c in result.candidates)
    kept = f", {len(result.candidates)} candidates kept ({cut} cut short)" if result.stopped else ""
    out.print(
        f"generations {cost.generations}, prompt tokens {cost.prompt_tokens}, generated tokens "
        f"{cost.generated_tokens}, verifier tokens {cost.verifier_prompt_tokens}, FLOPs {flops}, "
        f"{result.elapsed_s:.1f} s" + (f", difficulty bin {result.bin}" if result.bin else "") + kept
    )


def candidates_table(result: Result) -> Table:
    """The candidates, a row each: the tokens a candidate generated, and the prompt once per
    node in the caption. A node decodes its prompt once for all its candidates (the backend
    charges it to the first), so a per-candidate total would put it all on candidate 0."""
    table = Table(title="candidates", box=box.SIMPLE_HEAD, show_edge=False, expand=True)
    for column in ("id", "node", "answer", "score", "generated"):
        table.add_column(column, justify="left" if column == "answer" else "right", no_wrap=True)
    # the text takes the width left, on one line: a glance at each, `--json` has them whole
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1, min_width=12)
    prompts: dict[int, int] = {}
    for c in result.candidates:
        prompts[c.node] = prompts.get(c.node, 0) + c.prompt_tokens
        text = Text(" ".join(c.text.split()))
        if c.cut:
            text = Text.assemble(("(cut) ", "yellow"), text)
        score = "" if c.score is None else f"{c.score:.3f}"
        table.add_row(str(c.id), f"n{c.node}", _answer(c.answer), score, str(c.generated_tokens), text)
    if prompts:
        table.caption = "prompt tokens, decoded once for a node's candidates: " + ", ".join(
            f"n{node} {tokens}" for node, tokens in sorted(prompts.items())
        )
    return table


def cost_table(result: Result, estimate=None, compact: bool = False) -> Table:
    """Measured tokens and FLOPs per node, with the FLOPs estimated before the run and the
    ratio of the two; `compact` sums the tokens into one column, for a narrow terminal."""
    estimated = {e.node: e.flops for e in estimate.nodes} if estimate is not None else {}
    tokens = ("tokens",) if compact else ("prompt", "generated", "verifier")
    table = Table(title="cost per node: measured, and estimated before the run", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("node", "op", "gens", *tokens, "measured FLOPs", "estimated FLOPs", "measured / estimate"):
        # the long headings may wrap onto two lines; the figures never do
        table.add_column(column, justify="left" if column == "op" else "right", no_wrap=" " not in column)

    def row(name: str, op: str, c, guess: float | None) -> list[str]:
        counts = [c.tokens] if compact else [c.prompt_tokens, c.generated_tokens, c.verifier_prompt_tokens]
        ratio = f"{c.flops / guess:.2g}" if guess and c.flops is not None else ""
        return [name, op, str(c.generations), *map(str, counts), _flops(c.flops), _flops(guess), ratio]

    for node, c in sorted(result.cost.per_node.items()):
        table.add_row(*row(f"n{node}", c.op, c, estimated.get(node)))
    total = estimate.expected.flops if estimate is not None else None
    table.add_row(*row("total", "", result.cost, total), style="bold")
    return table


def estimate_line(result: Result, estimate) -> str:
    """The estimate's totals beside what was measured, and the priors it used: measured over
    estimated tokens and FLOPs (1 is exact; under 1, the estimate was high)."""
    expected, cost = estimate.expected, result.cost
    parts = [f"tokens {cost.tokens / expected.tokens:.2g}"] if expected.tokens else []
    if expected.flops and cost.flops is not None:
        parts.append(f"FLOPs {cost.flops / expected.flops:.2g}")
    sources = {"program": "the program's upper bounds", "shipped": "shipped, measured on the model"}
    priors = "; ".join(f"{name}: {sources.get(p.source, p.source)}" for name, p in estimate.priors.items())
    return (
        f"estimated before the run: {expected.tokens:.0f} tokens, {_flops(expected.flops) or 'unknown'} FLOPs "
        f"(priors for {priors}); measured / estimate: {', '.join(parts) or 'unknown'}"
    )


def _answer(answer: str | None) -> str:
    return "—" if answer is None else answer


def _flops(x: float | None) -> str:
    return "" if x is None else short_number(x)
