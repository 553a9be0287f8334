"""`ttcl optimize`: the compute-optimal program per difficulty bin (Snell et al. 2024, §3-4).

1. Probe every question: P samples, the verifier's mean score over them (predicted
   difficulty, no ground truth needed) and the share of them that are right (oracle
   difficulty, pass@1). Each maps to bins at quantile thresholds fitted on the questions.
2. Evaluate every candidate strategy on every question, at the budget less the probes (the
   probes' P generations count in the budget, and join the chosen arm's candidates).
3. Per predicted-difficulty bin, pick the candidate with the best accuracy (then the fewest
   FLOPs). Two-fold cross-validation, as the paper does, says how well the choice holds on
   questions it was not chosen on.
4. Write the winners as a readable `.ttcl` program: a `match difficulty(...)` with the fitted
   thresholds as literal numbers and one arm per run of bins with the same winner (or, where
   one candidate won every bin, that candidate alone, without probes), importing only the
   stdlib modules it uses.

Every run goes through `Eval`, so the results file can be resumed. The search space is the
arms of the input program when it has a `match difficulty`, so optimizing an optimized program
on the same questions chooses the same arms and writes the same program; otherwise it is
`default_space(budget)` or the candidates given.

Why one module: reading a file's declarations and arms (`read_base`) and writing the program
(`render`) are the two halves of that fixed point, and the candidates' checks, the choice and
the writing share `Base` and `Choice`; split, each part would change with the others.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import cast

from ttcl import ast
from ttcl.errors import CheckError, TTCLError, UsageError
from ttcl.eval.evaluate import Eval, Record
from ttcl.formatter import format_source, layout
from ttcl.overrides import rewrite_source
from ttcl.parser import parse
from ttcl.program import Program, compile
from ttcl.results import program_hash
from ttcl.runtime.ops import difficulty_bin
from ttcl.signatures import DIFFICULTY, MAX_COUNT, Param
from ttcl.source import Span, normalize_newlines

IMPORTS = ('import "parallel"', 'import "search"', 'import "revision"')
PROBE_LABEL = "probe"
NOTE = "# ttcl optimize: "  # the header it writes, and drops when it reads a program back


def default_space(budget: int, verifier: str) -> list[str]:
    """The paper's candidates at a budget of n generations: majority voting, best-of-N
    weighted, beam search with width 4 and √n, sequential revisions, and chains of revisions
    at each sequential/parallel ratio that divides n; and majority voting that stops once its
    answer is settled (at most n), which may win a bin of easy questions on FLOPs."""
    n, v = budget, verifier
    space = [f"majority({n})", f"adaptive_majority({n})", f"weighted_best_of_n({n}, {v})"]
    for width in sorted({4, max(2, round(math.sqrt(n)))}):
        if n % width == 0 and n > width:
            space.append(f"beam_search({n}, {v}, width={width})")
    space.append(f"sequential_revisions({n}, {v})")
    space += [f"revision_ratio({n}, {chains}, {v})" for chains in (2, 4) if n % chains == 0 and n > chains]
    return space


@dataclass
class Base:
    """What every candidate shares: the input file's declarations (models, verifiers,
    prompts, imports), without its programs and budgets."""

    text: str
    path: str | None
    arms: list[str] = field(default_factory=list)  # the input program's match arms, if any
    probe: int | None = None  # its difficulty probes
    settings: list[str] = field(default_factory=list)  # `--set`s applied to every candidate and written out

    def program(self, expr: str) -> Program:
        """The candidate `expr` as the base's `main`; an error in `expr` is located in it
        (path `--candidate`), not at a line of the file that the file does not have. `expr`
        is one expression: a declaration after it is refused, not added to the program."""
        expr = normalize_newlines(expr)
        head = f"{self.text}\nprogram main = "
        text = f"{head}{expr}\n"
        try:
            extra = [s for s in parse(text, self.path).statements if s.span.start >= len(head)]
            if extra:
                raise CheckError(
                    "a candidate is one strategy, such as `majority(12)`: this starts a declaration of its own",
                    extra[0].span,
                ).with_sources({self.path or "<input>": text})
            return compile(text, self.path, settings=self.settings)
        except TTCLError as e:
            raise _in_candidate(e, text, len(head), self.path) from None


CANDIDATE = "--candidate"  # where an error in a candidate's text is said to be


def _in_candidate(e: TTCLError, text: str, start: int, path: str | None) -> TTCLError:
    """`e` with its diagnostics, and the call sites their notes name, moved from the program
    `text` made of a candidate (from offset `start` on) into the candidate's own text."""
    expr = text[start:].removesuffix("\n")
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def point(offset: int) -> tuple[int, int]:
        before = expr[: offset - start]
        return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1

    def note(n: str) -> str:  # "in strategy `beam_search` called at base.ttcl:7:16"
        site = re.fullmatch(rf"(.* called at ){re.escape(path or '<input>')}:(\d+):(\d+)", n)
        if site is None or not 1 <= int(site[2]) <= len(starts):
            return n
        offset = starts[int(site[2]) - 1] + int(site[3]) - 1
        return f"{site[1]}{CANDIDATE}:{':'.join(map(str, point(offset)))}" if offset >= start else n

    moved = []
    for d in e.diagnostics:
        span = d.span
        if span is not None and span.path == path and span.start >= start:
            end = min(span.end, start + len(expr))
            (line, col), (end_line, end_col) = point(span.start), point(end)
            span = Span(
                path=CANDIDATE,
                line=line,
                col=col,
                end_line=end_line,
                end_col=end_col,
                start=span.start - start,
                end=end - start,
            )
        moved.append(replace(d, span=span, notes=tuple(note(n) for n in d.notes)))
    e.diagnostics = moved
    return e.with_sources({CANDIDATE: expr})


