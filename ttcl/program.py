"""The compile pipeline and the `Program` an app holds.

    source -> parse + imports (loader) -> settings (overrides) -> check -> passes -> lower -> Program

`compile(text)` and `load(path)` are the public entry points; a `.json` path loads a compiled
artifact instead of a source file.

Why one module: it is the library's front door, `compile()` chaining the named steps and
`Program` running what they built; the checks of what an app passes in (questions, seeds,
limits, backends, parameters) sit beside the methods that take them, so the API reads whole.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, cast

import networkx as nx

from ttcl import ast, ir
from ttcl.checker import Checked, check
from ttcl.errors import CheckError, Diagnostic, TTCLError, UsageError
from ttcl.loader import Workspace
from ttcl.loader import load as load_workspace
from ttcl.lower import lower
from ttcl.overrides import SOURCE as SETTINGS
from ttcl.overrides import apply as apply_settings
from ttcl.overrides import setting_lines
from ttcl.parser import parse
from ttcl.passes import PassContext, fold_constants, run_passes
from ttcl.results import Result
from ttcl.source import MAX_ARTIFACT_BYTES, read_source


class Program:
    """A compiled program: its AST (when compiled from source), its IR document and graph."""

    def __init__(self, doc: ir.IRDocument, checked: Checked | None = None):
        self.ir = doc
        self.checked = checked
        self._graph = nx.freeze(ir.to_graph(doc))

    @property
    def name(self) -> str:
        return self.ir.program

    @property
    def ast(self) -> ast.Module | None:
        """The main module's AST; None for a program loaded from a compiled artifact."""
        return self.checked.workspace.main if self.checked else None

    @property
    def graph(self) -> nx.DiGraph:
        """The IR as a frozen networkx DiGraph (see `lower.py` for its attributes)."""
        return self._graph

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.ir.params)

    def bind(self, **params: Any) -> Program:
        """The same program compiled with some parameters changed: `prog.bind(budget=64)`. A
        program loaded from an artifact is compiled again from the sources the artifact carries."""
        checked = self.checked or check_sources(self.ir)
        name = choose_program(checked, self.name)
        return build(checked, name, {**self.params, **params})  # `convert` checks each value

    # ---- running ------------------------------------------------------------------------

    def run(
        self,
        question: str,
        seed: int = 0,
        backend=None,
        answer: str | None = None,
        time_limit: float | None = None,
        thresholds: list[float] | None = None,
    ) -> Result:
        """Run the program on one question. `backend` is a Backend for every model, a dict
        from model name to Backend, or None for the declared models (llama.cpp or torch). `answer` is
        the ground truth, needed only by the `oracle` verifier."""
        _check_question(question, "question")
        answer = _check_answer(answer, "answer")
        return self.run_many([{"question": question, "answer": answer}], seed, backend, time_limit, thresholds)[0]

    def run_many(
        self,
        questions: list,
        seed: int = 0,
        backend=None,
        time_limit: float | None = None,
        thresholds: list[float] | None = None,
        on_result=None,
    ) -> list[Result]:
        """Run many questions together, batching their requests; `questions` are strings or
        dicts with "question" (and optionally "answer"). `on_result(index, result)` is called
        as each question finishes, so callers can save results as they come."""
        from ttcl.backends.base import as_backend
        from ttcl.runtime.executor import Executor, Limits
        from ttcl.runtime.parallel import concurrent_backends, run_concurrently

        pairs = _check_questions(questions)
        seed, time_limit = _check_seed(seed), _check_time_limit(time_limit)
        thresholds = self._check_thresholds(thresholds)
        if on_result is not None and not callable(on_result):
            raise UsageError(f"on_result must be a function on_result(index, result) or None, not {_kind(on_result)}")
        budgets = self.ir.budgets
        limits = Limits(budgets.get("generations"), budgets.get("tokens"), budgets.get("flops"), time_limit)
        lookup = self.backend_lookup(backend)
        served = [lookup(name) for name in self.ir.models] if len(pairs) > 1 else []
        if concurrent_backends(served):  # a server batches for itself: no lockstep batches
            workers = max(as_backend(b).concurrency for b in served)
            return run_concurrently(self._graph, lookup, pairs, seed, limits, workers, thresholds, on_result)
        return Executor(self._graph, lookup, thresholds, on_result).run(pairs, seed, limits)

    async def arun(
        self,
        question: str,
        seed: int = 0,
        backend=None,
        answer: str | None = None,
        time_limit: float | None = None,
        thresholds: list[float] | None = None,
    ) -> Result:
        """`run` in a worker thread, so an asyncio app's event loop is not blocked."""
        import asyncio

        return await asyncio.to_thread(self.run, question, seed, backend, answer, time_limit, thresholds)

    def backend_lookup(self, backend):
        if backend is None:
            from ttcl.backends import backend_for

            specs = [name for name, decl in self.ir.models.items() if decl.get("kind") == "spec"]
            if specs:
                raise UsageError(
                    f"model `{specs[0]}` is a spec(...): numbers for costing, with no weights "
                    "to run; `ttcl cost` prices it, running needs a llama(...) or torch(...) "
                    "model or a backend"
                )
            return lambda name: backend_for(self.ir.models[name])
        if isinstance(backend, Mapping):
            missing = set(self.ir.models) - set(backend)
            if missing:
                raise UsageError(f"no backend given for model(s) {', '.join(sorted(missing))}")
            for name in self.ir.models:
                _check_backend(backend[name], f"backend[{name!r}]")
            return backend.__getitem__
        _check_backend(backend, "backend")
        return lambda name: backend

    def _check_thresholds(self, thresholds) -> list[float] | None:
        """The run's difficulty thresholds: ascending numbers in [0, 1], as many as each
        `difficulty` without thresholds of its own has bins, less one."""
        if thresholds is None:
            return None
        if isinstance(thresholds, (str, bytes, Mapping)) or not isinstance(thresholds, Sequence):
            raise UsageError(f"thresholds must be a list of numbers in [0, 1] or None, not {_kind(thresholds)}")
        cuts = []
        for t in thresholds:
            try:
                cut = math.nan if isinstance(t, bool) or not isinstance(t, numbers.Real) else float(t)
            except OverflowError:
                cut = math.inf
            if not 0 <= cut <= 1:  # NaN too
                raise UsageError(f"thresholds must be numbers in [0, 1]; got {_kind(t)}")
            cuts.append(cut)
        if cuts != sorted(cuts):
            raise UsageError(f"thresholds must be in ascending order; got {cuts}")
        for _, attrs in self._graph.nodes(data=True):
            params = attrs.get("params") or {}
            if attrs.get("op") == "difficulty" and not params.get("thresholds"):
                bins = params.get("bins", 5)
                if len(cuts) != bins - 1:
                    raise UsageError(
                        f"thresholds holds {len(cuts)} number{'s' * (len(cuts) != 1)}, but this program's "
                        f"difficulty has {bins} bins, which {bins - 1} thresholds cut"
                    )
        return cuts

    # ---- costing ------------------------------------------------------------------------

    def cost(
        self,
        model: str | None = None,
        calibration=None,
        vs_params: float | None = None,
        ratio: float | None = None,
        flops: bool = True,
    ):
        """The static cost estimate (a pydantic `CostReport`): tokens and FLOPs per node and in
        total, expected and worst case. `model` prices every model as another one: a model
        declared in the file (a `spec(...)` for what-if questions), a known name such as
        "smollm2-135m", a GGUF file or a transformers config directory. `calibration` is a
        `Calibration` or the path of a calibration file. With `vs_params` and `ratio`, the report
        holds the paper's exchange against a model of that many parameters."""
        from ttcl.cost.estimator import Calibration, estimate, with_exchange

        if isinstance(calibration, (str, Path)):
            calibration = Calibration.load(calibration)
        facts = None
        if model is not None:
            one = self._model_facts(model)
            facts = {name: one for name in self.ir.models}
        report = estimate(self._graph, calibration, facts, with_flops=flops)
        if vs_params is not None:
            report = with_exchange(report, vs_params, 0.79 if ratio is None else ratio)
        return report

    def _model_facts(self, model: str):
        from ttcl.backends.models import facts_for, facts_from_path

        decl = self.ir.models.get(model)
        if decl is None and self.checked is not None and isinstance(self.checked.definitions.get(model), ast.ModelDecl):
            decl = declared_model(self.checked, model)
        return facts_for(decl, model) if decl is not None else facts_from_path(model)

    def to_json(self) -> str:
        """The compiled artifact (JSON with a checksum), loadable with `ttcl.load`."""
        return ir.dumps(self.ir)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def __repr__(self) -> str:
        return f"<Program {self.name}: {len(self._graph)} nodes, {self.ir.generations} generations>"


