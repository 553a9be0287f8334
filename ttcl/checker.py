"""Checker: names, arity, argument and stage types, duplicates, recursion, bins, budgets.

It reports every error it finds, not only the first. Types are inferred bottom-up: a literal
is `int`/`float`/`str`/`bool`, a declaration is a `model`/`verifier`/`prompt`, and a stage is
a `Stage(accepts, returns)` over `Question`, `Pool` and `Answer`. Errors suppress their
cascades: an expression whose type could not be inferred is `None` and is not complained
about again.

Why one module: the checker is one pass over the declarations with one environment of
names and types; its rules (names, arity, argument and stage types, bins, budgets) read and
write that environment, and splitting them would pass it around for no reader's gain.
"""

from __future__ import annotations

import difflib
import operator
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import networkx as nx

from ttcl import ast
from ttcl.errors import CheckError, Diagnostic
from ttcl.loader import Workspace
from ttcl.signatures import (
    ANSWER,
    ANSWERS,
    BUILTIN_VERIFIERS,
    DIFFICULTY,
    GENERATOR_OPTIONS,
    MAX_BINS,
    MODELS,
    POOL,
    QUESTION,
    REQUIRED,
    RESERVED,
    SCALARS,
    STAGES,
    VALUE_TYPES,
    VERIFIERS,
    Param,
    Signature,
    Stage,
    Type,
    assignable,
    describe,
)

BUDGET_UNITS = ("generations", "tokens", "flops")
PROMPT_HOLES = ("question", "attempts")
_DECL_TYPES = {ast.ModelDecl: "model", ast.VerifierDecl: "verifier", ast.PromptDecl: "prompt"}


@dataclass
class Checked:
    """What the later stages need: every definition by name, and each module's budgets."""

    workspace: Workspace
    definitions: dict[str, ast.Definition] = field(default_factory=dict)
    budgets: dict[str | None, dict[str, ast.BudgetDecl]] = field(default_factory=dict)
    strategy_types: dict[str, Stage | None] = field(default_factory=dict)
    answer: ast.AnswerDecl | None = None  # the main file's `answer` declaration

    @property
    def programs(self) -> list[ast.ProgramDecl]:
        """The programs of the main module, in source order."""
        return [s for s in self.workspace.main.statements if isinstance(s, ast.ProgramDecl)]


def check(ws: Workspace) -> Checked:
    """Check a loaded workspace; raise `CheckError` with every diagnostic if anything is wrong."""
    checker = Checker(ws)
    checked = checker.run()
    if checker.errors:
        raise CheckError(sort_diagnostics(checker.errors, ws), sources=ws.sources)
    return checked


def sort_diagnostics(diagnostics: list[Diagnostic], ws: Workspace) -> list[Diagnostic]:
    """Diagnostics in reading order: main file first, then imports, each by position."""
    order = {m.path: i for i, m in enumerate(ws.modules)}

    def key(d: Diagnostic):
        return (order.get(d.span.path, -1), d.span.start) if d.span else (-2, 0)

    return sorted(diagnostics, key=key)


