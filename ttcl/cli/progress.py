"""The time left in long commands (`eval`, `optimize`, `train-prm`, `run --questions`): the
work left at the rate measured so far.

Work is what the cost model expects each question to cost: FLOPs, or tokens where some program
cannot be priced in FLOPs, or one per question where none can be priced at all. Weighing by
it matters where the questions cost unlike amounts: an eval at budgets 1, 4 and 16 spends
most of its time on the last, and a count of questions would promise the end far too soon.
Work done before this process started (a resumed run) counts as done, not in the rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.text import Text

from ttcl.errors import TTCLError

if TYPE_CHECKING:
    from ttcl.program import Program


def time_left(elapsed: float, done: float, total: float, before: float = 0.0) -> float | None:
    """Seconds until `total` units of work are done: what is left of it, at the rate of the
    work done in `elapsed` seconds (`done` less what was done `before` this process started).
    None until some work was measured."""
    measured = done - before
    if elapsed <= 0 or measured <= 0:
        return None
    return max(0.0, total - done) * elapsed / measured


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def work_per_question(programs: Iterable[Program]) -> list[float] | None:
    """Each program's expected cost per question by the cost model, in one unit for all:
    FLOPs, else tokens; None where some program cannot be priced either way (every question
    then weighs the same)."""
    programs = list(programs)
    for unit in ("flops", "tokens"):
        try:
            amounts = [p.cost(flops=unit == "flops").expected.amount(unit) for p in programs]
        except TTCLError:  # a model without readable facts: try the next unit
            continue
        if all(a is not None and a > 0 for a in amounts):
            return [float(a) for a in amounts if a is not None]
    return None


class TimeLeftColumn(ProgressColumn):
    """`left 0:03:12`: the time left of a `Meter`'s task (`-:--:--` until it is measured)."""

    def render(self, task: Task) -> Text:
        fields = task.fields
        left = time_left(
            task.elapsed or 0.0, fields.get("work", 0.0), fields.get("work_total", 0.0), fields.get("before", 0.0)
        )
        return Text(f"left {'-:--:--' if left is None else clock(left)}", style="progress.remaining")


class Meter:
    """One task of a progress display: items (questions, records) done of `total`, each of
    the work the caller says (one unit each by default); `work` is the total of it."""

    def __init__(self, progress: Progress, description: str, total: int, work: float | None = None):
        self.progress = progress
        self.items = 0
        self.work = 0.0
        self.before = 0.0
        self.started = False  # whether `reach` has had its first report
        self.task: TaskID = progress.add_task(
            description, total=total, work=0.0, work_total=float(total if work is None else work), before=0.0
        )

    def resumed(self, items: int, work: float | None = None) -> None:
        """Items done before this process started (a resumed run): shown as done, left out of
        the rate the time left is measured by."""
        self.advance(items, work)
        self.before = self.work
        self.progress.update(self.task, before=self.before)

    def advance(self, items: int = 1, work: float | None = None) -> None:
        """`items` more done, of `work` units (one each if not said)."""
        self.items += items
        self.work += float(items if work is None else work)
        self.progress.update(self.task, advance=items, work=self.work)

    def reach(self, done: int) -> None:
        """`done` items in all, of one unit each. The first report says what was done before
        this process started; each later one, what it has done since."""
        if not self.started:
            self.started = True
            self.resumed(done)
        else:
            self.advance(done - self.items)

    def describe(self, text: str) -> None:
        """What runs now."""
        self.progress.update(self.task, description=text)
