"""`ttcl eval`: run programs over a dataset, grade every answer, and summarize per budget.

Each finished question is appended to the results file (JSONL, one `Record` per line) and
flushed at once, so an interrupted eval loses nothing it finished; `resume` skips what the
file already holds and runs the rest. Ctrl-C stops the batch in flight: questions it had not
finished are not written, and run again on resume. A question's result does not depend on
which questions share its batch (the runtime's seeds and the backend are batch-invariant),
so a resumed eval gives what an uninterrupted one would have.

A record says what it is a result of: its question (a hash of the text), its program (a hash
of the bound program's IR, `ttcl.results.program_hash`), its seed and its budget. Resuming
checks every record against the eval before anything runs, and refuses a file written by
another dataset, program, seed or set of budgets, so old numbers are never reported as new.
A torn last line is cut off (the file's bytes are kept in FILE.torn first).

A question the model cannot take (a prompt longer than its context) fails alone: the batch
it broke is run again in halves until it is by itself, and it is recorded as failed (counted
wrong, its reason in the record and its count in the summary) while the rest go on.

Why one module: the record's format, the checks a resumed file must pass, the runs that append
to it and the summaries read from it change together; split, each would need the others.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from ttcl.backends.base import BackendError, RequestError, placed
from ttcl.errors import UsageError
from ttcl.eval.sweep import PoolPlan, outcomes
from ttcl.program import Program
from ttcl.results import Result, cut_torn_line, end_line, program_hash, question_hash, read_lines
from ttcl.runtime.answers import AnswerKind, answer_kind


class Record(BaseModel):
    """One graded question: what an eval appends to its results file."""

    model_config = ConfigDict(extra="forbid")

    program: str  # the program's file (or name), so one file can hold several strategies
    budget: int | None  # the value bound to the budget parameter; None: as written
    index: int  # the question's place in the dataset
    question: str
    expected: str
    answer: str | None
    correct: bool
    level: int | None = None  # the dataset's difficulty level, where it has one
    bin: int | None = None  # the difficulty bin the program's match chose
    difficulty: float | None = None  # its probes' mean verifier score (predicted difficulty)
    probe_accuracy: float | None = None  # the share of its probes that are right (oracle pass@1)
    flops: float | None
    tokens: int
    generations: int
    seed: int
    elapsed_s: float
    # what the result is of, checked on resume (None only in files of older versions)
    question_hash: str | None = None  # `ttcl.results.question_hash` of `question`
    program_hash: str | None = None  # `ttcl.results.program_hash` of the program as bound
    error: str | None = None  # why the question failed (then counted wrong); None: it ran
    # a budget evaluated from a pool drawn at a larger budget (`ttcl.eval.sweep`): that budget,
    # and the share of resampled subsets answered right (`correct`: the answer chosen most often)
    pooled_from: int | None = None
    share: float | None = None

    @property
    def key(self) -> tuple[str, int | None, int]:
        return (self.program, self.budget, self.index)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def value(self) -> float:
        """How right it is: the share of a pool's subsets answered right, else 1 or 0."""
        return self.share if self.share is not None else float(self.correct)


class Summary(BaseModel):
    """Accuracy (with a 95% Wilson interval) and mean cost of one program at one budget."""

    program: str
    budget: int | None
    questions: int
    correct: int
    accuracy: float
    low: float
    high: float
    flops: float | None  # mean per question that ran (failed ones spent nothing measured)
    tokens: float
    failed: int = 0  # questions that could not run (counted wrong), such as a prompt too long
    pooled_from: int | None = None  # evaluated from a pool drawn at this budget (`ttcl.eval.sweep`)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% by default): unlike p ± z·SE it stays
    inside [0, 1] and behaves at 0 and n correct, which small evals hit often."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def budget_param(program: Program, name: str | None) -> str:
    """The parameter `--budgets` binds: `name`, or the program's only int parameter."""
    ints = [p for p, value in program.params.items() if isinstance(value, int) and not isinstance(value, bool)]
    if name is not None:
        if name not in program.params:
            raise UsageError(
                f"program `{program.name}` has no parameter `{name}`"
                + (f" (it has {', '.join(program.params)})" if program.params else "")
            )
        return name
    if len(ints) != 1:
        have = f"its int parameters are {', '.join(ints)}" if ints else "it has no int parameter"
        raise UsageError(
            f"--budgets needs the parameter to bind: {have}; name one with --param, or give "
            f"the program a parameter such as `program main(n: int = 16) = ...`"
        )
    return ints[0]