def compile(
    text: str,
    path: str | None = None,
    program: str | None = None,
    params: dict[str, Any] | None = None,
    settings: Sequence[str] | Mapping[str, Any] | None = None,
) -> Program:
    """Compile source text into a `Program` (`main`, or the only program, unless named).

    `settings` change the file's declarations before they are checked, as `--set` does: a
    list of "NAME.OPTION=VALUE" strings (`["policy.max_tokens=64", "prm.agg=min"]`) or a dict
    (`{"policy.max_tokens": 64}`); see `ttcl.overrides`.
    Raises `TTCLError` (with spans) for any mistake in the text, the settings or the parameters.
    """
    if not isinstance(text, str):
        hint = " (decode it first)" if isinstance(text, (bytes, bytearray)) else ""
        raise UsageError(f"compile takes the program's source text as a str, not {_kind(text)}{hint}")
    if path is not None and not isinstance(path, str):
        raise UsageError(f"path must be a str (the file name errors show) or None, not {_kind(path)}")
    _check_program_args(program, params)
    checked = check_source(text, path, settings)
    return build(checked, choose_program(checked, program), params or {})


def load(
    path: str | Path,
    program: str | None = None,
    params: dict[str, Any] | None = None,
    settings: Sequence[str] | Mapping[str, Any] | None = None,
) -> Program:
    """Load a `.ttcl` source file, or a compiled `.json` artifact, as a `Program` (`params`
    bind an artifact's again, as `Program.bind` does; `settings`: as `compile` takes them, a
    source file's only)."""
    if not isinstance(path, (str, PathLike)):
        raise UsageError(f"load takes a file path (str or pathlib.Path), not {_kind(path)}")
    _check_program_args(program, params)
    path = str(path)
    if path.endswith(".json"):
        if setting_lines(settings):
            raise UsageError(
                f"{path} is a compiled artifact, whose declarations are fixed: --set (settings) changes a "
                "source file's, before it is checked; compile the source again with them"
            )
        loaded = Program(ir.loads(read_source(path, MAX_ARTIFACT_BYTES, "compiled programs"), path))
        if program not in (None, loaded.name):
            raise UsageError(f"{path} is a compiled artifact of one program, `{loaded.name}`, not `{program}`")
        return loaded.bind(**params) if params else loaded
    return compile(read_source(path), path, program, params, settings)