class Checker:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self.errors: list[Diagnostic] = list(ws.errors)
        self.out = Checked(ws)
        self.calls = nx.DiGraph()  # strategy -> strategies it calls, to find recursion
        self.in_progress: set[str] = set()
        self.current: str | None = None  # the strategy whose body is being inferred

    def error(self, span, message: str, *notes: str) -> None:
        self.errors.append(Diagnostic(message, span, tuple(notes)))

    def snippet(self, node: ast.Node, limit: int = 40) -> str:
        """The source text of a node, shortened, for messages like "`vote` gives an Answer"."""
        text = self.ws.sources.get(node.span.path or "<input>", "")[node.span.start : node.span.end]
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    # ---- driver --------------------------------------------------------------------------

    def run(self) -> Checked:
        # Imported definitions are declared first, as their `import` lines come first: a
        # clash is then reported in the file that brought it.
        for module in self.ws.modules[1:] + self.ws.modules[:1]:
            for stmt in module.statements:
                self.declare(stmt, module)
        # Each strategy is typed after those it calls, so typing one never recurses through a
        # chain of others (a chain of hundreds would overflow Python's stack).
        for name in strategy_order(self.out.definitions):
            self.strategy_type(name)
        for module in self.ws.modules:
            for stmt in module.statements:
                getattr(self, f"check_{type(stmt).__name__}")(stmt)
        # One cycle per group of strategies that call each other (not every cycle: a dozen
        # strategies calling one another make billions), the shortest through the first name.
        groups = [
            g
            for g in nx.strongly_connected_components(self.calls)
            if len(g) > 1 or any(self.calls.has_edge(n, n) for n in g)
        ]
        for group in sorted(groups, key=sorted):
            first, calls = min(group), self.calls.subgraph(group)
            path = [first] + min((nx.shortest_path(calls, s, first) for s in calls.successors(first)), key=len)
            if len(path) > 12:  # a long cycle: its ends, and how many it goes through
                path = path[:5] + [f"... ({len(path) - 1} strategies) ..."] + path[-3:]
            self.error(
                self.out.definitions[first].name_span,
                f"strategy `{first}` is recursive: {' -> '.join(path)}",
                "strategies are expanded at compile time, so they cannot call themselves",
            )
        return self.out

    def declare(self, stmt: ast.Statement, module: ast.Module) -> None:
        if isinstance(stmt, ast.BudgetDecl):
            budgets = self.out.budgets.setdefault(module.path, {})
            if stmt.unit in budgets:
                self.error(
                    stmt.span, f"duplicate budget in {stmt.unit}", f"first declared at {budgets[stmt.unit].span}"
                )
            budgets[stmt.unit] = stmt
            return
        if isinstance(stmt, ast.Import):
            return
        if isinstance(stmt, ast.AnswerDecl):
            self.declare_answer(stmt, module)
            return
        defs = self.out.definitions
        if stmt.name in RESERVED:
            self.error(stmt.name_span, f"`{stmt.name}` is a built-in name; choose another name")
        elif stmt.name in defs:
            self.error(
                stmt.name_span,
                f"duplicate definition of `{stmt.name}`",
                f"first defined at {defs[stmt.name].name_span}",
            )
        else:
            defs[stmt.name] = stmt

    def declare_answer(self, stmt: ast.AnswerDecl, module: ast.Module) -> None:
        # One task per program: the file that runs says how its answers are read, so a
        # module imported for its strategies cannot change that behind its back.
        if module is not self.ws.main:
            self.error(stmt.span, "an `answer` declaration belongs in the main file, not in an imported module")
        elif self.out.answer is not None:
            self.error(stmt.span, "duplicate `answer` declaration", f"first declared at {self.out.answer.span}")
        else:
            self.out.answer = stmt

    # ---- statements ----------------------------------------------------------------------

    def check_Import(self, stmt: ast.Import) -> None:
        pass  # resolved by the loader

    def check_BudgetDecl(self, stmt: ast.BudgetDecl) -> None:
        if stmt.unit not in BUDGET_UNITS:
            self.error(
                stmt.unit_span,
                f"unknown budget unit `{stmt.unit}`{self.suggest(stmt.unit, BUDGET_UNITS)}",
                "units: generations, tokens, flops",
            )
        t = self.infer(stmt.amount, {})
        if t is not None and t not in ("int", "float"):
            self.error(stmt.amount.span, f"a budget is a number, not {describe(t)}")
        elif t is not None and (amount := constant(stmt.amount)) is not None and amount <= 0:
            self.error(stmt.amount.span, "a budget must be positive")

    def check_ModelDecl(self, stmt: ast.ModelDecl) -> None:
        self.check_constructor(stmt.value, MODELS, "model")

    def check_VerifierDecl(self, stmt: ast.VerifierDecl) -> None:
        if isinstance(stmt.value, ast.Name):
            t = self.infer(stmt.value, {})
            if t is not None and t != "verifier":
                self.error(
                    stmt.value.span,
                    f"a verifier is made by {self.constructors(VERIFIERS)} "
                    f"or names another verifier; `{stmt.value.id}` is {describe(t)}",
                )
            return
        self.check_constructor(stmt.value, VERIFIERS, "verifier")

    def check_PromptDecl(self, stmt: ast.PromptDecl) -> None:
        try:
            holes = [f for _, f, _, _ in string.Formatter().parse(stmt.template) if f is not None]
        except ValueError as e:
            self.error(
                stmt.span, f"prompt `{stmt.name}` is not a valid template: {e}", "write {{ and }} for literal braces"
            )
            return
        for hole in holes:
            if hole not in PROMPT_HOLES:
                self.error(
                    stmt.span,
                    f"prompt `{stmt.name}` has an unknown hole {{{hole}}}{self.suggest(hole, PROMPT_HOLES)}",
                    "holes: {question}, {attempts}",
                )
        if "question" not in holes:
            self.error(
                stmt.span, f"prompt `{stmt.name}` has no {{question}} hole, so the question would never reach the model"
            )

    def check_AnswerDecl(self, stmt: ast.AnswerDecl) -> None:
        value = stmt.value
        if isinstance(value, ast.Name) and value.id in ANSWERS:  # `answer math`: no arguments
            value = ast.Call(span=value.span, func=value.id)
        self.check_constructor(value, ANSWERS, "answer")
        pattern = next((a for a in getattr(value, "args", ())[:1] if isinstance(a, ast.Str)), None)
        pattern = pattern or next((k.value for k in getattr(value, "kwargs", ()) if k.name == "pattern"), None)
        if isinstance(value, ast.Call) and value.func == "regex" and isinstance(pattern, ast.Str):
            try:
                groups = re.compile(pattern.value).groups
            except re.error as e:
                self.error(pattern.span, f"not a valid regular expression: {e}")
            else:
                if groups > 1:
                    self.error(
                        pattern.span,
                        f"the pattern has {groups} groups; the answer is its first group, so give it at most one",
                        "make the others non-capturing: (?:...)",
                    )

    def check_StrategyDecl(self, stmt: ast.StrategyDecl) -> None:
        if self.out.definitions.get(stmt.name) is stmt:
            self.strategy_type(stmt.name)
        else:  # a refused duplicate or reserved name: its body still deserves a check
            self.infer(stmt.body, self.params_env(stmt.params or (), VALUE_TYPES, "strategy"))

    def check_ProgramDecl(self, stmt: ast.ProgramDecl) -> None:
        env = self.params_env(stmt.params or (), SCALARS, "program")
        t = self.infer(stmt.body, env)
        if t is None:
            return
        if not isinstance(t, Stage):
            self.error(stmt.body.span, f"a program is a stage, but this is {describe(t)}")
        elif QUESTION not in t.accepts:
            self.error(
                stmt.body.span,
                f"program `{stmt.name}` must start from the question, "
                f"but `{self.snippet(stmt.body)}` expects {' or '.join(sorted(t.accepts))}",
            )
        elif t.returns != ANSWER:
            self.error(
                stmt.body.span,
                f"program `{stmt.name}` gives a {t.returns}, not an Answer",
                "end it with a selector such as `|> vote` or `|> best(v)`",
            )

    def params_env(self, params: tuple[ast.Param, ...], allowed: tuple[str, ...], what: str) -> dict[str, str | None]:
        env: dict[str, str | None] = {}  # None: a parameter of an unknown type (reported)
        for p in params:
            if p.name in env:
                self.error(p.span, f"duplicate parameter `{p.name}`")
            if p.type not in allowed:
                self.error(
                    p.span,
                    f"unknown {what} parameter type `{p.type}`{self.suggest(p.type, allowed)}",
                    f"types: {', '.join(allowed)}",
                )
                env[p.name] = None
                continue
            env[p.name] = p.type
            if p.default is not None:
                t = self.infer(p.default, {})
                if t is not None and not assignable(t, p.type):
                    self.error(p.default.span, f"default of `{p.name}` must be {describe(p.type)}, not {describe(t)}")
        return env

    def strategy_type(self, name: str) -> Stage | None:
        """The stage type of a strategy's body, inferred once with its declared parameter types.

        Strategies are typed callees first (`run`), so typing one rarely types another; only
        in a cycle (reported as recursion) could it go deep, and there it stops after a few."""
        if name in self.out.strategy_types or name in self.in_progress or len(self.in_progress) >= 32:
            return self.out.strategy_types.get(name)
        decl = self.out.definitions[name]
        assert isinstance(decl, ast.StrategyDecl)  # only strategies are asked for
        self.in_progress.add(name)
        outer, self.current = self.current, name
        self.calls.add_node(name)
        env = self.params_env(decl.params or (), VALUE_TYPES, "strategy")
        t = self.infer(decl.body, env)
        self.current = outer
        self.in_progress.discard(name)
        if t is not None and not isinstance(t, Stage):
            self.error(decl.body.span, f"a strategy is a stage, but this is {describe(t)}")
            t = None
        self.out.strategy_types[name] = t
        return t

    # ---- constructors (model and verifier declarations) ----------------------------------

    def constructors(self, table: dict[str, Signature]) -> str:
        return ", ".join(f"`{n}(...)`" for n in table)

    def check_constructor(self, value: ast.Expr, table: dict[str, Signature], what: str) -> None:
        if not isinstance(value, ast.Call) or value.func not in table:
            name = value.func if isinstance(value, ast.Call) else self.snippet(value)
            a = "an" if what[0] in "aeiou" else "a"
            self.error(
                value.span,
                f"`{name}` does not make {a} {what}{self.suggest(name, table)}",
                f"{a} {what} is made by {self.constructors(table)}",
            )
            return
        self.bind(table[value.func], value, {})

    # ---- expressions ---------------------------------------------------------------------

    def infer(self, expr: ast.Expr, env: dict[str, str | None]) -> Type | None:
        return getattr(self, f"infer_{type(expr).__name__}")(expr, env)

    def infer_Int(self, e, env):
        return "int"

    def infer_Float(self, e, env):
        return "float"

    def infer_Str(self, e, env):
        return "str"

    def infer_Bool(self, e, env):
        return "bool"

    def infer_List(self, e: ast.List, env):
        """A list of numbers: `list[int]` if every item is an int (an empty list too), else
        `list[float]`. Only numbers, as thresholds are the one list-valued argument."""
        types = [self.infer(item, env) for item in e.items]
        for item, t in zip(e.items, types):
            if t is not None and t not in ("int", "float"):
                self.error(item.span, f"a list holds numbers, not {describe(t)}")
                return None
        if None in types:
            return None
        return "list[int]" if all(t == "int" for t in types) else "list[float]"

    def infer_Name(self, e: ast.Name, env):
        if e.id in env:
            return env[e.id]
        decl = self.out.definitions.get(e.id)
        if decl is not None and type(decl) in _DECL_TYPES:
            return _DECL_TYPES[type(decl)]
        if e.id in BUILTIN_VERIFIERS:
            return "verifier"
        if decl is not None or e.id in STAGES:
            return self.infer_Call(ast.Call(span=e.span, func=e.id), env)
        return self.unknown(e.id, e.span, env)

    def infer_Call(self, e: ast.Call, env):
        decl = self.out.definitions.get(e.func)
        if e.func in STAGES:
            self.bind(STAGES[e.func], e, env)
            return STAGES[e.func].stage
        if isinstance(decl, ast.StrategyDecl):
            if self.current is not None:
                self.calls.add_edge(self.current, e.func)
            self.bind(strategy_signature(decl), e, env)
            return self.strategy_type(e.func)
        if isinstance(decl, ast.ProgramDecl):
            self.error(
                e.span,
                f"`{e.func}` is a program; a program cannot be used as a stage",
                "turn it into a `strategy` to reuse it",
            )
            return None
        if e.func in MODELS or e.func in VERIFIERS:
            kind = "model" if e.func in MODELS else "verifier"
            self.error(
                e.span, f"`{e.func}(...)` makes a {kind}, not a stage; declare it with `{kind} name = {e.func}(...)`"
            )
            return None
        if e.func == "difficulty":
            self.error(e.span, "`difficulty(...)` is only valid as the head of a `match`")
            return None
        if e.func in env or decl is not None or e.func in BUILTIN_VERIFIERS:
            t = env.get(e.func) or (_DECL_TYPES.get(type(decl)) if decl else "verifier")
            # strategies and programs were handled above: any other declaration has a type name
            self.error(e.span, f"`{e.func}` is {describe(cast(str, t))}, not a stage")
            return None
        return self.unknown(e.func, e.span, env)

    def unknown(self, name: str, span, env) -> None:
        known = list(env) + list(self.out.definitions) + sorted(RESERVED)
        self.error(span, f"unknown name `{name}`{self.suggest(name, known)}")
        return None

    def suggest(self, name: str, known) -> str:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        return f"; did you mean `{close[0]}`?" if close else ""

    def infer_Neg(self, e: ast.Neg, env):
        t = self.infer(e.operand, env)
        if t is not None and t not in ("int", "float"):
            self.error(e.span, f"cannot negate {describe(t)}")
            return None
        return t

    def infer_BinOp(self, e: ast.BinOp, env):
        left, right = self.infer(e.left, env), self.infer(e.right, env)
        if left is None or right is None:
            return None
        return getattr(self, _BINOPS[e.op])(e, left, right)

    def pipe(self, e: ast.BinOp, left: Type, right: Type):
        for side, t in ((e.left, left), (e.right, right)):
            if not isinstance(t, Stage):
                self.error(side.span, f"`|>` joins stages, but `{self.snippet(side)}` is {describe(t)}")
                return None
        assert isinstance(left, Stage) and isinstance(right, Stage)  # both checked just above
        if left.returns not in right.accepts:
            wants = " or ".join(f"a {a}" for a in sorted(right.accepts, key=[QUESTION, POOL].index))
            self.error(
                e.right.span,
                f"`{self.snippet(e.right)}` expects {wants}, "
                f"but `{self.snippet(e.left)}` gives {describe(left.returns)}",
            )
            return None
        return Stage(left.accepts, right.returns)

    def add(self, e: ast.BinOp, left: Type, right: Type):
        if isinstance(left, Stage) and isinstance(right, Stage):
            accepts = left.accepts & right.accepts
            if not accepts:
                self.error(
                    e.span,
                    f"`+` runs both sides on the same input, but `{self.snippet(e.left)}` "
                    f"takes {' or '.join(sorted(left.accepts))} and `{self.snippet(e.right)}` "
                    f"takes {' or '.join(sorted(right.accepts))}",
                )
                return None
            return Stage(accepts, POOL)
        return self.arithmetic(e, left, right)

    def mul(self, e: ast.BinOp, left: Type, right: Type):
        stage, count = (left, e.right) if isinstance(left, Stage) else (right, e.left)
        if isinstance(stage, Stage):
            count_t = right if stage is left else left
            if count_t != "int":
                self.error(count.span, f"a stage is repeated a whole number of times, not {describe(count_t)}")
                return None
            return Stage(stage.accepts, POOL)
        return self.arithmetic(e, left, right)

    def arithmetic(self, e: ast.BinOp, left: Type, right: Type):
        if left in ("int", "float") and right in ("int", "float"):
            return "int" if left == right == "int" else "float"
        self.error(e.span, f"cannot apply `{e.op}` to {describe(left)} and {describe(right)}")
        return None

    def infer_Match(self, e: ast.Match, env):
        head = e.head
        if head.func != "difficulty":
            self.error(head.span, f"`match` takes `difficulty(...)`, not `{head.func}(...)`")
            return None
        args = self.bind(DIFFICULTY, head, env)
        bins = self.match_bins(args)
        if bins is not None:
            cuts = args.get("thresholds")
            self.check_arms(e, bins, (f"{bins - 1} thresholds make {bins} bins",) if cuts is not None else ())
        types = [(arm, self.infer(arm.body, env)) for arm in e.arms]
        returns = set()
        for arm, t in types:
            if t is None:
                continue
            if not isinstance(t, Stage) or QUESTION not in t.accepts:
                self.error(arm.body.span, f"a match arm is a stage that takes the question, not {describe(t)}")
            else:
                returns.add(t.returns)
        if len(returns) > 1:
            self.error(e.span, "match arms disagree: some give a Pool and some an Answer")
            return None
        return Stage(frozenset({QUESTION}), returns.pop()) if returns else None

    def match_bins(self, args: dict[str, ast.Expr]) -> int | None:
        """How many bins a `difficulty(...)` head makes: `bins`, else one more than its
        `thresholds`, else 5. Both are literals, so the arms' coverage can be checked; None
        (arms unchecked) where they are wrong. Threshold values are checked in lowering, once
        parameters are bound and constants folded, like every other argument's limits."""
        bins, cuts = args.get("bins"), args.get("thresholds")
        if bins is not None and not isinstance(bins, ast.Int):
            self.error(bins.span, "`bins` must be a literal integer, so arms can be checked")
            return None
        if bins is not None and bins.value > MAX_BINS:  # arms are checked bin by bin: refuse 10**18 first
            self.error(bins.span, f"`difficulty` argument `bins` must be at most {MAX_BINS}, got {bins.value}")
            return None
        if cuts is None:
            return cast(Param, DIFFICULTY.param("bins")).default if bins is None else bins.value
        if not isinstance(cuts, ast.List):
            return None  # not a list at all: `bind` has reported its type
        n = len(cuts.items)
        if bins is not None and n != bins.value - 1:
            self.error(
                cuts.span,
                f"`thresholds` holds {n} number{'s' * (n != 1)}, but bins={bins.value} needs {bins.value - 1}",
                "n thresholds cut the scores into n + 1 bins; leave out `bins` to take the count from the thresholds",
            )
            return None
        if not 1 <= n <= MAX_BINS - 1:
            self.error(
                cuts.span,
                f"`thresholds` must hold 1 to {MAX_BINS - 1} numbers (2 to {MAX_BINS} bins), not {n}",
                "n thresholds cut the scores into n + 1 bins",
            )
            return None
        return n + 1

    def check_arms(self, e: ast.Match, bins: int, why: tuple[str, ...] = ()) -> None:
        """Arms cover bins 1..bins exactly once; `why` notes where the count came from."""
        covered: dict[int, ast.Arm] = {}
        for i, arm in enumerate(e.arms):
            if isinstance(arm.pattern, ast.Wildcard):
                if i != len(e.arms) - 1:
                    self.error(arm.pattern.span, "`_` must be the last arm")
                elif len(covered) == bins:
                    self.error(arm.pattern.span, f"`_` is unreachable: bins 1..{bins} are all covered")
                covered.update({b: arm for b in range(1, bins + 1) if b not in covered})
                continue
            lo, hi = arm.pattern.lo, arm.pattern.hi
            if lo > hi:
                self.error(arm.pattern.span, f"empty bin range {lo}..{hi}; write {hi}..{lo}")
                continue
            if lo < 1 or hi > bins:
                self.error(arm.pattern.span, f"bin range {lo}..{hi} is outside 1..{bins}", *why)
                continue
            for b in range(lo, hi + 1):
                if b in covered:
                    self.error(
                        arm.pattern.span,
                        f"bin {b} is already covered by the arm at {covered[b].span.line}:{covered[b].span.col}",
                    )
                    break
            covered.update({b: arm for b in range(lo, hi + 1) if b not in covered})
        missing = [b for b in range(1, bins + 1) if b not in covered]
        if missing:
            self.error(
                e.span,
                f"bin{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} not covered by any arm",
                *why,
                "add arms for them, or a last `_ => ...` arm",
            )

    # ---- arguments -----------------------------------------------------------------------

    def bind(self, sig: Signature, call: ast.Call, env) -> dict[str, ast.Expr]:
        """Match a call's arguments to a signature and check their types; returns name -> expr."""
        bound, errors = bind_arguments(sig, call)
        for span, message in errors:
            self.error(span, message)
        for name, expr in bound.items():
            param = sig.param(name)
            assert param is not None  # `bind_arguments` binds only the signature's parameters
            t = self.infer(expr, env)
            if t is not None and not assignable(t, param.type):
                self.error(
                    expr.span, f"`{sig.name}` argument `{name}` must be {describe(param.type)}, not {describe(t)}"
                )
        return bound