def read_records(path: str | Path) -> list[Record]:
    """The records of a results file. A torn last line (a process killed mid-write) is
    dropped; a malformed line elsewhere is an error naming it."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[list[Record], int | None]:
    """The records, and where a torn last line starts (see `ttcl.results.read_lines`)."""
    lines, torn = read_lines(path)
    records = []
    for number, line in lines:
        try:
            records.append(Record.model_validate_json(line))
        except ValidationError:
            raise UsageError(f"{path}:{number}: not an eval record; is this a `ttcl eval` results file?") from None
    return records, torn


def where(question: dict, index: int) -> str:
    """A question for messages: `question 3`, or `question 3 (dataset line 7)` from a file."""
    line = question.get("line")
    return f"question {index}" + (f" (dataset line {line})" if line is not None else "")


def run_isolating(
    program: Program,
    questions: list[dict],
    indices: list[int],
    on_result: Callable[[int, Result], None],
    on_failure: Callable[[int, str], None] | None = None,
    seed: int = 0,
    backend=None,
    time_limit: float | None = None,
) -> bool:
    """Run `questions[i]` for each i in `indices` batched together, reporting each as
    `on_result(i, result)` as it finishes. If the batch fails with one question's error
    (a `RequestError`), the questions it had not finished run again split in halves, batched,
    until the one that fails is alone: `on_failure(i, reason)` gets it and the rest go on
    (without `on_failure`, the error is raised naming it). Any other error is raised, naming
    the question when only it was left. Returns False if interrupted (Ctrl-C); interrupted
    results are reported."""
    if not indices:
        return True
    finished: set[int] = set()
    held: list[tuple[int, Result]] = []  # reported once the batch is known not to have failed

    def report(position: int, result: Result) -> None:
        index = indices[position]
        if result.stopped == "interrupted":
            held.append((index, result))
            return
        finished.add(index)
        on_result(index, result)

    try:
        program.run_many(
            [questions[i] for i in indices], seed=seed, backend=backend, time_limit=time_limit, on_result=report
        )
    except BackendError as e:
        rest = [i for i in indices if i not in finished]
        if len(rest) == 1:  # the question that failed: it alone was left
            if on_failure is None or not isinstance(e, RequestError):
                raise placed(e, f"{where(questions[rest[0]], rest[0])}: {e.message}") from None
            on_failure(rest[0], e.message)
            return True
        if not isinstance(e, RequestError):
            raise
        if not rest:
            return True
        half = len(rest) // 2
        return all(
            run_isolating(program, questions, part, on_result, on_failure, seed, backend, time_limit)
            for part in (rest[:half], rest[half:])
        )
    for index, result in held:
        on_result(index, result)
    return not held


def bind_budget(program: Program, budget: int | None, param: str | None) -> Program:
    """The program with `param` bound to `budget` (as written without a param or a budget)."""
    return program.bind(**{param: budget}) if param is not None and budget is not None else program


class Eval:
    """Runs programs over questions at budgets, appending a `Record` per finished question.

    `on_record(record)` is called after each is written (for a progress display). With
    `resume`, the file's records must be of these questions and this seed (else `UsageError`,
    naming what differs; `option` is the flag that names the file, for that message). `notes`
    says what was done to the file before the first append (a torn last line cut off). With
    `isolate` (what `ttcl eval` does) a question that fails on its own (a `RequestError`) is
    recorded as failed and the rest go on; without it (what `optimize`, which needs a result
    of every question, does) it stops the eval with an error naming the question."""

    def __init__(
        self,
        path: str | Path,
        questions: list[dict],
        seed: int = 0,
        resume: bool = False,
        backend=None,
        on_record: Callable[[Record], None] | None = None,
        option: str = "--output",
        isolate: bool = False,
    ):
        self.path = Path(path)
        self.questions = questions
        self.hashes = [question_hash(q["question"]) for q in questions]
        self.seed = seed
        self.backend = backend
        self.on_record = on_record or (lambda record: None)
        self.option = option
        self.isolate = isolate
        self.notes: list[str] = []
        if self.path.exists() and self.path.stat().st_size and not resume:
            raise UsageError(
                f"{self.path} already holds results: --resume to continue it, or choose "
                f"another {option} (nothing is overwritten)"
            )
        self.records: list[Record] = []
        self.torn: int | None = None  # where the file's torn last line starts, until it is cut
        if resume:
            self.records, self.torn = _read(self.path)
            self._check_records()

    def _mend(self) -> None:
        """Before the first append: cut a torn last line (the file as it was kept beside it)
        and end the last line, so every record starts a line of its own. A resume refused by
        a check never gets here, so it leaves the file as it was."""
        if self.torn is not None:
            backup = cut_torn_line(self.path, self.torn)
            self.torn = None
            self.notes.append(
                f"{self.path}: its last line was torn (a write cut short) and is cut off; "
                f"the file as it was is kept in {backup}; that question runs again"
            )
        end_line(self.path)

    # ---- what a resumed file must be ------------------------------------------------------

    def _refuse(self, differences: list[str]) -> UsageError:
        return UsageError(
            f"{self.path} holds results of another run: " + "; ".join(differences) + ". --resume only "
            f"continues the run that wrote the file: choose another {self.option} for this one, or "
            f"remove {self.path} to start over"
        )

    def _check_records(self) -> None:
        """Every record must say what it is of, and be of these questions and this seed."""
        if any(r.question_hash is None or r.program_hash is None for r in self.records):
            raise UsageError(
                f"{self.path} was written by an older TTCL: its records do not say which questions "
                f"and program they are results of, so --resume cannot check they belong to this run; "
                f"choose another {self.option}, or remove {self.path} to start over"
            )
        found: dict[str, str] = {}
        n = len(self.questions)
        for r in self.records:
            if r.seed != self.seed:
                found.setdefault("seed", f"the seed differs (--seed {r.seed} in the file, {self.seed} now)")
            if r.index >= n:
                found.setdefault(
                    "dataset",
                    f"the dataset differs (the file has a result for question {r.index}, and this "
                    f"dataset has {n} questions: another dataset, or a smaller --limit?)",
                )
            elif r.question_hash != self.hashes[r.index]:
                found.setdefault(
                    "dataset",
                    f"the dataset differs (question {r.index} in the file is {_short(r.question)!r}, "
                    f"in this dataset {_short(self.questions[r.index]['question'])!r})",
                )
        if found:
            raise self._refuse(list(found.values()))

    def expect(self, runs: list[tuple[str, int | None, Program]]) -> None:
        """Check the file's records against every run this eval will make, (label, budget,
        bound program), before any runs: each record must be of one of them, by the same
        program. Refuses (naming what differs) a record of an edited program, of another
        program, or of a budget this eval does not run."""
        plan = {(label, budget): program_hash(program.ir) for label, budget, program in runs}
        budgets: dict[str, list[int | None]] = defaultdict(list)
        for label, budget in plan:
            budgets[label].append(budget)
        found: dict[str, str] = {}
        for r in self.records:
            digest = plan.get((r.program, r.budget))
            if digest is None and r.program in budgets:
                found.setdefault(
                    "budget",
                    f"the budgets differ (the file has `{r.program}` at {_budget(r.budget)}, and this "
                    f"eval runs it at {', '.join(_budget(b) for b in budgets[r.program])})",
                )
            elif digest is None:
                found.setdefault(
                    "program",
                    f"the programs differ (the file has results of `{r.program}`, which this eval does not run)",
                )
            elif r.program_hash != digest:
                found.setdefault("program", _edited(r.program, r.budget))
        if found:
            raise self._refuse(list(found.values()))

    # ---- running --------------------------------------------------------------------------

    def run(self, program: Program, label: str, budget: int | None = None, param: str | None = None) -> bool:
        """Run `program` (with `param` bound to `budget`, if a param is named) on every question
        not yet recorded for (label, budget). Returns False if it was interrupted."""
        bound = bind_budget(program, budget, param)
        digest = program_hash(bound.ir)
        if any((r.program, r.budget) == (label, budget) and r.program_hash != digest for r in self.records):
            raise self._refuse([_edited(label, budget)])
        probes = {n for n, op in bound.graph.nodes(data="op") if op == "difficulty"}
        answers = answer_kind(bound.ir.answer)  # graded as the program's votes compare answers
        done = {r.key for r in self.records}
        todo = [i for i in range(len(self.questions)) if (label, budget, i) not in done]
        if not todo:
            return True
        with self._appending() as append:

            def write(index: int, result: Result) -> None:
                if result.stopped != "interrupted":  # unfinished: it runs again on resume
                    append(self._record(label, budget, index, result, probes, digest, answers))

            def fail(index: int, reason: str) -> None:
                append(self._failed(label, budget, index, reason, digest))

            return run_isolating(
                bound,
                self.questions,
                todo,
                write,
                fail if self.isolate else None,
                seed=self.seed,
                backend=self.backend,
            )

    def run_pooled(self, program: Program, label: str, budgets: list[int], param: str, plan: PoolPlan) -> bool:
        """Run `program` once per question at the largest of `budgets` and evaluate every
        budget from that pool (`ttcl.eval.sweep`): each question's records, one per budget,
        are appended together, marked `pooled_from`. Returns False if it was interrupted."""
        largest = max(budgets)
        bound = {b: bind_budget(program, b, param) for b in budgets}
        digests = {b: program_hash(bound[b].ir) for b in budgets}
        edited = next(
            (
                r
                for r in self.records
                if r.program == label and r.budget in digests and r.program_hash != digests[r.budget]
            ),
            None,
        )
        if edited is not None:  # name the budget whose records differ, not just any of the label's
            raise self._refuse([_edited(label, edited.budget)])
        done = {r.key for r in self.records}
        todo = [i for i in range(len(self.questions)) if any((label, b, i) not in done for b in budgets)]
        if not todo:
            return True
        answers = answer_kind(bound[largest].ir.answer)
        with self._appending() as append:

            def write(index: int, result: Result) -> None:
                if result.stopped == "interrupted":  # unfinished: it runs again on resume
                    return
                q = self.questions[index]
                rng = random.Random(f"{self.seed}:{label}:{index}")  # the same subsets on every run
                for budget, o in outcomes(result, plan, sorted(budgets), answers, q["answer"], rng).items():
                    if (label, budget, index) not in done:
                        record = self._record(label, budget, index, result, set(), digests[budget], answers)
                        update: dict[str, object] = {
                            "answer": o.answer,
                            "correct": answers.same(o.answer, q["answer"]),
                            "share": o.share,
                            "pooled_from": largest,
                            "flops": o.flops,
                            "tokens": round(o.tokens),
                            "generations": o.generations,
                            "elapsed_s": result.elapsed_s * o.generations / largest,
                        }
                        append(record.model_copy(update=update))

            def fail(index: int, reason: str) -> None:
                for budget in budgets:
                    if (label, budget, index) not in done:
                        append(self._failed(label, budget, index, reason, digests[budget]))

            return run_isolating(
                bound[largest],
                self.questions,
                todo,
                write,
                fail if self.isolate else None,
                seed=self.seed,
                backend=self.backend,
            )

    @contextmanager
    def _appending(self) -> Iterator[Callable[[Record], None]]:
        """A function that appends a record to the file, durably, and reports it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._mend()
            sink = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{self.path}: cannot write: {e.strerror or e}") from None
        with sink:

            def append(record: Record) -> None:
                sink.write(record.model_dump_json() + "\n")
                sink.flush()
                os.fsync(sink.fileno())  # a killed process keeps every line it reported
                self.records.append(record)
                self.on_record(record)

            yield append

    def _record(
        self,
        label: str,
        budget: int | None,
        index: int,
        result: Result,
        probes: set[int],
        digest: str,
        answers: AnswerKind,
    ) -> Record:
        q = self.questions[index]
        scores = [e.detail["mean_score"] for e in result.trace if e.event == "difficulty"]
        probed = [answers.same(c.answer, q["answer"]) for c in result.candidates if c.node in probes]
        return Record(
            program=label,
            budget=budget,
            index=index,
            question=q["question"],
            expected=q["answer"],
            answer=result.answer,
            correct=answers.same(result.answer, q["answer"]),
            level=q.get("level"),
            bin=result.bin,
            difficulty=scores[0] if scores else None,
            probe_accuracy=sum(probed) / len(probed) if probed else None,
            flops=result.cost.flops,
            tokens=result.cost.tokens,
            generations=result.cost.generations,
            seed=result.seed,
            elapsed_s=result.elapsed_s,
            question_hash=self.hashes[index],
            program_hash=digest,
        )

    def _failed(self, label: str, budget: int | None, index: int, reason: str, digest: str) -> Record:
        q = self.questions[index]
        return Record(
            program=label,
            budget=budget,
            index=index,
            question=q["question"],
            expected=q["answer"],
            answer=None,
            correct=False,
            level=q.get("level"),
            flops=None,
            tokens=0,
            generations=0,
            seed=self.seed,
            elapsed_s=0.0,
            question_hash=self.hashes[index],
            program_hash=digest,
            error=f"{where(q, index)}: {reason}",
        )


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _budget(budget: int | None) -> str:
    return "the budget as written" if budget is None else f"budget {budget}"