def check_source(
    text: str,
    path: str | None = None,
    settings: Sequence[str] | Mapping[str, Any] | None = None,
    later: bool = False,
) -> Checked:
    """Parse, resolve imports, apply the settings and check; raise `TTCLError` listing every
    problem found. `later`: a setting may name what the text does not declare (yet), as in a
    session (`overrides.apply`)."""
    return _check(apply_settings(load_workspace(text, path), settings, later))


def _check(ws: Workspace) -> Checked:
    try:
        return check(ws)
    except RecursionError:
        raise CheckError("program is nested too deeply", ws.main.span).with_sources(ws.sources) from None


def check_sources(doc: ir.IRDocument) -> Checked:
    """Check again the sources an artifact carries, as `check_source` checked them when it was
    compiled: each file parsed as it was loaded (they hold every import, so no file is read),
    and the settings applied."""
    sources = {path: text for path, text in doc.sources.items() if path != SETTINGS}
    if not sources:
        raise UsageError(
            f"this compiled artifact of `{doc.program}` was written by an older TTCL, without its source, so its "
            "parameters are fixed; compile the program from source to change them"
        )
    modules = [parse(text, None if path == "<input>" else path) for path, text in sources.items()]
    return _check(apply_settings(Workspace(modules, sources), doc.sources.get(SETTINGS, "").splitlines()))


def check_programs(checked: Checked) -> list[Program]:
    """Compile every program of the main module with its default parameters, collecting all
    errors (what `ttcl check` does after the checker itself)."""
    programs, errors = [], []
    for decl in checked.programs:
        if any(p.default is None for p in decl.params or ()):
            continue  # needs parameters from the caller; its types were checked already
        try:
            programs.append(build(checked, decl.name, {}))
        except TTCLError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise CheckError(errors, sources=checked.workspace.sources)
    return programs


def choose_program(checked: Checked, name: str | None) -> str:
    names = [p.name for p in checked.programs]
    if name is not None:
        if name not in names:
            raise UsageError(f"no program `{name}`; this file defines: {', '.join(names) or 'none'}")
        return name
    if "main" in names or len(names) == 1:
        return "main" if "main" in names else names[0]
    if not names:
        raise UsageError("this file defines no program (only definitions to import)")
    raise UsageError(
        f"this file defines several programs ({', '.join(names)}); choose one "
        "(--program NAME, or program=... in Python)"
    )


