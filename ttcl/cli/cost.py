"""`ttcl cost`: the static estimate as a rich table per node, totals, budgets and the exchange.

Exit status 1 when the estimate cannot fit a `--budget`, so scripts can gate on it.
"""

from __future__ import annotations

import sys

from rich import box
from rich.console import Console
from rich.table import Table

from ttcl.cli.present import fitting, parse_budget
from ttcl.cost.estimator import UNITS, CostReport, short_number
from ttcl.errors import UsageError
from ttcl.program import Program


def cost_command(args, program: Program, out: Console) -> int:
    """`ttcl cost FILE`: the estimate as a table or JSON; exit 1 when it cannot fit a budget."""
    if args.fit:
        return fit_command(args, program, out)
    report = program.cost(model=args.model, calibration=args.calibration, vs_params=args.vs_params, ratio=args.ratio)
    report = report.model_copy(update={"budgets": {**report.budgets, **dict(map(parse_budget, args.budget))}})
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=1) + "\n")
    else:
        show(report, out)
    return 1 if report.over_budget() else 0


def fit_command(args, program: Program, out: Console) -> int:
    """`--fit NAME --budget AMOUNT[UNIT]`: the largest value of a parameter that fits."""
    from ttcl.eval.optimize import fit_parameter

    if len(args.budget) != 1:
        raise UsageError("--fit needs exactly one --budget to fit the parameter to")
    unit, amount = parse_budget(args.budget[0])
    if args.fit not in program.params:
        raise UsageError(f"program `{program.name}` has no parameter `{args.fit}`")
    n = fit_parameter(program, args.fit, unit, amount, args.calibration)
    priors = program.cost(calibration=args.calibration, flops=False).priors.values()
    out.print(
        f"{args.fit} = {n}: the largest value whose estimated cost fits {short_number(amount)} {unit} "
        f"per question (priors: {'; '.join(sorted({priors_source(p.source, p.step_tokens) for p in priors}))})"
    )
    return 0


def show(report: CostReport, out: Console) -> None:
    """The per-node table, the totals, the priors and facts used, budgets and the exchange."""
    # the widest table that fits the terminal: the source location goes first, then the shares
    optional = [(), ("where",), ("where", "share")]
    out.print(fitting(out, [_table(report, dropped) for dropped in optional]))
    for name, p in report.priors.items():
        steps = f", search answers in {p.search_steps:.1f} steps" if p.search_steps else ""
        verify = f", verifier {p.verify_tokens:.1f} tokens per pass" if p.verify_tokens else ""
        out.print(
            f"priors for {name}: {priors_source(p.source, p.step_tokens)} (prompt {p.prompt_tokens:.0f}, answer "
            f"{p.answer_tokens:.0f} tokens in {p.answer_steps:.1f} steps{steps}{verify})"
        )
    for name, f in report.models.items():
        out.print(
            f"model {name}: {f.name} ({f.source}), {f.params / 1e6:.1f}M parameters "
            f"({f.params_non_embedding / 1e6:.1f}M non-embedding{', tied embeddings' if f.tied_embeddings else ''}), "
            f"{f.n_layer} layers, d_model {f.d_model}, d_attn {f.d_attn}, vocabulary {f.n_vocab}"
            + "".join(f"; {n}" for n in f.notes)
        )
    for unit, limit in report.budgets.items():
        _budget_line(report, unit, limit, out)
    if report.exchange is not None:
        x = report.exchange
        assert report.program_multiple is not None  # `with_exchange` sets both
        out.print(
            f"exchange (Snell et al. §7): a model {x.size_ratio:.1f}× larger at R = {x.ratio:g} costs as much as "
            f"{x.multiple:.1f}× the small model's inference compute (M + 3(M-1)/R); this program spends "
            f"{report.program_multiple:.1f}× one sample, so it is "
            + ("[green]cheaper[/]" if report.program_multiple <= x.multiple else "[red]dearer[/]")
            + " than the larger model"
        )


def _table(report: CostReport, dropped: tuple[str, ...]) -> Table:
    """The estimate per node and its totals, without the `dropped` columns (and without
    `runs` where every node always runs, nor FLOPs where they cannot be priced)."""
    columns = ["node", "op", "where", "runs", "gens", "prefill", "decode", "verifier", "FLOPs", "share"]
    gone = set(dropped) | ({"runs"} if all(e.runs >= 1 for e in report.nodes) else set())
    gone |= {"FLOPs", "share"} if report.expected.flops is None else set()
    shown = [c for c in columns if c not in gone]
    table = Table(title=f"estimated cost of {report.program}, per question", box=box.SIMPLE_HEAD, show_edge=False)
    for column in shown:
        table.add_column(column, justify="left" if column in ("op", "where") else "right", no_wrap=True)
    total = report.expected.flops or 0.0
    for e in report.nodes:
        if not (e.generations or e.tokens):
            continue
        flops = e.flops or 0.0
        cells = {
            "node": f"n{e.node}",
            "op": e.op,
            "where": e.where.split(" ")[0].rsplit("/", 1)[-1],
            "runs": f"{e.runs:.0%}" if e.runs < 1 else "",
            "FLOPs": short_number(flops),
            "share": f"{flops * e.runs / total:.0%}" if total else "",
        }
        table.add_row(*(cells[c] if c in cells else _n(getattr(e, _FIELDS[c])) for c in shown))
    for name, t in (("expected", report.expected), ("worst case", report.worst)):
        if name == "worst case" and t == report.expected:
            continue
        # named in the op column, the wide one; both totals price FLOPs, or neither does
        cells = {"op": f"[bold]{name}[/]", "FLOPs": f"[bold]{short_number(t.flops or 0.0)}[/]"}
        row = [cells[c] if c in cells else _n(getattr(t, _FIELDS[c])) if c in _FIELDS else "" for c in shown]
        table.add_row(*row, end_section=name == "expected")
    return table


_FIELDS = {"gens": "generations", "prefill": "prefill_tokens", "decode": "decode_tokens", "verifier": "verifier_tokens"}


def priors_source(source: str, step_tokens: float) -> str:
    """Where an estimate's priors came from, in words (`PriorsUsed.source`)."""
    if source == "program":
        return (
            "the program (an upper bound): each answer as long as its max_tokens, steps of "
            f"{step_tokens:.0f} tokens, prompts from their templates"
        )
    if source == "shipped":
        return "measured on the model and shipped with TTCL; --calibration gives your own"
    return source


def _budget_line(report: CostReport, unit: str, limit: float, out: Console) -> None:
    amount = report.worst.amount(unit)
    if amount is None:
        out.print(f"budget {short_number(limit)} {unit}: cannot be priced without model facts")
        return
    others = ", ".join(
        f"≈ {short_number(v)} {u}"
        for u in UNITS
        if u != unit
        for v in [report.convert(limit, unit, u)]
        if v is not None
    )
    verdict = "[green]fits[/]" if amount <= limit else "[bold red]does not fit[/]"
    out.print(
        f"budget {short_number(limit)} {unit} ({others}): {verdict}, worst case {short_number(amount)} ({amount / limit:.0%})"
    )
    if amount > limit:
        names = ", ".join(f"n{e.node} {e.op}" for e in report.costliest(unit))
        out.print(f"  costliest: {names}")


def _n(x: float) -> str:
    return "" if not x else short_number(x)