def check_candidates(base: Base, candidates: list[str], arm: int) -> list[Program]:
    """Each candidate compiled as the base's program, before anything runs: an error in one
    is located in its text, and so is one that needs more than the `arm` generations each arm
    has (the written program would exceed its budget)."""
    programs = []
    for expr in candidates:
        program = base.program(expr)
        if program.ir.generations > arm:
            lines = expr.splitlines() or [""]
            whole = Span(
                path=CANDIDATE, line=1, col=1, end_line=len(lines), end_col=len(lines[-1]) + 1, start=0, end=len(expr)
            )
            raise CheckError(
                f"this candidate needs {program.ir.generations} generations, and each arm has {arm} "
                "(the budget less the probes)",
                whole,
                sources={CANDIDATE: expr},
            )
        programs.append(program)
    return programs


def read_base(text: str, path: str | None, program: str = "main") -> Base:
    """The declarations of a source file, and the arms of its `match difficulty` program."""
    module = parse(text, path)
    kept, arms, probe = [], [], None
    at = 0
    for stmt in module.statements:
        if isinstance(stmt, (ast.ProgramDecl, ast.BudgetDecl)):
            kept.append(text[at : stmt.span.start])
            at = stmt.span.end
            if isinstance(stmt, ast.ProgramDecl) and stmt.name == program and isinstance(stmt.body, ast.Match):
                arms = [" ".join(layout(arm.body, "")).strip() for arm in stmt.body.arms]
                probe = _keyword(stmt.body.head, "probe")
    kept.append(text[at:])
    body = "\n".join(line for line in "".join(kept).splitlines() if not line.startswith(NOTE)).strip() + "\n"
    missing = [line for line in IMPORTS if line not in body]
    return Base("\n".join(missing + [body]), path, list(dict.fromkeys(arms)), probe)


def verifiers(text: str, path: str | None) -> list[str]:
    """The names of the verifiers a source file declares."""
    return [s.name for s in parse(text, path).statements if isinstance(s, ast.VerifierDecl)]


def _keyword(call: ast.Call, name: str) -> int | None:
    for kw in call.kwargs:
        if kw.name == name and isinstance(kw.value, ast.Int):
            return kw.value.value
    return None


# ---- difficulty ----------------------------------------------------------------------------


@dataclass
class Difficulty:
    """Per question: the mean verifier score of its probes and their pass@1 (oracle)."""

    score: list[float]
    pass_at_1: list[float]


def quantile_thresholds(values: list[float], bins: int = 5) -> list[float]:
    """bins - 1 ascending cut points at the quantiles of `values`, so each bin holds about as
    many questions. Repeated values can make cuts coincide; they are then nudged apart, and
    the bins between them are simply empty."""
    if not values:
        raise UsageError("cannot fit difficulty bins without questions")
    ordered = sorted(values)
    cuts = []
    for i in range(1, bins):
        position = i * (len(ordered) - 1) / bins
        low, frac = int(position), position - int(position)
        high = min(low + 1, len(ordered) - 1)
        cuts.append(round(ordered[low] + frac * (ordered[high] - ordered[low]), 4))
    return _ascending_in_unit(cuts)


