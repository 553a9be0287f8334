"""`ttcl repl`: an interactive session over `session.Session`, with prompt_toolkit and rich.

    ttcl> strategy bon(n: int, v: verifier) =
      ...   sample(n) |> best(v)
    defined strategy bon: Question | Pool -> Answer
    ttcl> bon(4, prm)                 # a pipeline: its type, DAG and estimated cost at once
    ttcl> :run What is 2 + 3?         # runs it, with a live line of batches and tokens

Enter submits an input once it is a whole statement (or on a blank line); Ctrl-C clears the
line, or stops a running program with the best answer so far; Ctrl-D ends the session. Fed
from a pipe, it reads the same inputs from stdin with no prompt.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import cast

from prompt_toolkit.completion import Completer as BaseCompleter
from prompt_toolkit.completion import Completion, PathCompleter
from prompt_toolkit.document import Document
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ttcl import ast
from ttcl.cli.session import Entry, Outcome, Session, is_complete, needs_params
from ttcl.errors import TTCLError, UsageError, printable
from ttcl.parser import STATEMENT_KEYWORDS
from ttcl.results import Result
from ttcl.signatures import BUILTIN_VERIFIERS, MODELS, STAGES, VERIFIERS

# name -> (arguments, what it does); each is a `cmd_<name>` method of `Repl`
COMMANDS = {
    "run": ("QUESTION", "run the current program on a question, with live progress"),
    "trace": ("", "the last run's search tree: candidates, their steps, scores and answers"),
    "cost": ("", "the current program's estimated cost per node (what `ttcl cost` prints)"),
    "graph": ("[text|dot|mermaid]", "the current program's DAG"),
    "load": ("FILE", "replace the session's declarations with a file's"),
    "model": (
        "[NAME|PATH]",
        "show the models, or switch the policy to a declared model, a known name (smollm2-135m) or a GGUF file",
    ),
    "help": ("", "this list"),
    "quit": ("", "end the session (so does Ctrl-D)"),
}
WORDS = sorted(
    set(STATEMENT_KEYWORDS)
    | {"match", "true", "false", "difficulty"}
    | set(STAGES)
    | set(MODELS)
    | set(VERIFIERS)
    | set(BUILTIN_VERIFIERS)
)
_KINDS = {
    "ModelDecl": "model",
    "VerifierDecl": "verifier",
    "PromptDecl": "prompt",
    "StrategyDecl": "strategy",
    "ProgramDecl": "program",
    "BudgetDecl": "budget",
    "Import": "import",
    "AnswerDecl": "answer",
}


class Repl:
    """Handles one input at a time; errors are shown and the session goes on."""

    def __init__(self, out: Console, err: Console, settings: list[str] | None = None):
        self.session = Session(settings)
        self.out, self.err = out, err
        self.last: Result | None = None
        self.failures = 0

    def handle(self, text: str) -> bool:
        """Do what one input says; False when the session should end."""
        from ttcl.cli.present import report_error

        if not text.strip():
            return True
        try:
            if text.strip().startswith(":"):
                return self.command(text.strip()[1:])
            self.show(self.session.submit(text))
        except TTCLError as e:
            self.failures += 1
            report_error(e)
        except KeyboardInterrupt:
            self.err.print("interrupted")
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        name = {"q": "quit", "exit": "quit", "h": "help", "?": "help"}.get(name, name)
        if name not in COMMANDS:
            raise UsageError(f"unknown command `:{name}`; :help lists the commands")
        return getattr(self, f"cmd_{name}")(arg.strip()) is not False

    # ---- what an input did -----------------------------------------------------------------

    def show(self, outcome: Outcome) -> None:
        """A pipeline's type, DAG and cost; a declaration's kind and name (and a strategy's type)."""
        if outcome.kind == "pipeline":
            self.out.print(f"[bold]type:[/] {outcome.stage}")
            if outcome.program is None:
                self.out.print(
                    "[dim]not a program: a program takes the question to an answer; "
                    "end it with a selector such as `|> vote`[/]"
                )
            else:
                self.summary(outcome.program)
            return
        for entry in outcome.entries:
            self.out.print(Text(_described(entry, self.session.checked.strategy_types)))
        if outcome.program is not None:
            self.summary(outcome.program)

    def summary(self, program) -> None:
        """The DAG with each node's estimated cost, and the estimate's totals in a line."""
        from ttcl.cli.present import node_costs
        from ttcl.cost.estimator import short_number
        from ttcl.draw import to_text

        graph = self.session.located(program.graph)
        self.out.print(Text(to_text(graph, node_costs(program)).rstrip()))
        try:
            report = program.cost()
        except TTCLError:
            report = program.cost(flops=False)
        t = report.expected
        flops = f", ~{short_number(t.flops)} FLOPs" if t.flops is not None else ""
        self.out.print(
            f"[bold]estimated cost:[/] {short_number(t.generations)} generations, "
            f"~{short_number(t.tokens)} tokens{flops} per question  [dim](:cost for the table, "
            f":run QUESTION to run it)[/]"
        )

    # ---- commands --------------------------------------------------------------------------

    def cmd_run(self, question: str) -> None:
        from ttcl.cli.present import estimate_or_none
        from ttcl.cli.run import show

        if not question:
            raise UsageError("usage: :run QUESTION")
        program = self.session.program()
        lookup = program.backend_lookup(None)  # refuses spec(...) models, as `ttcl run` does
        progress = Progress(program.name)
        with Live(progress, console=self.err, transient=True, refresh_per_second=8):
            progress.backends = {name: lookup(name) for name in program.ir.models}
            progress.start()
            self.last = program.run(question, backend=progress.backends)
        show(self.last, self.out, estimate_or_none(program))

    def cmd_trace(self, arg: str) -> None:
        if self.last is None:
            raise UsageError("no run yet: `:run QUESTION` first")
        self.out.print(search_tree(self.last))

    def cmd_cost(self, arg: str) -> None:
        from ttcl.cli.cost import show

        show(self.session.program().cost(), self.out)

    def cmd_graph(self, arg: str) -> None:
        from ttcl.draw import FORMATS

        program = self.session.program()
        if arg not in ("", *FORMATS):
            raise UsageError(f"usage: :graph [{'|'.join(FORMATS)}]")
        if arg in ("", "text"):
            return self.summary(program)
        self.out.print(Text(FORMATS[arg](self.session.located(program.graph)).rstrip()))

    def cmd_load(self, path: str) -> None:
        if not path:
            raise UsageError("usage: :load FILE")
        outcome = self.session.load(os.path.expanduser(path))
        names = ", ".join(e.key[1] for e in outcome.entries)
        self.out.print(Text(f"loaded {path}: {names or 'nothing'}"))
        if self.session.current is not None:
            self.out.print(f"current program: {self.session.current.key[1]}")
            self.summary(self.session.program())

    def cmd_model(self, arg: str) -> None:
        models = self.session.models()
        if arg:
            named = next((e for e in models if e.key[1] == arg), None)
            if named is not None:
                self.session.promote(named)
            else:
                self.session.replace(models[0] if models else None, _model_text(models[0] if models else None, arg))
            models = self.session.models()
        if not models:
            self.out.print(
                'model policy = llama("smollm2-135m")  [dim](the default policy; :model NAME|PATH to change it)[/]'
            )
        for i, entry in enumerate(models):
            policy = ("  (the policy)", "dim") if i == 0 else ""
            self.out.print(Text.assemble(printable(" ".join(entry.text.split())), policy))

    def cmd_help(self, arg: str) -> None:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        for name, (args, doc) in COMMANDS.items():
            table.add_row(f":{name} {args}".rstrip(), doc)
        self.out.print(
            "Type a declaration (model, verifier, prompt, strategy, program, import, budget) "
            "or a pipeline such as `sample(4) |> vote`; an unfinished one continues on the next "
            "line (a blank line ends it). Tab completes."
        )
        self.out.print(table)

    def cmd_quit(self, arg: str) -> bool:
        return False


def _described(entry: Entry, strategy_types: dict) -> str:
    kind = _KINDS[type(entry.stmt).__name__]
    if kind in ("budget", "import", "answer"):  # the text as written: from a loaded file, so made printable
        return printable(f"{'imported' if kind == 'import' else kind} {' '.join(entry.text.split()[1:])}")
    shown = f"defined {kind} {entry.key[1]}"
    if kind == "program" and needs_params(cast(ast.ProgramDecl, entry.stmt)):
        shown += " (a parameter has no default: the session runs programs whose parameters all have one)"
    return shown + (f": {strategy_types[entry.key[1]]}" if strategy_types.get(entry.key[1]) else "")


def _model_text(old: Entry | None, path: str) -> str:
    """A model declaration like `old` (the same name, kind and options) for another file or
    known name; a new `model policy = llama(...)` where there is none."""
    from ttcl.backends.models import KNOWN_MODELS

    if path not in KNOWN_MODELS and not Path(path).exists():
        raise UsageError(
            f"no model `{path}`: not a declared model, a known name ({', '.join(KNOWN_MODELS)}) nor a file"
        )
    if old is None:
        return f"model policy = llama({json.dumps(path)})"
    call = cast(ast.Call, cast(ast.ModelDecl, old.stmt).value)  # a checked model is declared by a call
    kind = call.func if call.func in ("llama", "torch") else "llama"
    rest = [old.source[a.span.start : a.span.end] for a in (*call.args[1:], *call.kwargs)] if kind == call.func else []
    return f"model {old.key[1]} = {kind}({', '.join([json.dumps(path), *rest])})"


class Progress:
    """The live line of a run, re-rendered by rich several times a second: batches and tokens
    so far, read from the backends' counters (they count as the model decodes)."""

    def __init__(self, name: str):
        self.name = name
        self.backends: dict = {}
        self.before: dict = {}
        self.began: float | None = None
        self.spinner = Spinner("dots", text=f"loading the models of {name}")

    def start(self) -> None:
        self.before = {n: b.counters.model_copy() for n, b in self.backends.items()}
        self.began = time.perf_counter()

    def __rich__(self) -> Spinner:
        if self.began is not None:
            spent: defaultdict[str, int] = defaultdict(int)
            for n, b in self.backends.items():
                for key in ("batches", "prompt_tokens", "generated_tokens"):
                    spent[key] += getattr(b.counters, key) - getattr(self.before[n], key)
            self.spinner.update(
                text=f"running {self.name}: batch {spent['batches']}, "
                f"{spent['prompt_tokens']} prompt and {spent['generated_tokens']} generated "
                f"tokens, {time.perf_counter() - self.began:.1f} s  (Ctrl-C stops it)"
            )
        return self.spinner


def search_tree(result: Result) -> Tree:
    """The run's candidates as a tree: per node, the steps they share (a beam's common prefix)
    branching where they differ, each step with its first verifier score, each candidate a
    leaf with its answer and score; the chosen one is starred."""
    ops = {e.node: e.op for e in result.trace if e.node is not None}
    status = f" (stopped early: {result.stopped})" if result.stopped else ""
    tree = Tree(Text.assemble(("question: ", "bold"), result.question, (f"  answer: {result.answer}{status}", "bold")))
    chosen = next((c.id for c in result.candidates if c.text == result.text and c.answer == result.answer), None)
    by_node = defaultdict(list)
    for c in result.candidates:
        by_node[c.node].append(c)
    for node, candidates in sorted(by_node.items()):
        branch = tree.add(f"n{node} {ops.get(node, '')}: {len(candidates)} candidate{'s' * (len(candidates) != 1)}")
        steps: dict[tuple, Tree] = {}
        for c in candidates:
            parent = branch
            prefix: tuple[str, ...] = ()
            scores = next(iter(c.scores.values()), [])
            for i, step in enumerate(c.steps):
                prefix += (step,)
                if prefix not in steps:
                    score = f"  [{scores[i]:.2f}]" if i < len(scores) else ""
                    steps[prefix] = parent.add(Text(_short_text(step) + score, style="dim"))
                parent = steps[prefix]
            score = "" if c.score is None else f", score {c.score:.3f}"
            star = ("  ★ chosen", "bold green") if c.id == chosen else ""
            cut = (" (cut short by Ctrl-C)", "yellow") if c.cut else ""
            parent.add(Text.assemble(f"#{c.id} answer {'—' if c.answer is None else c.answer}{score}", cut, star))
    return tree


def _short_text(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the terminal -------------------------------------------------------------------------


def history_path() -> Path:
    """$TTCL_HISTORY, else $XDG_DATA_HOME/ttcl/history, else ~/.local/share/ttcl/history."""
    if os.environ.get("TTCL_HISTORY"):
        return Path(os.environ["TTCL_HISTORY"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "ttcl" / "history"


def repl_command(args, out: Console, err: Console) -> int:
    """`ttcl repl [FILE]`: a prompt on a terminal, else the inputs read from stdin."""
    repl = Repl(out, err, args.set)
    if args.file:
        repl.handle(f":load {args.file}")
    for setting in repl.session.waiting():
        err.print(Text(f"note: --set {setting} waits for a declaration of what it names", style="yellow"))
    if not sys.stdin.isatty():
        return piped(repl, sys.stdin)
    interactive(repl)
    return 0


def piped(repl: Repl, stream) -> int:
    """Inputs from a pipe, each complete statement (or blank-line-ended text) handled in turn;
    exit status 1 if any failed."""
    buffer = ""
    for line in stream:
        buffer += line
        if is_complete(buffer) or not line.strip():
            going = repl.handle(buffer)
            buffer = ""
            if not going:
                break
    else:
        repl.handle(buffer)
    return 1 if repl.failures else 0


def interactive(repl: Repl) -> None:
    """The prompt: multi-line input, persistent history, tab completion."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history: FileHistory | InMemoryHistory = FileHistory(str(path))
    except OSError as e:
        repl.err.print(f"history not saved: {path}: {e.strerror or e}")
        history = InMemoryHistory()
    from ttcl.version import __version__

    repl.out.print(f"TTCL {__version__}: declarations, pipelines and :commands (:help lists them); Ctrl-D quits")
    prompt: PromptSession[str] = PromptSession(
        history=history,
        completer=Completer(repl.session),
        multiline=True,
        key_bindings=_keys(),
        complete_while_typing=False,
        prompt_continuation=lambda width, line, soft: "...".rjust(width - 1) + " ",
    )
    while True:
        try:
            text = prompt.prompt("ttcl> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if not repl.handle(text):
            return


def _keys():
    """Enter submits a whole input (or one ending in a blank line), else starts a new line."""
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("enter")
    def _(event) -> None:
        buffer = event.current_buffer
        if is_complete(buffer.text) or not buffer.document.current_line.strip():
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    return keys


class Completer(BaseCompleter):
    """Tab completion: `:commands` at the start, file names after `:load`, else keywords,
    primitives and the session's names."""

    def __init__(self, session: Session):
        self.session = session
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document, event):
        before = document.text_before_cursor
        load = re.match(r"\s*:load\s+(.*)$", before)
        if load:
            yield from self.paths.get_completions(Document(load.group(1)), event)
            return
        command = re.match(r"\s*:(\w*)$", before)
        word = command.group(1) if command else document.get_word_before_cursor()
        if not command and not re.fullmatch(r"\w*", word):
            return
        for choice in COMMANDS if command else sorted(set(WORDS) | set(self.session.names)):
            if choice.startswith(word) and choice != word:
                yield Completion(choice, start_position=-len(word))
