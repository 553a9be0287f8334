"""`ttcl cost`: the static estimate as a rich table per node, totals, budgets and the exchange.

Exit status 1 when the estimate cannot fit a `--budget`, so scripts can gate on it.
"""

from __future__ import annotations

import re
import sys
from typing import cast

from rich import box
from rich.console import Console
from rich.table import Table

from ttcl.cost.estimator import UNITS, CostReport, short_number
from ttcl.errors import UsageError
from ttcl.program import Program

_BUDGET = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_budget(text: str) -> tuple[str, float]:
    """`--budget` values: "64" (generations), "2e5 tokens", "1e13flops"."""
    match = _BUDGET.match(text)
    unit = (match.group(2) or "generations") if match else ""
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise UsageError(
            f"--budget takes a positive AMOUNT and a unit ({', '.join(UNITS)}), "
            f'such as "64 generations" or "1e13 flops"; got {text!r}'
        )
    return unit, float(match.group(1))


def cost_command(args, program: Program, out: Console) -> int:
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
    out.print(
        f"{args.fit} = {n}: the largest value whose estimated cost fits {short_number(amount)} {unit} "
        f"per question ({'calibrated' if args.calibration else 'every answer as long as its max_tokens'})"
    )
    return 0


def show(report: CostReport, out: Console) -> None:
    """The per-node table, the totals, the priors and facts used, budgets and the exchange."""
    flops = report.expected.flops is not None
    table = Table(title=f"estimated cost of {report.program}, per question", box=box.SIMPLE_HEAD)
    for column in ("node", "op", "where", "runs", "gens", "prefill", "decode", "verifier") + (("FLOPs", "share"),)[
        0
    ] * flops:
        table.add_column(column, justify="left" if column in ("op", "where") else "right", no_wrap=True)
    total = report.expected.flops or 0.0
    for e in report.nodes:
        if not (e.generations or e.tokens):
            continue
        row = [
            f"n{e.node}",
            e.op,
            e.where.split(" ")[0].rsplit("/", 1)[-1],
            f"{e.runs:.0%}" if e.runs < 1 else "",
            _n(e.generations),
            _n(e.prefill_tokens),
            _n(e.decode_tokens),
            _n(e.verifier_tokens),
        ]
        if flops:
            row += [short_number(e.flops or 0.0), f"{(e.flops or 0.0) * e.runs / total:.0%}" if total else ""]
        table.add_row(*row)
    for name, t in (("expected", report.expected), ("worst case", report.worst)):
        if name == "worst case" and t == report.expected:
            continue
        table.add_row(
            f"[bold]{name}[/]",
            "",
            "",
            "",
            _n(t.generations),
            _n(t.prefill_tokens),
            _n(t.decode_tokens),
            _n(t.verifier_tokens),
            # both totals price FLOPs, or neither does
            *([f"[bold]{short_number(cast(float, t.flops))}[/]", ""] if flops else []),
            end_section=name == "expected",
        )
    # the columns stay whole in a pipe too, where rich would assume 80 columns
    Console(file=out.file, width=max(out.width, 120), highlight=False).print(table)
    for name, p in report.priors.items():
        steps = f", search answers in {p.search_steps:.1f} steps" if p.search_steps else ""
        verify = f", verifier {p.verify_tokens:.1f} tokens per pass" if p.verify_tokens else ""
        source = (
            (
                "the program: each answer as long as its max_tokens, steps of "
                f"{p.step_tokens:.0f} tokens, prompts from their templates"
            )
            if p.source == "program"
            else p.source
        )
        out.print(
            f"priors for {name}: {source} (prompt {p.prompt_tokens:.0f}, answer {p.answer_tokens:.0f} "
            f"tokens in {p.answer_steps:.1f} steps{steps}{verify})"
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
