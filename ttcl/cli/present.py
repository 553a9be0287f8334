"""What every command shows the same way: the consoles, errors with their source excerpts,
`--param` values, each node's estimated cost for a drawn DAG, and a program's estimate beside
what a run measured."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ttcl.cost.estimator import short_number
from ttcl.errors import TTCLError, UsageError
from ttcl.eval.datasets import Fields

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def report_error(e: TTCLError, console: Console | None = None) -> None:
    """Each diagnostic's first line in bold red, then its source excerpt and notes."""
    for block in e.render().split("\n\n"):
        first, _, rest = block.partition("\n")
        (console or err).print(Text(first, style="bold red"), Text("\n" + rest if rest else ""), sep="")


def params_of(args) -> dict[str, str]:
    """The program parameters given as `--param NAME=VALUE`."""
    params = {}
    for item in args.param:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return params


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
    """The progress bar long commands show on stderr: what runs, done of total, time taken;
    it disappears when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def fields_of(args) -> Fields:
    """The dataset fields named by --question-field and --answer-field."""
    return Fields(args.question_field, args.answer_field)