def _ascending_in_unit(cuts: list[float]) -> list[float]:
    """Cut points as the language takes them: strictly ascending, within 0..1. Coinciding
    cuts are nudged apart upwards, and those the nudge (or the scores) put above 1 downwards."""
    cuts = [min(max(c, 0.0), 1.0) for c in cuts]
    for i in range(1, len(cuts)):
        cuts[i] = max(cuts[i], round(cuts[i - 1] + 1e-4, 4))
    top = 1.0
    for i in reversed(range(len(cuts))):  # at most MAX_BINS - 1 steps of 1e-4 below 1
        cuts[i] = min(cuts[i], top)
        top = round(cuts[i] - 1e-4, 4)
    return cuts


def predicted_bin(score: float, thresholds: list[float]) -> int:
    """Bin 1 is the easiest: the highest verifier scores."""
    return difficulty_bin(score, len(thresholds) + 1, thresholds)


def oracle_bin(pass_at_1: float, thresholds: list[float]) -> int:
    """Bin 1 is the easiest: the most probes right."""
    return difficulty_bin(pass_at_1, len(thresholds) + 1, thresholds)


def difficulty_of(records: list[Record]) -> Difficulty:
    """From the probe program's records (one per question, in order)."""
    # the probe program's records carry both: its `difficulty` node probes every question
    return Difficulty([cast(float, r.difficulty) for r in records], [cast(float, r.probe_accuracy) for r in records])


# ---- choosing per bin ----------------------------------------------------------------------


@dataclass
class Choice:
    """The winner of each bin, chosen on some questions."""

    thresholds: list[float]
    winners: dict[int, str]  # bin -> candidate

    @property
    def only(self) -> str | None:
        """The winner of every bin, where one strategy won them all."""
        winners = set(self.winners.values())
        return winners.pop() if len(winners) == 1 else None


# Absolute difficulty bins, as compute-optimal-tts draws them from the policy's pass rate:
# hard below 10%, medium 10-50%, easy from 50%; here on the probes' mean verifier score,
# which estimates that pass rate without the ground truth.
PASS_RATE_THRESHOLDS = [0.1, 0.5]


def thresholds_for(scores: list[float], bins: int, binning: str = "quantile") -> list[float]:
    """The difficulty thresholds: quantiles of `scores` (`bins` bins of about equal size), or
    the absolute pass-rate cut points (three bins, whatever the scores)."""
    if binning == "pass-rate":
        return list(PASS_RATE_THRESHOLDS)
    return quantile_thresholds(scores, bins)


def choose(
    candidates: list[str],
    results: dict[str, list[Record]],
    scores: list[float],
    questions: list[int],
    bins: int = 5,
    binning: str = "quantile",
) -> Choice:
    """Fit thresholds on `questions`' scores (or take the pass-rate ones), then per bin the
    candidate with the most right answers on those questions (ties: fewer FLOPs, then the
    earlier candidate). An empty bin takes the winner over all the questions."""
    thresholds = thresholds_for([scores[i] for i in questions], bins, binning)
    bins = len(thresholds) + 1
    overall = _best(candidates, results, questions)
    winners = {}
    for b in range(1, bins + 1):
        inside = [i for i in questions if predicted_bin(scores[i], thresholds) == b]
        winners[b] = _best(candidates, results, inside) if inside else overall
    return Choice(thresholds, winners)


def _best(candidates: list[str], results: dict[str, list[Record]], questions: list[int]) -> str:
    def key(c: str) -> tuple:
        rs = [results[c][i] for i in questions]
        return (-sum(r.correct for r in rs), sum(r.flops or 0.0 for r in rs), candidates.index(c))

    return min(candidates, key=key)


