"""`ttcl eval` and `ttcl optimize` on the command line: progress while they run, then rich
tables (per program and budget, per difficulty bin, per dataset level); optionally a plot,
Markdown and JSON, and for optimize the program it writes."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ttcl.cli.present import fields_of, fitting, progress_bar, report_skipped, wrote
from ttcl.cli.progress import Meter, work_per_question
from ttcl.errors import UsageError
from ttcl.eval.datasets import load as load_dataset
from ttcl.eval.evaluate import (
    Eval,
    Record,
    Summary,
    bind_budget,
    budget_param,
    dump_json,
    markdown,
    plot,
    summarize,
    summarize_by,
    table_of,
)
from ttcl.eval.sweep import PoolPlan, pool_plan
from ttcl.results import check_writable
from ttcl.source import write_text
from ttcl.version import __version__

if TYPE_CHECKING:
    from ttcl.program import Program


def eval_command(args, out: Console, err: Console) -> int:
    from ttcl.cli.present import params_of
    from ttcl.program import load

    data = load_dataset(args.dataset, args.limit, strict=args.strict, fields=fields_of(args))
    report_skipped(data.skipped, err)
    programs = [(_label(f, args.files), load(f, args.program, params_of(args), args.set)) for f in args.files]
    budgets = _budgets(args.budgets)
    output = args.output or _default_output(args.files, args.dataset)
    # every output is checked, and the results file's records against this eval, before any work
    check_writable({"--output": output, "--plot": args.plot, "--report": args.report})
    if args.plot:
        _need_matplotlib()
    runs = [
        (label, prog, b, budget_param(prog, args.budget_param) if b is not None else None)
        for label, prog in programs
        for b in budgets
    ]
    progress = progress_bar(err)

    def on_record(record: Record) -> None:
        meter.advance(work=work.get((record.program, record.budget), 1.0))
        if record.error is not None:
            err.print(Text("failed ", style="yellow"), Text(f"{record.program}: {record.error}"), sep="")

    ev = Eval(output, data.questions, seed=args.seed, resume=args.resume, on_record=on_record, isolate=True)
    ev.expect([(label, b, bind_budget(prog, b, param)) for label, prog, b, param in runs])
    keys = {(label, b) for label, _, b, _ in runs}
    pools = _pools(programs, budgets, args, err)
    work = _work(runs, pools, budgets)
    with progress:
        n = len(data.questions)
        meter = Meter(progress, "questions", len(runs) * n, sum(work.values()) * n)
        resumed = [work[r.program, r.budget] for r in ev.records if (r.program, r.budget) in keys]
        meter.resumed(len(resumed), sum(resumed))
        for label, prog, budget, param in runs:
            plan = pools.get(label)
            if plan is not None and budget != max(cast(list[int], budgets)):
                continue  # evaluated from the largest budget's pool
            meter.describe(f"{label}" + (f" {param}={budget}" if param else ""))
            finished = (
                ev.run_pooled(prog, label, cast(list[int], budgets), cast(str, param), plan)
                if plan is not None
                else ev.run(prog, label, budget, param)
            )
            if not finished:
                _notes(ev, err)
                err.print(f"interrupted: {len(ev.records)} results are in {output}; run again with --resume to finish")
                return 130
    _notes(ev, err)
    records = [r for r in ev.records if (r.program, r.budget) in keys]
    summaries = summarize(records)
    tables = [(f"{data.name}: {len(data.questions)} questions, seed {args.seed}", summaries)]
    for name, key in (("bin", lambda r: r.bin), ("level", lambda r: r.level)):
        tables += [(f"{name} {k}", rows) for k, rows in summarize_by(records, key).items()]
    if args.json:
        sys.stdout.write(dump_json(summaries) + "\n")
    else:
        for title, rows in tables:
            _show(rows, title, out)
    wrote(output, "results, a line per question")
    failed = sum(r.failed for r in records)
    if failed:
        err.print(
            Text(
                f"{failed} question{'s' if failed != 1 else ''} failed (counted wrong); the reasons are "
                f'in {output} ("error"), and above',
                style="yellow",
            )
        )
    models = _models(prog for _, prog in programs)  # for the plot's title and the report
    if args.plot:
        plot(summaries, args.plot, title=f"{models} on {data.name}, {len(data.questions)} questions")
        wrote(args.plot, "accuracy against FLOPs")
    if args.report:
        facts = [("model", models), ("TTCL", __version__), ("command", f"`{command_line()}`")]
        link = os.path.relpath(args.plot, Path(args.report).parent) if args.plot else None
        write_text(args.report, markdown(tables, f"ttcl eval on {data.name}", facts, link))
        wrote(args.report, "the tables as Markdown")
    return 0


def _show(summaries: list[Summary], title: str, out: Console) -> None:
    """The summary table (the report's too), in shorter words where the terminal is narrow:
    "per question" in the title, not in two headers, and no "(pool N)" on each budget, which
    the line before the table says once."""
    tables = []
    for compact in (False, True):
        columns, rows = table_of(summaries, compact)
        table = Table(title=title + (", per question" if compact else ""), box=box.SIMPLE_HEAD)
        for column in columns:  # a long program name folds; figures are never cut
            if column == "program":
                table.add_column(column, overflow="fold")
            else:
                table.add_column(column, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    out.print(fitting(out, tables))


def _work(runs, pools: dict[str, PoolPlan], budgets: Sequence[int | None]) -> dict[tuple[str, int | None], float]:
    """What the cost model expects each record of each run (label, budget) to cost, for the
    time left (one each where it cannot price them): the records of a pooled program share
    the cost of its largest budget's pool."""
    largest = max((b for b in budgets if b is not None), default=None)
    bound = {(label, b): bind_budget(prog, largest if label in pools else b, param) for label, prog, b, param in runs}
    costs = work_per_question(bound.values()) or [1.0] * len(bound)
    return {key: cost / (len(budgets) if key[0] in pools else 1) for key, cost in zip(bound, costs)}


def _models(programs: Iterable[Program]) -> str:
    """The models the programs run, for titles: their names (a file's name without its
    directory), each once."""
    names = [
        Path(str(decl.get("model") or decl.get("path") or name)).name
        for program in programs
        for name, decl in program.ir.models.items()
    ]
    return ", ".join(dict.fromkeys(names)) or "no model"


def command_line() -> str:
    """The command that is running, as a shell would take it again."""
    return shlex.join(["ttcl", *sys.argv[1:]])


def _pools(programs, budgets: Sequence[int | None], args, err: Console) -> dict[str, PoolPlan]:
    """The programs whose budgets come from one pool (`ttcl.eval.sweep`), by label; each
    other program with several budgets is told why it runs them one by one."""
    if len(budgets) < 2 or args.no_pool:
        return {}
    plans = {}
    for label, prog in programs:
        plan = pool_plan(prog, budget_param(prog, args.budget_param), cast(list[int], budgets))
        if isinstance(plan, str):
            err.print(Text("note ", style="yellow"), Text(f"{label}: each budget runs on its own: {plan}"), sep="")
        else:
            plans[label] = plan
            err.print(
                f"{label}: budgets {', '.join(map(str, budgets))} from one pool of {max(cast(list[int], budgets))} samples"
            )
    return plans


def _notes(ev: Eval, err: Console) -> None:
    """What the eval did to its results file (a torn last line cut off, and where the file as
    it was is kept)."""
    for note in ev.notes:
        err.print(Text("note ", style="yellow"), Text(note), sep="")


def _need_matplotlib() -> None:
    """Refuse --plot before the work, not after it, where matplotlib is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)")


def _budgets(text: str | None) -> Sequence[int | None]:
    if text is None:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--budgets takes positive whole numbers separated by commas, such as 1,4,16; got {text!r}")
    return values


def _label(path: str, paths: list[str]) -> str:
    """A program's name in the results: its file's stem, or its path where stems collide."""
    stem = Path(path).stem
    return stem if [Path(p).stem for p in paths].count(stem) == 1 else path


def _default_output(files: list[str], dataset: str) -> str:
    return f"{'+'.join(Path(f).stem for f in files)}.{_dataset_name(dataset)}.eval.jsonl"


def optimize_command(args, out: Console, err: Console) -> int:
    from ttcl.eval import optimize as opt
    from ttcl.source import read_source

    text = read_source(args.file)
    base = opt.read_base(text, args.file, args.program or "main")
    base.settings = list(args.set)
    verifier = _verifier(args.verifier, opt.verifiers(text, args.file))
    probe = args.probe if args.probe is not None else (base.probe or 4)
    opt.check_options(args.budget, probe, args.bins)  # before the dataset is read
    candidates = args.candidate or base.arms or opt.default_space(opt.arm_budget(args.budget, probe), verifier)
    # each must compile and fit an arm, before anything runs
    programs = opt.check_candidates(base, candidates, opt.arm_budget(args.budget, probe))
    data = load_dataset(args.dataset, args.limit, strict=args.strict, fields=fields_of(args))
    report_skipped(data.skipped, err)
    output = args.runs or f"{Path(args.file).stem}.{_dataset_name(args.dataset)}.optimize.jsonl"
    target = args.output or f"{Path(args.file).stem}.optimized.ttcl"
    check_writable({"--runs": output, "--output": target, "--report": args.report})
    progress = progress_bar(err)
    labels = opt.runs(candidates, verifier, probe)
    costs = work_per_question([base.program(labels[opt.PROBE_LABEL]), *programs])
    work = dict(zip(labels, costs or [1.0] * len(labels)))  # per question, for the time left
    # a question that fails stops optimize (naming it): every arm needs a result for each question
    ev = Eval(
        output,
        data.questions,
        seed=args.seed,
        resume=args.resume,
        on_record=lambda r: meter.advance(work=work.get(r.program, 1.0)),
        option="--runs",
        isolate=False,
    )
    note = [
        f"chosen per difficulty bin on {data.name} ({len(data.questions)} questions, seed {args.seed}), "
        f"{probe} probes, arms at {args.budget - probe} generations"
    ]
    with progress:
        meter = Meter(
            progress, opt.PROBE_LABEL, len(labels) * len(data.questions), sum(work.values()) * len(data.questions)
        )
        resumed = [work[r.program] for r in ev.records if r.program in work]
        meter.resumed(len(resumed), sum(resumed))
        found = opt.optimize(
            base,
            ev,
            args.budget,
            verifier,
            probe,
            candidates,
            args.bins,
            note,
            on_start=meter.describe,
            binning=args.bins_by,
        )
    _notes(ev, err)
    if found is None:
        err.print(f"interrupted: {len(ev.records)} results are in {output}; run again with --resume to finish")
        return 130
    rows = _choice_rows(found.choice, candidates, found.results, found.scores)
    _show_choice(rows, candidates, found.probes, out)
    out.print(
        f"per-bin choice, 2-fold cross-validated: accuracy {found.cv_accuracy:.1%}, "
        f"{found.cv_flops:.3g} FLOPs per question (probes included)"
    )
    alone = _alone(found)
    if alone:
        out.print(alone)
    program, cv_accuracy, cv_flops = found.text, found.cv_accuracy, found.cv_flops
    write_text(target, program)
    if args.report:
        header = ["bin", "scores", "questions", *candidates, "winner"]
        lines = [f"# ttcl optimize on {data.name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([*row[:-1], row[-1]]) + " |" for row in rows]
        lines += [
            "",
            f"Two-fold cross-validated accuracy of the per-bin choice: {cv_accuracy:.1%}, "
            f"{cv_flops:.3g} FLOPs per question (probes included).",
            *(["", alone + "."] if alone else []),
            "",
            "```",
            program.rstrip(),
            "```",
        ]
        write_text(args.report, "\n".join(lines) + "\n")
    wrote(target, "the program")
    wrote(output, "every run's results")
    if args.report:
        wrote(args.report, "the per-bin table and the program as Markdown")
    return 0


def _alone(found) -> str | None:
    """Where one strategy won every bin, what it does alone (the program runs it without the
    probes)."""
    winner = found.choice.only
    if winner is None:
        return None
    records = found.results[winner]
    accuracy = sum(r.correct for r in records) / len(records)
    flops = sum(r.flops or 0.0 for r in records) / len(records)
    return (
        f"{winner} won every bin, so the program runs it alone, without the probes: accuracy "
        f"{accuracy:.1%}, {flops:.3g} FLOPs per question"
    )


def _choice_rows(choice, candidates, results, scores) -> list[list[str]]:
    """Per bin: its number, score range, questions, each candidate's accuracy and the winner."""
    from ttcl.eval.optimize import predicted_bin

    cuts = [1.0] + choice.thresholds[::-1] + [0.0]
    rows = []
    for b, winner in choice.winners.items():
        inside = [i for i, s in enumerate(scores) if predicted_bin(s, choice.thresholds) == b]
        cells = [
            f"{sum(results[c][i].correct for i in inside) / len(inside):.0%}" if inside else "-" for c in candidates
        ]
        rows.append([str(b), f"{cuts[b]:.2f}..{cuts[b - 1]:.2f}", str(len(inside)), *cells, winner])
    return rows


def _show_choice(rows: list[list[str]], candidates, probes, out: Console) -> None:
    """The per-bin table. Where the candidates' expressions do not fit the width as column
    heads, the columns are headed c1, c2, ... and a legend below says which is which."""
    short = {c: f"c{i}" for i, c in enumerate(candidates, 1)}
    tables = []
    for name in (lambda c: c, short.get):
        table = Table(
            title="accuracy per difficulty bin (1 = easiest, by the probes' verifier score)", box=box.SIMPLE_HEAD
        )
        for column in ("bin", "scores", "questions", *map(name, candidates), "chosen"):
            left = column in ("bin", "scores", "chosen")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row[:-1], name(row[-1]))
        tables.append(table)
    shown = fitting(out, tables)
    out.print(shown)
    if shown is tables[-1]:
        for candidate in candidates:
            out.print(f"  {short[candidate]}  {candidate}")
    n = len(probes)
    out.print(
        f"probes: {sum(r.flops or 0 for r in probes) / n:.3g} FLOPs per question; oracle pass@1 of the "
        f"probes {sum(r.probe_accuracy or 0 for r in probes) / n:.0%}"
    )


def _verifier(name: str | None, declared: list[str]) -> str:
    if name is not None:
        if name not in declared:
            raise UsageError(
                f"no verifier `{name}` is declared" + (f" (there is {', '.join(declared)})" if declared else "")
            )
        return name
    if len(declared) != 1:
        raise UsageError(
            "name the verifier that predicts difficulty with --verifier"
            + (f" (declared: {', '.join(declared)})" if declared else "; the file declares none")
        )
    return declared[0]


def _dataset_name(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "", Path(dataset).stem if dataset.endswith(".jsonl") else dataset)
