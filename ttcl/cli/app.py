"""The `ttcl` command. Exit codes: 0 fine, 1 errors in a program, 2 usage errors.

Every failure is one clear message (with the source line and a caret for program errors),
never a traceback. Heavy modules are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ttcl.cli.doc import SECTIONS
from ttcl.cli.present import err, node_costs, out, params_of, report_error
from ttcl.errors import TTCLError, UsageError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by `python -m ttcl`)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except TTCLError as e:
        report_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    from ttcl.version import __version__

    p = argparse.ArgumentParser(prog="ttcl", description="Test-time compute programs for LLMs.")
    p.add_argument("--version", action="version", version=f"ttcl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="parse and type-check programs")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(run=cmd_check)

    f = sub.add_parser("fmt", help="print the canonical formatting of programs")
    f.add_argument("files", nargs="+", metavar="FILE")
    mode = f.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    f.set_defaults(run=cmd_fmt)

    g = sub.add_parser("graph", help="show the compiled DAG")
    _program_args(g)
    g.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")
    g.set_defaults(run=cmd_graph)

    a = sub.add_parser("parse", help="show the AST or the IR")
    _program_args(a)
    a.add_argument("--emit", choices=("ast", "ir"), default="ast")
    a.set_defaults(run=cmd_parse)

    r = sub.add_parser("run", help="run a program on a question (or a JSONL file of them)")
    _program_args(r)
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("-q", "--question", help="the question")
    source.add_argument(
        "--questions",
        metavar="FILE.jsonl",
        help='one {"question": ..., "answer": ...} per line; results stream out per line',
    )
    r.add_argument("--answer", help="the ground truth (for the oracle verifier)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--time-limit", type=float, metavar="SECONDS", help="per question")
    r.add_argument("--json", action="store_true", help="print results as JSON")
    r.add_argument("--trace", metavar="OUT.jsonl", help="write every trace event, one per line")
    r.add_argument(
        "-o", "--output", metavar="OUT.jsonl", help="with --questions: write results here (never overwritten)"
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="with --questions and -o: run only the questions the results file lacks (same program and seed)",
    )
    r.add_argument(
        "--calibration-out",
        metavar="FILE.json",
        help="write the token lengths the run measured, for `ttcl cost --calibration`",
    )
    r.set_defaults(run=cmd_run)

    k = sub.add_parser("cost", help="estimate tokens and FLOPs per node before running")
    _program_args(k)
    k.add_argument(
        "--model",
        metavar="NAME",
        help="price as this model: one declared in the file (a spec), a known name, a GGUF file or a config directory",
    )
    k.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="AMOUNT[UNIT]",
        help='check against a budget, e.g. "64", "2e5 tokens", "1e13 flops" (repeatable)',
    )
    k.add_argument("--vs-params", type=float, metavar="N", help="the paper's exchange against a model of N parameters")
    k.add_argument(
        "--ratio",
        type=float,
        default=0.79,
        metavar="R",
        help="D_inference / D_pretrain for the exchange (default 0.79)",
    )
    k.add_argument("--calibration", metavar="FILE", help="token-length priors measured by earlier runs")
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.add_argument("--fit", metavar="PARAM", help="print the largest value of an int parameter that fits the --budget")
    k.set_defaults(run=cmd_cost)

    e = sub.add_parser("eval", help="run programs over a dataset and grade them, per budget")
    e.add_argument("files", nargs="+", metavar="FILE", help="programs (each a strategy)")
    e.add_argument("--program", metavar="NAME", help="which program of each file (default: main)")
    e.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="set a program parameter (repeatable)"
    )
    _settings_arg(e)
    _dataset_args(e)
    e.add_argument("--budgets", metavar="N,N,...", help="run each program with its budget parameter at each value")
    e.add_argument("--budget-param", metavar="NAME", help="the parameter --budgets binds (default: the only int one)")
    e.add_argument(
        "--no-pool",
        action="store_true",
        help="run every budget on its own, even where the smaller ones could come from the largest one's samples",
    )
    e.add_argument(
        "-o",
        "--output",
        metavar="OUT.jsonl",
        help="results, a line per question (default: "
        "FILE.DATASET.eval.jsonl); --resume continues an interrupted eval in it",
    )
    e.add_argument("--plot", metavar="OUT.png", help="accuracy against FLOPs, a line per program")
    e.add_argument("--report", metavar="OUT.md", help="write the tables as Markdown")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(run=cmd_eval)

    z = sub.add_parser("optimize", help="choose the compute-optimal strategy per difficulty bin; write the program")
    z.add_argument(
        "file", metavar="FILE", help="models and verifiers to use; a program's match arms are the search space"
    )
    z.add_argument("--program", metavar="NAME", help="the program whose arms are the search space (default: main)")
    _settings_arg(z)
    _dataset_args(z)
    z.add_argument(
        "--budget", type=int, default=16, metavar="N", help="generations per question, probes included (default 16)"
    )
    z.add_argument("--probe", type=int, metavar="P", help="probe samples that predict difficulty (default 4)")
    z.add_argument("--bins", type=int, default=5, help="difficulty bins (default 5; pass-rate bins are 3)")
    z.add_argument(
        "--bins-by",
        choices=("quantile", "pass-rate"),
        default="quantile",
        help="quantile: bins of equal size at quantiles of the probes' score; pass-rate: easy >= 50%%, "
        "medium 10-50%%, hard < 10%% (the score as an estimated pass rate)",
    )
    z.add_argument("--verifier", metavar="NAME", help="the verifier that scores probes (default: the only one)")
    z.add_argument(
        "--candidate",
        action="append",
        metavar="EXPR",
        help="a strategy to consider, such as "
        '"beam_search(12, prm, width=4)" (repeatable; default: the paper\'s set at the budget)',
    )
    z.add_argument("-o", "--output", metavar="OUT.ttcl", help="the program (default: FILE.optimized.ttcl)")
    z.add_argument(
        "--runs",
        metavar="RUNS.jsonl",
        help="every run's results (default: FILE.DATASET.optimize.jsonl); "
        "--resume continues an interrupted optimize from it",
    )
    z.add_argument("--report", metavar="OUT.md", help="write the per-bin table and the program as Markdown")
    z.set_defaults(run=cmd_optimize)

    t = sub.add_parser("train-prm", help="train a PRM head from Monte Carlo rollouts of the policy")
    t.add_argument(
        "--model",
        default="smollm2-135m",
        help="the policy: a GGUF file, a known name, or "
        "(with --backend torch) a transformers directory (default: smollm2-135m)",
    )
    t.add_argument("--backend", default="llama", choices=("llama", "torch"))
    t.add_argument(
        "--dataset",
        default="arith",
        metavar="NAME|FILE.jsonl",
        help="arith, arith:N, arith:A-B, or a JSONL file (default: arith)",
    )
    _field_args(t)
    t.add_argument("--limit", type=int, default=100, metavar="N", help="questions (default: 100)")
    t.add_argument("--out", required=True, metavar="HEAD.safetensors")
    t.add_argument("--samples", type=int, default=4, help="solutions per question (default: 4)")
    t.add_argument("--rollouts", type=int, default=4, help="rollouts per step (default: 4)")
    t.add_argument("--temperature", type=float, default=0.8)
    t.add_argument("--max-tokens", type=int, default=96)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--strict", action="store_true", help="a malformed dataset line is fatal")
    t.add_argument("--resume", action="store_true", help="continue from the data and checkpoint beside --out")
    t.set_defaults(run=cmd_train_prm)

    i = sub.add_parser("repl", help="an interactive session: declarations, pipelines (type, DAG, cost), :run")
    i.add_argument("file", nargs="?", metavar="FILE", help="load this file's declarations first")
    _settings_arg(i)
    i.set_defaults(run=cmd_repl)

    o = sub.add_parser("compile", help="write the compiled program as a JSON artifact")
    _program_args(o)
    o.add_argument("-o", "--output", required=True, metavar="OUT.json")
    o.set_defaults(run=cmd_compile)

    d = sub.add_parser("doc", help="the built-ins and the stdlib: each one's options, types, defaults and limits")
    d.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="one built-in or stdlib strategy (llama, sample, beam_search, ...), or a section: " + ", ".join(SECTIONS),
    )
    d.add_argument("--markdown", action="store_true", help="print Markdown (the reference tables of docs/language.md)")
    d.set_defaults(run=cmd_doc)
    return p


def _program_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    p.add_argument("--program", metavar="NAME", help="which program of the file (default: main)")
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="set a program parameter (repeatable)"
    )
    _settings_arg(p)


def _settings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME.OPTION=VALUE",
        help="change an option of a model, a verifier or the answer before checking, "
        "e.g. policy.max_tokens=64 or prm.agg=min (repeatable)",
    )


def _field_args(p: argparse.ArgumentParser) -> None:
    """Which fields of a JSONL dataset hold the question and the answer."""
    p.add_argument(
        "--question-field", metavar="NAME", help='the question\'s field (default: "question", else "problem")'
    )
    p.add_argument("--answer-field", metavar="NAME", help='the answer\'s field (default: "answer", else "solution")')


def _dataset_args(p: argparse.ArgumentParser) -> None:
    """The questions and how they run, alike for eval and optimize."""
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME|FILE.jsonl",
        help="arith (levels 1-5 interleaved), arith:1 .. arith:5, or a JSONL file "
        '({"question", "answer"} or MATH\'s {"problem", "solution"} per line; GSM8K\'s "#### N" '
        "and a solution's last \\boxed{} are understood)",
    )
    _field_args(p)
    p.add_argument("--limit", type=int, metavar="N", help="the first N questions (default: arith 100, a file all)")
    p.add_argument("--strict", action="store_true", help="a malformed dataset line is fatal (default: skipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its results file")


def _load(args):
    from ttcl.program import load

    return load(args.file, args.program, params_of(args), args.set)


# ---- commands ------------------------------------------------------------------------------


def cmd_check(args) -> int:
    from ttcl.program import check_programs, check_source
    from ttcl.source import read_source

    status = 0
    for path in args.files:
        try:
            programs = check_programs(check_source(read_source(path), path))
        except TTCLError as e:
            report_error(e)
            status = max(status, e.exit_code)
            continue
        names = ", ".join(p.name for p in programs) or "no programs"
        out.print(f"{path}: ok ({names})")
    return status


def cmd_fmt(args) -> int:
    from ttcl.formatter import format_source
    from ttcl.source import read_source

    status = 0
    for path in args.files:
        try:
            text = read_source(path)
            formatted = format_source(text, path)
        except TTCLError as e:
            report_error(e)
            status = max(status, e.exit_code)
            continue
        if args.check:
            if formatted != text:
                out.print(f"{path}: would be reformatted")
                status = max(status, 1)
        elif args.write:
            if formatted != text:
                Path(path).write_text(formatted, encoding="utf-8")
                out.print(f"{path}: reformatted")
        else:
            sys.stdout.write(formatted)
    return status


def cmd_graph(args) -> int:
    from ttcl.draw import FORMATS, to_text

    program = _load(args)
    if args.format != "text":
        sys.stdout.write(FORMATS[args.format](program.graph))
        return 0
    sys.stdout.write(to_text(program.graph, node_costs(program)))
    return 0


def cmd_cost(args) -> int:
    from ttcl.cli.cost import cost_command

    return cost_command(args, _load(args), out)


def cmd_parse(args) -> int:
    if args.emit == "ir":
        sys.stdout.write(_load(args).ir.model_dump_json(indent=1) + "\n")
        return 0
    from ttcl.ast import to_data
    from ttcl.parser import parse
    from ttcl.source import read_source

    if args.set:
        raise UsageError("--set changes the compiled program, not the parsed file: use it with --emit ir")
    module = parse(read_source(args.file), args.file)
    sys.stdout.write(json.dumps(to_data(module), indent=1) + "\n")
    return 0


def cmd_compile(args) -> int:
    program = _load(args)
    try:
        program.save(args.output)
    except OSError as e:
        raise UsageError(f"{args.output}: cannot write: {e.strerror or e}") from None
    out.print(
        f"{args.output}: program {program.name}, {len(program.graph)} nodes, {program.ir.generations} generations"
    )
    return 0


def cmd_eval(args) -> int:
    from ttcl.cli.evaluate import eval_command

    return eval_command(args, out, err)


def cmd_optimize(args) -> int:
    from ttcl.cli.evaluate import optimize_command

    return optimize_command(args, out, err)


def cmd_train_prm(args) -> int:
    from ttcl.cli.train import train_prm_command

    return train_prm_command(args, out, err)


def cmd_run(args) -> int:
    from ttcl.cli.run import run_command

    return run_command(args, _load(args), out, err)


def cmd_repl(args) -> int:
    from ttcl.cli.repl import repl_command

    return repl_command(args, out, err)


def cmd_doc(args) -> int:
    from ttcl.cli.doc import doc_command

    return doc_command(args, out)