_BINOPS = {"|>": "pipe", "+": "add", "*": "mul", "-": "arithmetic", "/": "arithmetic", "%": "arithmetic"}


def constant(expr: ast.Expr) -> float | None:
    """The value of an expression of number literals and arithmetic (`-5`, `2 * 32`), or None
    where it is anything else or cannot be computed (a division by zero is reported later)."""
    if isinstance(expr, (ast.Int, ast.Float)):
        return expr.value
    if isinstance(expr, ast.Neg):
        value = constant(expr.operand)
        return None if value is None else -value
    if isinstance(expr, ast.BinOp) and expr.op in "+-*/%":
        a, b = constant(expr.left), constant(expr.right)
        if a is None or b is None or (expr.op in "/%" and b == 0):
            return None
        if expr.op == "/":
            return a // b if isinstance(a, int) and isinstance(b, int) else a / b
        return {"+": operator.add, "-": operator.sub, "*": operator.mul, "%": operator.mod}[expr.op](a, b)
    return None


def strategy_calls(node: ast.Node, definitions: Mapping[str, ast.Definition]) -> list[str]:
    """The strategies a tree calls (a strategy declaration: its body and parameter defaults,
    where its parameters hide strategies of the same name), each once, in source order."""
    params = {p.name for p in node.params or ()} if isinstance(node, ast.StrategyDecl) else set()
    found: dict[str, None] = {}
    todo = [node]
    while todo:  # an explicit stack: no recursion, however deep the tree
        node = todo.pop()
        name = node.func if isinstance(node, ast.Call) else node.id if isinstance(node, ast.Name) else None
        if name is not None and not (isinstance(node, ast.Name) and name in params):
            if isinstance(definitions.get(name), ast.StrategyDecl):
                found[name] = None
        for field_name in reversed(type(node).model_fields):
            value = getattr(node, field_name)
            if isinstance(value, ast.Node):
                todo.append(value)
            elif isinstance(value, tuple):
                todo.extend(v for v in reversed(value) if isinstance(v, ast.Node))
    return list(found)


