"""The `ttcl` command. Exit codes: 0 fine, 1 errors in a program, 2 usage errors.

Every failure is one clear message (with the source line and a caret for program errors),
never a traceback (`ttcl -v` adds it, for a bug report). Heavy modules are imported only by
the commands that need them.

The flags every command shares come before the command's name: `ttcl -q eval ...`,
`ttcl -v run FILE -q QUESTION` (after it, `-q` is `run`'s question).

Why one module: every command's options are declared here side by side, so a flag keeps one
name and one meaning across commands (and tests/test_conventions.py reads them all at once);
the commands' work lives in the modules beside it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path

from ttcl.cli import present
from ttcl.cli.doc import SECTIONS
from ttcl.cli.present import err, node_costs, out, params_of, parse_budget, problems, report_error, wrote
from ttcl.errors import TTCLError, UsageError
from ttcl.eval.datasets import canonical_name

SHELLS = ("bash", "zsh", "fish")  # what `ttcl completion` prints the hook for
STDIN = "-"  # a file argument of `fmt` that means standard input


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by `python -m ttcl`)."""
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer them and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    err.quiet = args.quiet  # progress, notes and "wrote" lines; errors go to `problems`
    present.verbose = args.verbose
    try:
        return args.run(args) or 0
    except TTCLError as e:
        report_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        problems.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    from ttcl.version import __version__

    p = argparse.ArgumentParser(
        prog="ttcl",
        description="Test-time compute programs for LLMs.",
        epilog="-q and -v go before the command (ttcl -q eval ...): after `run`, -q is its --question.",
    )
    p.add_argument("--version", action="version", version=f"ttcl {__version__}")
    chatter = p.add_mutually_exclusive_group()
    chatter.add_argument(
        "-q", "--quiet", action="store_true", help='only errors on stderr: no progress, notes or "wrote FILE" lines'
    )
    chatter.add_argument("-v", "--verbose", action="store_true", help="after an error, the traceback that raised it")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="parse and type-check programs, or validate compiled artifacts")
    c.add_argument("files", nargs="+", metavar="FILE", help="programs (.ttcl) or compiled artifacts (.json)")
    c.set_defaults(run=cmd_check)

    f = sub.add_parser("fmt", help="print the canonical formatting of programs")
    f.add_argument(
        "files", nargs="+", metavar="FILE", help="programs, directories (every *.ttcl below) or - (standard input)"
    )
    mode = f.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    mode.add_argument("--diff", action="store_true", help="print what would change as a unified diff; exit 1 if any")
    f.set_defaults(run=cmd_fmt)

    g = sub.add_parser("graph", help="show the compiled DAG")
    _program_args(g)
    g.add_argument(
        "--format",
        choices=("text", "dot", "mermaid"),
        default="text",
        help="text, Graphviz DOT or Mermaid (default: text)",
    )
    g.set_defaults(run=cmd_graph)

    a = sub.add_parser("parse", help="show the AST or the IR")
    _program_args(a)
    a.add_argument(
        "--emit", choices=("ast", "ir"), default="ast", help="the syntax tree or the compiled IR (default: ast)"
    )
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
    r.add_argument("--seed", type=int, default=0, help="the sampling seed (default: 0)")
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
        help="check against a budget per question in generations (a bare number), tokens or flops, "
        'e.g. "64", "2e5 tokens", "1e13 flops" (repeatable)',
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
        "--budget",
        default="16",
        metavar="AMOUNT[UNIT]",
        help="the budget per question, probes included, in generations (a bare number, or e.g. "
        '"16 generations"; the only unit optimize takes) (default: 16)',
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
    t.add_argument(
        "--backend", default="llama", choices=("llama", "torch"), help="what runs the policy (default: llama)"
    )
    t.add_argument(
        "--dataset",
        default="arith",
        type=canonical_name,
        metavar="NAME|FILE.jsonl",
        help="arith, arith:N, a range of levels such as arith:1..3, or a JSONL file (default: arith)",
    )
    _field_args(t)
    t.add_argument("--limit", type=int, default=100, metavar="N", help="questions (default: 100)")
    head = t.add_mutually_exclusive_group(required=True)
    head.add_argument(
        "-o", "--output", metavar="HEAD.safetensors", help="the head to write; its card goes beside it as HEAD.json"
    )
    head.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # the old name, for scripts that use it
    t.add_argument("--samples", type=int, default=4, help="solutions per question (default: 4)")
    t.add_argument("--rollouts", type=int, default=4, help="rollouts per step (default: 4)")
    t.add_argument("--temperature", type=float, default=0.8, help="the policy's sampling temperature (default: 0.8)")
    t.add_argument("--max-tokens", type=int, default=96, help="tokens per solution at most (default: 96)")
    t.add_argument("--seed", type=int, default=0, help="the seed of the questions and the sampling (default: 0)")
    t.add_argument("--strict", action="store_true", help="a malformed dataset line is fatal")
    t.add_argument("--resume", action="store_true", help="continue from the data and checkpoint beside -o/--output")
    t.set_defaults(run=cmd_train_prm)

    i = sub.add_parser("repl", help="an interactive session: declarations, pipelines (type, DAG, cost), :run")
    i.add_argument("file", nargs="?", metavar="FILE", help="load this file's declarations first")
    _settings_arg(i)
    i.set_defaults(run=cmd_repl)

    o = sub.add_parser("compile", help="write the compiled program as a JSON artifact")
    _program_args(o)
    o.add_argument("-o", "--output", required=True, metavar="OUT.json", help="the artifact to write")
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

    s = sub.add_parser("completion", help="print the shell code that completes ttcl's commands and options")
    s.add_argument(
        "shell",
        choices=SHELLS,
        help='the shell: eval "$(ttcl completion bash)" in ~/.bashrc (zsh alike); '
        "ttcl completion fish | source in fish's config",
    )
    s.set_defaults(run=cmd_completion)

    from ttcl.cli import serve

    _program_args(serve.add_parser(sub))
    return p


