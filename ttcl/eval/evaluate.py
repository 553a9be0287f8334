"""`ttcl eval`: run programs over a dataset, grade every answer, and summarize per budget.

Each finished question is appended to the results file (JSONL, one `Record` per line) and
flushed at once, so an interrupted eval loses nothing it finished; `resume` skips what the
file already holds and runs the rest. Ctrl-C stops the batch in flight: questions it had not
finished are not written, and run again on resume. A question's result does not depend on
which questions share its batch (the runtime's seeds and the backend are batch-invariant),
so a resumed eval gives what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ConfigDict, ValidationError

from ttcl.errors import UsageError
from ttcl.program import Program
from ttcl.results import Result
from ttcl.runtime.answers import same_answer


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

    @property
    def key(self) -> tuple[str, int | None, int]:
        return (self.program, self.budget, self.index)


class Summary(BaseModel):
    """Accuracy (with a 95% Wilson interval) and mean cost of one program at one budget."""

    program: str
    budget: int | None
    questions: int
    correct: int
    accuracy: float
    low: float
    high: float
    flops: float | None  # mean per question
    tokens: float


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
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(Record.model_validate_json(line))
        except ValidationError:
            if number == len(lines):
                break  # the write a killed process left half done: that question runs again
            raise UsageError(f"{path}:{number}: not an eval record; is this a `ttcl eval` results file?") from None
    return records


class Eval:
    """Runs programs over questions at budgets, appending a `Record` per finished question.

    `on_record(record)` is called after each is written (for a progress display)."""

    def __init__(
        self,
        path: str | Path,
        questions: list[dict],
        seed: int = 0,
        resume: bool = False,
        backend=None,
        on_record: Callable[[Record], None] | None = None,
    ):
        self.path = Path(path)
        self.questions = questions
        self.seed = seed
        self.backend = backend
        self.on_record = on_record or (lambda record: None)
        if self.path.exists() and self.path.stat().st_size and not resume:
            raise UsageError(
                f"{self.path} already holds results: --resume to continue it, or choose "
                "another --output (nothing is overwritten)"
            )
        self.records = read_records(self.path) if resume else []
        self._truncate_torn_line()

    def _truncate_torn_line(self) -> None:
        """Rewrite the file without a torn last line, so appends start on a line of their own."""
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                self.path.write_text("".join(r.model_dump_json() + "\n" for r in self.records), encoding="utf-8")

    def run(self, program: Program, label: str, budget: int | None = None, param: str | None = None) -> bool:
        """Run `program` (with `param` bound to `budget`, if a param is named) on every question
        not yet recorded for (label, budget). Returns False if it was interrupted."""
        bound = program.bind(**{param: budget}) if param is not None and budget is not None else program
        probes = {n for n, op in bound.graph.nodes(data="op") if op == "difficulty"}
        done = {r.key for r in self.records}
        todo = [i for i in range(len(self.questions)) if (label, budget, i) not in done]
        if not todo:
            return True
        interrupted = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sink = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{self.path}: cannot write: {e.strerror or e}") from None
        with sink:

            def write(position: int, result: Result) -> None:
                nonlocal interrupted
                if result.stopped == "interrupted":
                    interrupted = True
                    return  # unfinished: it runs again on resume
                record = self._record(label, budget, todo[position], result, probes)
                sink.write(record.model_dump_json() + "\n")
                sink.flush()
                os.fsync(sink.fileno())  # a killed process keeps every line it reported
                self.records.append(record)
                self.on_record(record)

            bound.run_many([self.questions[i] for i in todo], seed=self.seed, backend=self.backend, on_result=write)
        return not interrupted

    def _record(self, label: str, budget: int | None, index: int, result: Result, probes: set[int]) -> Record:
        q = self.questions[index]
        scores = [e.detail["mean_score"] for e in result.trace if e.event == "difficulty"]
        probed = [same_answer(c.answer, q["answer"]) for c in result.candidates if c.node in probes]
        return Record(
            program=label,
            budget=budget,
            index=index,
            question=q["question"],
            expected=q["answer"],
            answer=result.answer,
            correct=same_answer(result.answer, q["answer"]),
            level=q.get("level"),
            bin=result.bin,
            difficulty=scores[0] if scores else None,
            probe_accuracy=sum(probed) / len(probed) if probed else None,
            flops=result.cost.flops,
            tokens=result.cost.tokens,
            generations=result.cost.generations,
            seed=result.seed,
            elapsed_s=result.elapsed_s,
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
    low, high = wilson(correct, n)
    flops = None if any(r.flops is None for r in records) else sum(cast(float, r.flops) for r in records) / n
    return Summary(
        program=program,
        budget=budget,
        questions=n,
        correct=correct,
        accuracy=correct / n,
        low=low,
        high=high,
        flops=flops,
        tokens=sum(r.tokens for r in records) / n,
    )


def plot(summaries: list[Summary], path: str, title: str = "") -> None:
    """Accuracy against FLOPs per question (log scale), a line per program with its 95%
    interval, as the paper's figures show strategies."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    lines: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.flops is not None:
            lines[s.program].append(s)
    if not lines:
        raise UsageError("--plot needs measured FLOPs, and no result has them")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for program, points in lines.items():
        # only summaries with measured FLOPs were kept
        points.sort(key=lambda s: cast(float, s.flops))
        xs = [cast(float, s.flops) for s in points]
        ax.plot(xs, [s.accuracy for s in points], marker="o", label=program)
        ax.fill_between(xs, [s.low for s in points], [s.high for s in points], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per question")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def markdown(summaries: list[Summary], by_bin: dict[int, list[Summary]], title: str) -> str:
    """A Markdown report: the table per program and budget, then per bin."""
    lines = [f"# {title}", "", _md_table(summaries)]
    for key, rows in by_bin.items():
        lines += ["", f"## bin {key}", "", _md_table(rows)]
    return "\n".join(lines) + "\n"


def _md_table(summaries: list[Summary]) -> str:
    rows = [
        "| program | budget | questions | accuracy | 95% interval | FLOPs/question | tokens/question |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        flops = "" if s.flops is None else f"{s.flops:.3g}"
        rows.append(
            f"| {s.program} | {'' if s.budget is None else s.budget} | {s.questions} | {s.accuracy:.1%} | "
            f"{s.low:.1%}–{s.high:.1%} | {flops} | {s.tokens:.0f} |"
        )
    return "\n".join(rows)


def dump_json(summaries: list[Summary]) -> str:
    return json.dumps([s.model_dump() for s in summaries], indent=1)