def cross_validate(
    candidates: list[str],
    results: dict[str, list[Record]],
    scores: list[float],
    probe: list[Record],
    bins: int = 5,
    binning: str = "quantile",
) -> tuple[float, float]:
    """Two-fold cross-validated accuracy and mean FLOPs per question (probes included) of
    choosing per bin: each half is answered by the choice made on the other half."""
    n = len(scores)
    folds = [list(range(0, n, 2)), list(range(1, n, 2))]
    correct, flops = 0, 0.0
    for k in (0, 1):
        choice = choose(candidates, results, scores, folds[1 - k], bins, binning)
        for i in folds[k]:
            record = results[choice.winners[predicted_bin(scores[i], choice.thresholds)]][i]
            correct += record.correct
            flops += (record.flops or 0.0) + (probe[i].flops or 0.0)
    return correct / n, flops / n


# ---- the program it writes -----------------------------------------------------------------


def render(base: Base, choice: Choice, verifier: str, probe: int, budget: int, note: list[str]) -> str:
    """The optimized program as canonical TTCL: the base's declarations, the budget, and a
    `match difficulty` with literal thresholds and an arm per run of bins with one winner."""
    arms, b = [], 1
    bins = len(choice.thresholds) + 1
    while b <= bins:
        end = b
        while end + 1 <= bins and choice.winners[end + 1] == choice.winners[b]:
            end += 1
        pattern = str(b) if b == end else f"{b}..{end}"
        arms.append(f"    {pattern} => {choice.winners[b]}")
        b = end + 1
    cuts = ", ".join(f"{t:g}" for t in choice.thresholds)
    text = "\n".join(
        [NOTE + line for line in note]
        + [
            rewrite_source(base.text, base.path, base.settings).rstrip(),
            "",
            f"budget {budget} generations",
            "",
            "program main =",
            f"  match difficulty({verifier}, probe={probe}, thresholds=[{cuts}]) {{",
            *arms,
            "  }",
            "",
        ]
    )
    return _tidy(text, base.path)


def render_alone(base: Base, strategy: str, budget: int, note: list[str]) -> str:
    """The optimized program where one strategy won every bin: that strategy alone, since
    probes that would choose it every time would cost their generations for nothing."""
    text = "\n".join(
        [NOTE + line for line in [*note, "one strategy won every bin: it runs alone, without the probes"]]
        + [
            rewrite_source(base.text, base.path, base.settings).rstrip(),
            "",
            f"budget {budget} generations",
            "",
            f"program main = {strategy}",
            "",
        ]
    )
    return _tidy(text, base.path)


def _tidy(text: str, path: str | None) -> str:
    """`text` formatted, without the imports it does not use: an import goes where the
    program compiles to the same IR without it (the base imports every stdlib module, so
    that any candidate compiles)."""
    try:
        same = program_hash(compile(text, path).ir)
    except TTCLError:  # written all the same, where `ttcl check` will say what is wrong
        return format_source(text, path)
    # from the last: cutting an import leaves the spans of those before it where they were
    for stmt in reversed([s for s in parse(text, path).statements if isinstance(s, ast.Import)]):
        end = stmt.span.end + (text[stmt.span.end : stmt.span.end + 1] == "\n")
        without = text[: stmt.span.start] + text[end:]
        try:
            if program_hash(compile(without, path).ir) == same:
                text = without
        except TTCLError:
            continue  # a declaration needs it
    return format_source(text, path)


def check_options(budget: int, probe: int, bins: int) -> None:
    """Refuse options that would make a program the checker rejects, before anything runs:
    bins and probes within what `difficulty(...)` takes, a budget that leaves each arm a
    count of generations a stage takes."""
    for name, value, param in (("bins", bins, "bins"), ("probe", probe, "probe")):
        limits = cast(Param, DIFFICULTY.param(param))
        low, high = int(cast(float, limits.minimum)), int(cast(float, limits.maximum))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UsageError(f"--{name} must be a whole number from {low} to {high}, got {value!r}")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise UsageError(f"--budget must be a positive whole number of generations, got {budget!r}")
    arm = arm_budget(budget, probe)  # a UsageError where the probes take the whole budget
    if arm > MAX_COUNT:
        raise UsageError(f"--budget {budget} leaves {arm} generations per arm; a stage takes at most {MAX_COUNT}")


def arm_budget(budget: int, probe: int) -> int:
    """What each arm may spend: the budget less the probes, which the program also pays."""
    if budget <= probe:
        raise UsageError(f"a budget of {budget} generations leaves nothing after {probe} probe samples")
    return budget - probe