def strategy_order(definitions: Mapping[str, ast.Definition], roots: list[str] | None = None) -> list[str]:
    """Strategies (all, or those `roots` reach) with each after every strategy it calls: a
    depth-first post-order, walked with an explicit stack. In a cycle (an error the checker
    reports) one member comes before a strategy it calls."""
    names = [n for n, d in definitions.items() if isinstance(d, ast.StrategyDecl)] if roots is None else roots
    order: list[str] = []
    state: dict[str, bool] = {}  # False: being visited, True: done
    for root in names:
        if root in state:
            continue
        state[root] = False
        todo = [(root, iter(strategy_calls(definitions[root], definitions)))]
        while todo:
            name, callees = todo[-1]
            callee = next(callees, None)
            if callee is None:
                todo.pop()
                state[name] = True
                order.append(name)
            elif callee not in state:
                state[callee] = False
                todo.append((callee, iter(strategy_calls(definitions[callee], definitions))))
    return order


def strategy_signature(decl: ast.StrategyDecl) -> Signature:
    """A strategy's parameters as a Signature, so its calls bind like a primitive's."""
    params = tuple(Param(p.name, p.type, REQUIRED if p.default is None else p.default) for p in decl.params or ())
    return Signature(decl.name, "strategy", params, "")


def bind_arguments(sig: Signature, call: ast.Call) -> tuple[dict[str, ast.Expr], list]:
    """Positional then keyword arguments matched to parameter names; generator options are
    keyword-only. Returns the bound expressions and a list of (span, message) errors."""
    errors: list = []
    positional = [p for p in sig.params if p not in GENERATOR_OPTIONS]
    bound: dict[str, ast.Expr] = {}
    if len(call.args) > len(positional):
        extra = call.args[len(positional)]
        names = ", ".join(p.name for p in positional) or "none"
        errors.append(
            (
                extra.span,
                f"`{sig.name}` takes {len(positional)} positional argument"
                f"{'s' * (len(positional) != 1)} ({names}) but {len(call.args)} were given",
            )
        )
    for p, arg in zip(positional, call.args):
        bound[p.name] = arg
    param_names = [p.name for p in sig.params]
    for kw in call.kwargs:
        if kw.name not in param_names:
            close = difflib.get_close_matches(kw.name, param_names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            errors.append((ast.sub_span(kw.span, 0, len(kw.name)), f"`{sig.name}` has no parameter `{kw.name}`{hint}"))
        elif kw.name in bound:
            errors.append((kw.span, f"`{sig.name}` argument `{kw.name}` is given twice"))
        else:
            bound[kw.name] = kw.value
    for p in sig.params:
        if p.default is REQUIRED and p.name not in bound:
            errors.append((call.span, f"`{sig.name}` is missing its argument `{p.name}` ({p.type})"))
    return bound, errors
