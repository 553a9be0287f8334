"""The progress display of long commands: the time left, from the work the cost model expects
and the rate measured so far (checked as plain arithmetic on made-up numbers and a made-up
clock), and a display that stays off a pipe, stays off under -q, and survives Ctrl-C."""

import io

import pytest
from rich.console import Console
from rich.progress import Progress

import ttcl
from ttcl.cli.present import progress_bar
from ttcl.cli.progress import Meter, TimeLeftColumn, clock, time_left, work_per_question


def test_the_time_left_is_the_work_left_at_the_measured_rate():
    assert time_left(elapsed=10.0, done=2.0, total=10.0) == pytest.approx(40.0)
    assert time_left(elapsed=10.0, done=10.0, total=10.0) == 0.0
    # nothing measured yet: no guess
    assert time_left(elapsed=0.0, done=0.0, total=10.0) is None
    assert time_left(elapsed=5.0, done=0.0, total=10.0) is None


def test_work_done_before_a_resume_counts_as_done_but_not_in_the_rate():
    # 6 of 10 done, 4 of them by an earlier process: this one did 2 in 10 s, so 4 take 20 s
    assert time_left(elapsed=10.0, done=6.0, total=10.0, before=4.0) == pytest.approx(20.0)
    assert time_left(elapsed=10.0, done=4.0, total=10.0, before=4.0) is None


def test_weighing_questions_by_their_cost_foresees_a_costlier_budget():
    # an eval at budgets 1 and 16 of 5 questions each: budget 1 done in 5 s. Counted in
    # questions, half is done, so 5 s are left; weighed by cost (1 and 16 per question), 80 s
    questions = time_left(elapsed=5.0, done=5, total=10)
    work = time_left(elapsed=5.0, done=5 * 1.0, total=5 * 1.0 + 5 * 16.0)
    assert questions == pytest.approx(5.0) and work == pytest.approx(80.0)


def test_clock():
    assert clock(0) == "0:00:00" and clock(59.9) == "0:00:59" and clock(3725) == "1:02:05"


class Clock:
    """A made-up time for rich's progress."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_meter_shows_the_time_left_of_its_weighed_work():
    now = Clock()
    progress = Progress(console=Console(file=io.StringIO()), get_time=now)
    meter = Meter(progress, "questions", total=4, work=40.0)
    column = TimeLeftColumn()
    task = progress.tasks[0]
    meter.resumed(1, work=10.0)  # an earlier process's
    now.now += 30
    assert column.render(task).plain == "left -:--:--"  # nothing measured in this process yet
    meter.advance(work=5.0)  # 5 units in 30 s: the 25 left take 150 s
    assert column.render(task).plain == "left 0:02:30"
    assert task.completed == 2 and meter.items == 2
    meter.describe("majority n=16")
    assert task.description == "majority n=16"


def test_reach_takes_its_first_report_as_the_work_done_before():
    now = Clock()
    progress = Progress(console=Console(file=io.StringIO()), get_time=now)
    meter = Meter(progress, "labelling", total=10)
    meter.reach(4)  # resumed: 4 labelled by an earlier process
    now.now += 20
    meter.reach(6)  # 2 in 20 s: 4 left take 40 s
    assert TimeLeftColumn().render(progress.tasks[0]).plain == "left 0:00:40"


def test_the_bar_is_silent_off_a_terminal_and_under_quiet():
    for console in (Console(file=io.StringIO()), Console(file=io.StringIO(), force_terminal=True, quiet=True)):
        progress = progress_bar(console)
        with progress:
            Meter(progress, "questions", 3).advance()
        assert console.file.getvalue() == ""
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = progress_bar(terminal)
    with progress:
        meter = Meter(progress, "questions", 3)
        meter.advance()
        progress.refresh()
    assert "questions" in terminal.file.getvalue() and "left" in terminal.file.getvalue()


def test_ctrl_c_stops_the_bar_and_leaves_the_terminal_usable():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = progress_bar(terminal)
    with pytest.raises(KeyboardInterrupt), progress:
        Meter(progress, "questions", 3).advance()
        raise KeyboardInterrupt
    assert not progress.live.is_started
    shown = terminal.file.getvalue()
    assert "\x1b[?25h" in shown and shown.endswith("\x1b[2K")  # the cursor back, the bar erased


def test_work_per_question_is_the_cost_models_estimate_in_one_unit():
    text = 'model policy = llama("smollm2-135m", max_tokens=64)\nprogram main = sample({n}) |> vote\n'
    small, large = (ttcl.compile(text.format(n=n)) for n in (2, 8))
    flops = work_per_question([small, large])
    assert flops is not None and flops[1] > 2 * flops[0] > 0  # four times the samples
    # a model file whose facts cannot be read is priced in tokens, and so is every other
    unknown = ttcl.compile('model policy = llama("nowhere.gguf", max_tokens=64)\nprogram main = sample(2) |> vote\n')
    tokens = work_per_question([small, unknown])
    assert tokens == [small.cost(flops=False).expected.tokens, unknown.cost(flops=False).expected.tokens]