def _edited(label: str, budget: int | None) -> str:
    return (
        f"the program differs (`{label}` at {_budget(budget)} is not the program that wrote its "
        "results: edited since, or other --param values?)"
    )


def summarize(records: list[Record]) -> list[Summary]:
    """Per (program, budget), in the order they first appear."""
    groups: dict[tuple[str, int | None], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.program, r.budget)].append(r)
    return [_summary(program, budget, rs) for (program, budget), rs in groups.items()]


def summarize_by(records: list[Record], key: Callable[[Record], int | None]) -> dict[int, list[Summary]]:
    """`summarize` within each group `key` gives (a difficulty bin, a dataset level)."""
    groups: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        k = key(r)
        if k is not None:
            groups[k].append(r)
    return {k: summarize(rs) for k, rs in sorted(groups.items())}


def _summary(program: str, budget: int | None, records: list[Record]) -> Summary:
    n, correct = len(records), sum(r.correct for r in records)
    pooled = next((r.pooled_from for r in records if r.pooled_from is not None), None)
    values = [r.value for r in records]
    # a pooled budget's questions score fractions: their interval is a bootstrap over questions
    low, high = bootstrap(values) if pooled is not None else wilson(correct, n)
    ran = [r for r in records if not r.failed]  # a failed question's cost is not measured
    flops = None if not ran or any(r.flops is None for r in ran) else sum(cast(float, r.flops) for r in ran) / len(ran)
    return Summary(
        program=program,
        budget=budget,
        questions=n,
        correct=correct,
        accuracy=sum(values) / n,
        low=low,
        high=high,
        flops=flops,
        tokens=sum(r.tokens for r in ran) / len(ran) if ran else 0.0,
        failed=n - len(ran),
        pooled_from=pooled,
    )


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean of `values` (questions resampled with
    replacement; seeded, so a report is the same every time)."""
    if not values:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def plot(summaries: list[Summary], path: str, title: str = "") -> None:
    """Write `figure(summaries, title)` to `path` (the format its suffix names)."""
    fig = figure(summaries, title)
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None


def figure(summaries: list[Summary], title: str = ""):
    """Accuracy against FLOPs per question, as the paper's figures show strategies: a line per
    program with its 95% interval, its points labelled with their budgets and joined in order
    of FLOPs, the programs in the legend from the cheapest; accuracy in %, FLOPs on a log
    scale ticked at each power of ten. A matplotlib `Figure`, drawn without pyplot (no display,
    no global state)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    lines: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.flops:  # a log axis draws only positive FLOPs
            lines[s.program].append(s)
    if not lines:
        raise UsageError("--plot needs measured FLOPs, and no result has them")
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    for program, points in sorted(lines.items(), key=lambda item: (min(map(_flops, item[1])), item[0])):
        points.sort(key=_flops)
        xs = [_flops(s) for s in points]
        (line,) = ax.plot(xs, [s.accuracy for s in points], marker="o", label=program)
        ax.fill_between(xs, [s.low for s in points], [s.high for s in points], color=line.get_color(), alpha=0.15)
        for s in points:
            if s.budget is not None:
                ax.annotate(
                    str(s.budget),
                    (_flops(s), s.accuracy),
                    xytext=(4, 5),
                    textcoords="offset points",
                    fontsize=7,
                    color=line.get_color(),
                )
    ax.set_xscale("log")
    ax.set_xlim(*decades([_flops(s) for points in lines.values() for s in points]))
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=30))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=30))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("FLOPs per question")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def _flops(s: Summary) -> float:
    """A summary's FLOPs per question, where it has them (those `figure` draws)."""
    return cast(float, s.flops)


