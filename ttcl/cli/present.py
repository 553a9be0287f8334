"""What every command shows the same way: the consoles, errors with their source excerpts,
the files it wrote, `--param` and `--budget` values, each node's estimated cost for a drawn
DAG, and a program's estimate beside what a run measured."""

from __future__ import annotations

import math
import os
import re
import traceback
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ttcl.cli.progress import TimeLeftColumn
from ttcl.cost.estimator import UNITS, short_number
from ttcl.errors import TTCLError, UsageError
from ttcl.eval.datasets import Fields


def console(**options: Any) -> Console:
    """A console as every command makes one: no highlighting of numbers and paths, and where
    NO_COLOR is set no escape sequences at all (rich drops only the colours, keeping bold)."""
    if os.environ.get("NO_COLOR"):
        options["color_system"] = None
    return Console(**{"highlight": False, **options})


out = console(soft_wrap=True)
err = console(stderr=True, soft_wrap=True)  # progress, notes, "wrote FILE": what -q silences
problems = console(stderr=True, soft_wrap=True)  # errors, which -q never silences
verbose = False  # `ttcl -v`: each error is followed by the traceback that raised it


def fitting(console: Console, tables: list[Table]) -> Table:
    """The first of `tables` (widest first) whose columns fit the console's width whole, else
    the last: a narrow terminal gets fewer columns rather than figures cut or wrapped."""
    unbounded = console.options.update_width(1 << 16)  # else rich measures within the width
    for table in tables:
        if console.measure(table, options=unbounded).maximum <= console.width:
            return table
    return tables[-1]


def report_error(e: TTCLError, console: Console | None = None) -> None:
    """Each diagnostic's first line in bold red, then its source excerpt and notes (and with
    `ttcl -v` the traceback, for a bug report)."""
    for block in e.render().split("\n\n"):
        first, _, rest = block.partition("\n")
        (console or problems).print(Text(first, style="bold red"), Text("\n" + rest if rest else ""), sep="")
    if verbose:
        (console or problems).print(Text("".join(traceback.format_exception(e)).rstrip(), style="dim"))


def wrote(path: str | os.PathLike, what: str) -> None:
    """Say on stderr where a command wrote a file, and what it holds: one line per file."""
    err.print(Text(f"wrote {path} ({what})"))


def params_of(args) -> dict[str, str]:
    """The program parameters given as `--param NAME=VALUE`."""
    params = {}
    for item in args.param:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return params


_BUDGET = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_budget(text: str, command: str = "cost", units: tuple[str, ...] = UNITS) -> tuple[str, float]:
    """A `--budget AMOUNT[UNIT]` as (unit, amount), alike for every command: "64" is 64
    generations, "2e5 tokens" and "1e13flops" name their unit. A unit outside `units`, those
    the command can honour, is refused."""
    match = _BUDGET.match(text)
    unit, amount = ((match.group(2) or "generations"), float(match.group(1))) if match else ("", 0.0)
    if unit not in UNITS or not 0 < amount < math.inf:
        raise UsageError(
            f"--budget takes a positive AMOUNT and a unit ({', '.join(units)}), such as "
            + ('"2e5 tokens" or "1e13 flops"' if len(units) > 1 else f'"16 {units[0]}" or "16"')
            + f"; got {text!r}"
        )
    if unit not in units:
        raise UsageError(f"ttcl {command} counts its --budget in {' or '.join(units)}, not {unit}; got {text!r}")
    return unit, amount


def node_costs(program) -> dict[int, str]:
    """Each node's estimated cost for a drawn DAG: FLOPs where the model's facts can be read,
    else tokens."""
    try:
        report = program.cost()
    except TTCLError:
        report = program.cost(flops=False)
    return {
        e.node: f"~{short_number(e.flops)} FLOPs" if e.flops is not None else f"~{short_number(e.tokens)} tokens"
        for e in report.nodes
        if e.tokens
    }


def estimate_or_none(program):
    """The program's static estimate, to show beside what the run measured (None where the
    program cannot be priced, e.g. a model file without readable facts)."""
    try:
        return program.cost()
    except TTCLError:
        return None


def progress_bar(console: Console) -> Progress:
    """The progress bar long commands show on stderr: what runs, done of total, time taken
    and time left (a `ttcl.cli.progress.Meter`'s); it disappears when done, and shows nothing
    under -q or where the console is not a terminal (a pipe or a log keeps the messages)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeLeftColumn(),
        console=console,
        transient=True,
        disable=console.quiet or not console.is_terminal,  # -q, a pipe, a log
    )


SKIPPED_SHOWN = 5  # malformed dataset lines named one by one; past these they are counted


def report_skipped(skipped: list[str], err: Console) -> None:
    """Say which dataset lines were skipped as malformed: the first few by place and reason,
    then how many more (a wrong file would otherwise print a line for each of its lines)."""
    for problem in skipped[:SKIPPED_SHOWN]:
        err.print(f"[yellow]skipped[/] {problem}")
    if len(skipped) > SKIPPED_SHOWN:
        more = len(skipped) - SKIPPED_SHOWN
        err.print(f"[yellow]skipped[/] {more} more malformed line{'s' * (more > 1)} (--strict stops at the first)")


def fields_of(args) -> Fields:
    """The dataset fields named by --question-field and --answer-field."""
    return Fields(args.question_field, args.answer_field)