def _program_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a program (.ttcl) or a compiled artifact (.json)")
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
        type=canonical_name,
        metavar="NAME|FILE.jsonl",
        help="arith (levels 1..5 interleaved), arith:N (one level), a range of levels such as arith:1..3, or a JSONL file "
        '({"question", "answer"} or MATH\'s {"problem", "solution"} per line; GSM8K\'s "#### N" '
        "and a solution's last \\boxed{} are understood)",
    )
    _field_args(p)
    p.add_argument("--limit", type=int, metavar="N", help="the first N questions (default: arith 100, a file all)")
    p.add_argument("--strict", action="store_true", help="a malformed dataset line is fatal (default: skipped)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the questions and the sampling (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its results file")


def _load(args):
    from ttcl.program import load

    return load(args.file, args.program, params_of(args), args.set)


# ---- commands ------------------------------------------------------------------------------


def cmd_check(args) -> int:
    from ttcl.program import check_programs, check_source, load
    from ttcl.source import read_source

    status = 0
    for path in args.files:
        try:
            if path.endswith(".json"):  # an artifact was checked when compiled: loading validates it
                program = load(path)
                out.print(f"{path}: ok (artifact of {program.name}, {program.ir.generations} generations)")
                continue
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
    from ttcl.source import write_text

    paths = _fmt_paths(args.files)
    if args.write and STDIN in paths:
        raise UsageError("--write rewrites files in place; standard input (-) has none: drop --write")
    status = 0
    for path in paths:
        name = "<stdin>" if path == STDIN else path
        try:
            text = _read_program(path)
            formatted = format_source(text, name)
        except TTCLError as e:
            report_error(e)
            status = max(status, e.exit_code)
            continue
        changed = formatted != text
        if args.check:
            if changed:
                out.print(f"{name}: would be reformatted")
                status = max(status, 1)
        elif args.diff:
            lines = (text.splitlines(keepends=True), formatted.splitlines(keepends=True))
            for line in difflib.unified_diff(*lines, name, f"{name} (formatted)"):
                # as diff(1) marks it, so a last line without one does not run into the next
                sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
            status = max(status, int(changed))
        elif args.write:
            if changed:
                write_text(path, formatted)
                wrote(path, "reformatted")
        else:
            sys.stdout.write(formatted)
    return status


def _fmt_paths(files: list[str]) -> list[str]:
    """The files `fmt` takes: each named file, and every *.ttcl below a named directory, sorted."""
    paths = []
    for name in files:
        if Path(name).is_dir():
            found = sorted(str(p) for p in Path(name).rglob("*.ttcl") if p.is_file())
            if not found:
                raise UsageError(f"{name}: a directory with no .ttcl files below it")
            paths += found
        else:
            paths.append(name)
    return paths


def _read_program(path: str) -> str:
    """A program file's text, or standard input's for `-` (refused as a file would be)."""
    from ttcl.source import MAX_SOURCE_BYTES, decode_source, read_source

    if path != STDIN:
        return read_source(path)
    data = sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise UsageError(f"<stdin>: program files are limited to {MAX_SOURCE_BYTES / 1e6:g} MB")
    return decode_source(data, "<stdin>")


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
    wrote(args.output, f"program {program.name}, {len(program.graph)} nodes, {program.ir.generations} generations")
    return 0


def cmd_eval(args) -> int:
    from ttcl.cli.evaluate import eval_command

    return eval_command(args, out, err)


def cmd_optimize(args) -> int:
    from ttcl.cli.evaluate import optimize_command

    # the strategies are chosen by generations per question, the one unit it can hold them to
    _, amount = parse_budget(args.budget, "optimize", ("generations",))
    if amount != int(amount):
        raise UsageError(f"--budget counts whole generations, not {amount:g}")
    args.budget = int(amount)
    return optimize_command(args, out, err)


def cmd_train_prm(args) -> int:
    from ttcl.cli.train import train_prm_command

    return train_prm_command(args, out, err)


def cmd_run(args) -> int:
    from ttcl.cli.run import run_command

    status = run_command(args, _load(args), out, err)
    if args.calibration_out:
        wrote(args.calibration_out, "measured token lengths, for ttcl cost --calibration")
    if args.trace:
        wrote(args.trace, "trace events, one per line")
    return status


def cmd_repl(args) -> int:
    from ttcl.cli.repl import repl_command

    return repl_command(args, out, err)


def cmd_doc(args) -> int:
    from ttcl.cli.doc import doc_command

    return doc_command(args, out)


def cmd_completion(args) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["ttcl"], shell=args.shell))
    return 0