def runs(candidates: list[str], verifier: str, probe: int) -> dict[str, str]:
    """What optimize runs, by label: the probe program, then every candidate."""
    # an arm must take the question: a one-token sample, so the record is the probes' cost
    probe_program = f"match difficulty({verifier}, probe={probe}) {{ _ => sample(1, max_tokens=1) |> vote }}"
    return {PROBE_LABEL: probe_program, **{c: c for c in candidates}}


def run_all(
    ev: Eval, base: Base, candidates: list[str], verifier: str, probe: int, on_start=lambda label: None
) -> dict[str, list[Record]] | None:
    """Run the probe program and every candidate through `ev`; their records by label, in
    question order, or None if interrupted."""
    labels = runs(candidates, verifier, probe)
    for label, expr in labels.items():
        on_start(label)
        if not ev.run(base.program(expr), label):
            return None
    by_label: dict[str, dict[int, Record]] = {label: {} for label in labels}
    for r in ev.records:
        if r.program in by_label and r.budget is None:
            by_label[r.program][r.index] = r
    return {label: [rs[i] for i in range(len(ev.questions))] for label, rs in by_label.items()}


@dataclass
class Optimized:
    """What `optimize` found: every candidate's and the probes' records, the probes' difficulty
    scores, the choice per bin, its 2-fold cross-validated accuracy and FLOPs per question
    (probes included), and the program it wrote."""

    candidates: list[str]
    results: dict[str, list[Record]]
    probes: list[Record]
    scores: list[float]
    choice: Choice
    cv_accuracy: float
    cv_flops: float
    text: str


def optimize(
    base: Base,
    ev: Eval,
    budget: int,
    verifier: str,
    probe: int,
    candidates: list[str] | None = None,
    bins: int = 5,
    note: list[str] | None = None,
    on_start=lambda label: None,
    binning: str = "quantile",
) -> Optimized | None:
    """The compute-optimal workflow, the one entry point `ttcl optimize` and the benchmark
    share: run the probes and every candidate (the default search space at the budget less the
    probes, unless given) on `ev`'s questions, bin the questions by the probes' score, choose
    the best candidate per bin (`binning`: quantile bins, or absolute pass-rate bins),
    cross-validate that choice, and write the per-difficulty program (or, where one candidate
    won every bin, that candidate alone). None if interrupted (what finished is in `ev`'s file,
    for --resume)."""
    check_options(budget, probe, bins)
    candidates = candidates or default_space(arm_budget(budget, probe), verifier)
    check_candidates(base, candidates, arm_budget(budget, probe))
    results = run_all(ev, base, candidates, verifier, probe, on_start)
    if results is None:
        return None
    probes = results.pop(PROBE_LABEL)
    scores = [cast(float, r.difficulty) for r in probes]  # every probe record has its score
    choice = choose(candidates, results, scores, list(range(len(scores))), bins, binning)
    cv_accuracy, cv_flops = cross_validate(candidates, results, scores, probes, bins, binning)
    if choice.only is not None:
        text = render_alone(base, choice.only, budget, note or [])
    else:
        text = render(base, choice, verifier, probe, budget, note or [])
    return Optimized(candidates, results, probes, scores, choice, cv_accuracy, cv_flops, text)


def fit_parameter(program: Program, param: str, unit: str, amount: float, calibration=None, most: int = 1 << 16) -> int:
    """The largest value of the int parameter `param` whose estimated cost per question
    (expected, with `calibration`'s priors if given) fits `amount` of `unit`: n fitted to a
    FLOPs, tokens or generations budget. Values the program rejects (say, a beam count that
    its width does not divide) are skipped."""
    from ttcl.errors import TTCLError

    def fits(n: int) -> bool | None:  # None: not a valid value
        try:
            report = program.bind(**{param: n}).cost(calibration=calibration, flops=unit == "flops")
        except TTCLError:
            return None
        return report.expected.amount(unit) <= amount

    low = next((n for n in range(1, 65) if fits(n) is not None), None)
    if low is None or not fits(low):
        raise UsageError(f"no value of `{param}` fits {amount:g} {unit}")
    high = low * 2
    while high <= most and (fit := fits(high)) is not False:  # double while it fits (or is invalid)
        low, high = (high if fit else low), high * 2
    while high - low > 1:  # the cost grows with n: bisect between a fit and a misfit
        mid = (low + high) // 2
        if fits(mid) is False:
            high = mid
        else:
            low = mid
    while fits(low) is not True:  # the last fit may be an invalid value: step down to a valid one
        low -= 1
    return low