def build(checked: Checked, name: str, params: dict[str, Any]) -> Program:
    """Rewrite and lower one program with its parameters bound."""
    decl = checked.definitions[name]
    assert isinstance(decl, ast.ProgramDecl)  # build is given program names only
    sources = checked.workspace.sources
    try:
        values = bind_params(decl, params)
        bindings = {k: _literal(v, decl.span) for k, v in values.items()}
        body = run_passes(decl.body, PassContext(checked.definitions, bindings))
        graph = lower(body, decl, checked, module_budgets(checked, decl))
        check_budget(graph, decl)
    except RecursionError:
        raise CheckError(f"program `{name}` is nested too deeply", decl.name_span).with_sources(sources) from None
    except TTCLError as e:
        raise _settings_located(e).with_sources(sources) from None
    return Program(ir.to_document(graph, values, checked.workspace.sources), checked)


def _settings_located(e: TTCLError) -> TTCLError:
    """`e` without the "in strategy ... called at" notes on errors in a `--set` value: a model
    is lowered where a stage first uses it, which may be inside a strategy, and that place says
    nothing about the setting (the same value written in the file gets no such note)."""
    e.diagnostics = [
        dataclasses.replace(d, notes=tuple(n for n in d.notes if not n.startswith("in strategy `")))
        if d.span is not None and d.span.path == SETTINGS
        else d
        for d in e.diagnostics
    ]
    return e


def check_budget(graph: nx.DiGraph, decl: ast.ProgramDecl) -> None:
    """Refuse a program whose estimated tokens or FLOPs exceed its declared budget (the
    generations budget is counted exactly by `lower`)."""
    from ttcl.cost.estimator import budget_diagnostics

    errors = budget_diagnostics(graph, graph.graph["budgets"], decl.name_span)
    if errors:
        raise CheckError(errors)


def bind_params(decl: ast.ProgramDecl, given: dict[str, Any]) -> dict[str, Any]:
    """The program's parameter values: given ones (converted from text when needed) over defaults."""
    declared = {p.name: p for p in decl.params or ()}
    unknown = [k for k in given if k not in declared]
    if unknown:
        raise UsageError(
            f"program `{decl.name}` has no parameter `{unknown[0]}`; its parameters: {', '.join(declared) or 'none'}"
        )
    values = {}
    for p in declared.values():
        if p.name in given:
            values[p.name] = convert(given[p.name], p.type, p.name)
        elif p.default is not None:
            folded = fold_constants(p.default, PassContext({}))
            values[p.name] = convert(getattr(folded, "value", None), p.type, p.name)
        else:
            raise UsageError(f"program `{decl.name}` needs a value for `{p.name}` ({p.type})")
    return values


def convert(value: Any, type_: str, name: str) -> Any:
    """A parameter value of the declared type; text from the command line is parsed. A float
    must be finite: NaN and infinities are refused, as any other wrong value is."""
    try:
        if type_ == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if type_ == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
            raise TypeError  # True is not 1, and None or a list is no number
        if type_ == "int":
            if isinstance(value, numbers.Integral):
                return int(value)
            if isinstance(value, str):
                return int(value)
            raise ValueError  # a float, even 3.0: an int parameter takes whole numbers as written
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (ValueError, TypeError, OverflowError):
        finite = " (a finite number)" if type_ == "float" else ""
        raise UsageError(f"parameter `{name}` must be {type_}{finite}, got {_short(value)}") from None


# ---- checking the arguments of the API ------------------------------------------------------


def _short(value: Any) -> str:
    """A value for a message: its repr, cut short."""
    try:
        text = repr(value)
    except Exception:  # a huge int, or a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    """What a wrong argument is, for a message: `None`, `123 (int)`, `a list`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return f"{_short(value)} ({type(value).__name__})" if value is not None else "None"
    return f"a {type(value).__name__}"


def _check_program_args(program: Any, params: Any) -> None:
    if program is not None and not isinstance(program, str):
        raise UsageError(f"program must be the name of a program (a str) or None, not {_kind(program)}")
    if params is not None and not (isinstance(params, Mapping) and all(isinstance(k, str) for k in params)):
        raise UsageError(f"params must be a dict from parameter names to values, or None, not {_kind(params)}")