def decades(values: list[float]) -> tuple[float, float]:
    """The powers of ten just around `values` (at least one decade apart), so the log axis
    has a tick at each end: 3e11 .. 2e12 is drawn from 1e11 to 1e13."""
    low = 10.0 ** math.floor(math.log10(min(values)))
    high = 10.0 ** math.ceil(math.log10(max(values)))
    return low, max(high, low * 10)


def markdown(
    tables: list[tuple[str, list[Summary]]], title: str, facts: list[tuple[str, str]], plot: str | None = None
) -> str:
    """A Markdown report: what made it (`facts`: the model, the version, the command), a link
    to the plot, and each table under its title."""
    lines = [f"# {title}", ""] + [f"- {name}: {value}" for name, value in facts]
    if plot is not None:
        lines += ["", f"![accuracy against FLOPs per question]({quote(plot)})"]
    for heading, rows in tables:
        lines += ["", f"## {heading}", "", _md_table(rows)]
    return "\n".join(lines) + "\n"


def _md_table(summaries: list[Summary]) -> str:
    columns, rows = table_of(summaries)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table_of(summaries: list[Summary], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a table of summaries, alike on the console and in a report:
    the `failed` column only where a question failed. `compact` (a narrow terminal) leaves
    "/question" out of the headers and the pool out of the budgets, for the caller to say."""
    failures = any(s.failed for s in summaries)
    per = "" if compact else "/question"
    columns = ["program", "budget", "questions", "accuracy", "95% interval", f"FLOPs{per}", f"tokens{per}"]
    rows = [
        [
            s.program,
            ""
            if s.budget is None
            else str(s.budget) + (f" (pool {s.pooled_from})" if s.pooled_from and not compact else ""),
            str(s.questions),
            f"{s.accuracy:.1%}",
            f"{s.low:.1%}–{s.high:.1%}",
            "" if s.flops is None else f"{s.flops:.3g}",
            f"{s.tokens:.0f}",
            *([str(s.failed)] if failures else []),
        ]
        for s in summaries
    ]
    return columns + (["failed"] if failures else []), rows


def dump_json(summaries: list[Summary]) -> str:
    return json.dumps([s.model_dump() for s in summaries], indent=1)