def _check_question(question: Any, where: str) -> str:
    if not isinstance(question, str):
        raise UsageError(f"{where} must be a str (the question's text), not {_kind(question)}")
    if not question.strip():  # a program would spend its whole budget answering nothing
        raise UsageError(f"{where} is empty: a question needs some text")
    return question


def _check_answer(answer: Any, where: str) -> str | None:
    """The ground truth: text, or a number (as a dataset file may hold it), or None."""
    if answer is None or isinstance(answer, str):
        return answer
    if isinstance(answer, numbers.Real) and not isinstance(answer, bool):
        try:
            if isinstance(answer, numbers.Integral):
                return str(int(answer))
            if math.isfinite(float(answer)):
                return repr(float(answer))
        except (ValueError, OverflowError):  # past Python's int-to-text limit, or a float's range
            pass
    raise UsageError(f"{where} must be the ground truth as a str (or a finite number) or None, not {_kind(answer)}")


def _check_questions(questions: Any) -> list[tuple[str, str | None]]:
    """`run_many`'s questions as (question, answer) pairs: a list of strings, or of dicts with
    a "question" string and optionally an "answer"."""
    if isinstance(questions, (str, bytes, Mapping)) or not isinstance(questions, Sequence):
        hint = " (for one question, use run)" if isinstance(questions, (str, Mapping)) else ""
        raise UsageError(
            f'questions must be a list of question strings or of dicts with a "question", not {_kind(questions)}{hint}'
        )
    pairs: list[tuple[str, str | None]] = []
    for i, q in enumerate(questions):
        if isinstance(q, str):
            pairs.append((_check_question(q, f"questions[{i}]"), None))
        elif isinstance(q, Mapping):
            if "question" not in q:
                raise UsageError(f'questions[{i}] is a dict without a "question"; its keys: {_short(list(q))}')
            pairs.append(
                (
                    _check_question(q["question"], f'questions[{i}]["question"]'),
                    _check_answer(q.get("answer"), f'questions[{i}]["answer"]'),
                )
            )
        else:
            raise UsageError(f'questions[{i}] must be a str or a dict with a "question", not {_kind(q)}')
    return pairs


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UsageError(f"seed must be an int, not {_kind(seed)}")
    return int(seed)


def _check_time_limit(limit: Any) -> float | None:
    if limit is None:
        return None
    try:
        seconds = math.nan if isinstance(limit, bool) or not isinstance(limit, numbers.Real) else float(limit)
    except OverflowError:
        seconds = math.inf
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"time_limit must be a positive number of seconds or None, not {_kind(limit)}")
    return seconds


def _check_backend(backend: Any, where: str) -> None:
    """A `Backend`, or an object with its bare bones (`name`, `counters`, `generate`)."""
    from ttcl.backends.base import Backend

    if isinstance(backend, Backend):
        return
    lacks = [a for a in ("name", "counters", "generate") if not hasattr(backend, a)]
    if lacks or not callable(backend.generate):
        raise UsageError(
            f"{where} must be a Backend (or an object with name, counters and generate(requests)), "
            f"a dict from model name to one, or None; got {_kind(backend)}"
        )


def _literal(value: Any, span) -> ast.Expr:
    kind = {bool: ast.Bool, int: ast.Int, float: ast.Float, str: ast.Str}[type(value)]
    return kind(span=span, value=value)


def declared_model(checked: Checked, name: str) -> dict:
    """A model declaration's values, as the IR would hold them, though no stage uses it."""
    from ttcl.lower import Lowering

    # a model's values need no program: a file of declarations alone lowers with none
    lowering = Lowering(checked, cast(ast.ProgramDecl, checked.programs[0] if checked.programs else None))
    lowering.graph.graph.update(models={}, verifiers={}, prompts={})
    return lowering.graph.graph["models"][lowering.declare_model(name)]


def module_budgets(checked: Checked, decl: ast.ProgramDecl) -> dict[str, float]:
    """The budgets declared in the program's own file, as numbers."""
    budgets = {}
    for unit, b in checked.budgets.get(decl.span.path, {}).items():
        amount = fold_constants(b.amount, PassContext({}))
        if not isinstance(amount, (ast.Int, ast.Float)):
            raise CheckError("a budget must be a constant number", b.amount.span)
        budgets[unit] = amount.value
    return budgets


__all__ = ["Program", "compile", "load", "check_source", "check_programs", "Diagnostic"]
