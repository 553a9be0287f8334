"""Question sets: the built-in arithmetic generator, and JSONL files such as GSM8K.

`load("arith", limit=100, seed=0)`, `load("arith:3", ...)` or `load("arith:1..3", ...)` draws
built-in questions (a range may also be written `arith:1-3`);
`load("path.jsonl")` reads one object per line: {"question", "answer"}, where an answer may be
GSM8K's worked solution ending in "#### 72", or MATH's {"problem", "solution"} (the final
answer is the solution's last `\\boxed{...}`, or an "answer" field where the line has one);
other field names are chosen with `fields=Fields("prompt", "target")`. Answers are kept as
written: the program's answer kind compares them. A malformed line is reported with its line
number, and either skipped (with a warning, counted) or fatal (`strict=True`).

`arith(n, level, seed)` draws distinct questions of one level (1 to 5), each with its answer
computed by Python, so grading is exact:

    1  sums of two or three one-digit numbers           What is 3 + 8 + 5?
    2  two-digit addition and subtraction               What is 47 - 18?
    3  two operations, one a product                    What is 12 * 7 + 5?
    4  multi-step expressions with parentheses          What is (23 + 17) * 3 - 12?
    5  short word problems of two or three steps        A shop has 48 apples...

Every level has several hundred distinct questions or more (`SIZES`: 810 at level 1); the same
seed gives the same questions in the same order, and asking for more than a level has is
refused at once.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ttcl.errors import UsageError
from ttcl.runtime.answers import last_boxed
from ttcl.source import parse_json, read_regular_file

LEVELS = (1, 2, 3, 4, 5)
# the distinct questions of each level, counted from its maker's ranges below:
# 9² + 9³; 90·90 sums + 90·91/2 differences; 18·8·2·50; 40·48·2·5·2·30; 10·8·71·18·4·10·2
SIZES = {1: 810, 2: 12195, 3: 14400, 4: 1_152_000, 5: 8_179_200}
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$")

MAX_DATASET_BYTES = 1 << 30  # a dataset file (GSM8K's train split is 4 MB)


@dataclass(frozen=True)
class Fields:
    """Which fields of a JSONL line hold the question and the answer; None tries the usual
    names in turn ("question" then "problem"; "answer" then "solution")."""

    question: str | None = None
    answer: str | None = None

    def question_of(self, item: dict) -> tuple[str, object]:
        return _field(item, (self.question,) if self.question else ("question", "problem"))

    def answer_of(self, item: dict) -> tuple[str, object]:
        return _field(item, (self.answer,) if self.answer else ("answer", "solution"))


def _field(item: dict, names: tuple[str, ...]) -> tuple[str, object]:
    """The first of `names` the item has, and its value (the first name and None if none)."""
    name = next((n for n in names if n in item), names[0])
    return name, item.get(name)


@dataclass
class Dataset:
    """Questions ({"question", "answer", and "level" for arith}) and the lines skipped."""

    name: str
    questions: list[dict]
    skipped: list[str] = field(default_factory=list)  # "path:line: why", one per bad line


def load(
    spec: str, limit: int | None = None, seed: int = 0, strict: bool = False, fields: Fields = Fields()
) -> Dataset:
    """A dataset by name: "arith" (levels 1 to 5 in turn), "arith:N" (level N), "arith:1..2"
    (levels 1 and 2 in turn; "arith:1-2" reads the same), or a JSONL file (its `fields`).
    `limit` keeps the first questions; for arith, as many are drawn."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be positive, not {limit}")
    if spec == "arith" or spec.startswith("arith:"):
        name = canonical_name(spec)
        return Dataset(name, _arith_levels(arith_levels(spec), name, limit or 100, seed))
    data = read_jsonl(spec, strict, fields=fields)
    data.questions = data.questions[:limit]
    return data


def arith_levels(spec: str) -> range:
    """The levels of "arith" (1 to 5), "arith:N" (N) or "arith:A..B" (A to B; "arith:A-B" is
    read the same), or a `UsageError` saying how a range is written."""
    levels = spec.partition(":")[2] or "1..5"
    low, between, high = levels.partition(".." if ".." in levels else "-")
    high = high if between else low
    if not (low.isdigit() and high.isdigit() and int(low) in LEVELS and int(high) in LEVELS and int(low) <= int(high)):
        raise UsageError(
            f"unknown dataset {spec!r}: arith levels are arith:1 to arith:5, or a range of them such as arith:1..3"
        )
    return range(int(low), int(high) + 1)


def canonical_name(spec: str) -> str:
    """A dataset's name as messages and file names write it: an arith range as "arith:A..B"
    however it was given; any other name as it is."""
    if not spec.startswith("arith:"):
        return spec
    try:
        levels = arith_levels(spec)
    except UsageError:
        return spec  # `load` says what is wrong with it
    return f"arith:{levels[0]}" + (f"..{levels[-1]}" if len(levels) > 1 else "")


def _arith_levels(levels: range, name: str, n: int, seed: int) -> list[dict]:
    """n questions of `levels`, several interleaved so any prefix covers them all."""
    most = len(levels) * min(SIZES[level] for level in levels)
    if n > most:
        fewest = min(levels, key=lambda level: SIZES[level])
        raise UsageError(
            f"--limit {n} is more than {name} has: level {fewest} has {SIZES[fewest]} distinct questions"
            + (f", so {name} (levels interleaved) has at most {most}" if len(levels) > 1 else "")
        )
    per_level = [arith(-(-n // len(levels)), level, seed) for level in levels]
    return [q for group in zip(*per_level) for q in group][:n]


def read_jsonl(path: str, strict: bool = False, need_answers: bool = True, fields: Fields = Fields()) -> Dataset:
    """Questions from a JSONL file, one object per line (blank lines are fine): its `fields`,
    by default {"question", "answer"} or MATH's {"problem", "solution"}; each question also
    holds its "line" number, for messages. A GSM8K answer's "#### N" and a solution's last
    `\\boxed{...}` are its final answer. Without `need_answers` an answer is optional (None
    where absent)."""
    if not os.path.lexists(path):
        raise UsageError(f"dataset not found: {path} (use arith, arith:N, a range such as arith:1..3, or a JSONL file)")
    try:  # a regular file of bounded size: /dev/zero or a FIFO would never end
        lines = read_regular_file(path, MAX_DATASET_BYTES, "datasets").decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    data = Dataset(path, [])
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data.questions.append({**_question(line, need_answers, fields), "line": number})
        except ValueError as e:
            problem = f"{path}:{number}: {e}"
            if strict:
                raise UsageError(problem) from None
            data.skipped.append(problem)
    if not data.questions:
        raise UsageError(f"{path}: no questions" + (f" ({len(data.skipped)} bad lines)" if data.skipped else ""))
    return data


def _question(line: str, need_answer: bool, fields: Fields) -> dict:
    item = parse_json(line)  # a NotJSON is a ValueError, which the caller places
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object")
    name, question = fields.question_of(item)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f'expected a "{name}" string' + ("" if fields.question else ' (or "problem")'))
    name, answer = fields.answer_of(item)
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is None and not need_answer:
        return {"question": question, "answer": None}
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f'expected an "{name}" (a string or a number)' + ("" if fields.answer else ' or a "solution"'))
    return {"question": question, "answer": final_answer(answer)}


def final_answer(answer: str) -> str:
    """The final answer of a reference answer: GSM8K's "#### N", else a worked solution's
    last `\\boxed{...}`, else the whole text (stripped)."""
    gsm8k = _GSM8K_ANSWER.search(answer)
    if gsm8k:
        return gsm8k.group(1)
    boxed = last_boxed(answer)
    return boxed.strip() if boxed and boxed.strip() else answer.strip()


def arith(n: int, level: int, seed: int = 0) -> list[dict]:
    """n distinct questions of `level`, as {"question", "answer", "level"} dicts."""
    if level not in LEVELS:
        raise ValueError(f"arith levels are 1 to 5, not {level}")
    if n > SIZES[level]:  # drawing could never find them all
        raise UsageError(f"arith level {level} has fewer than {n} distinct questions (it has {SIZES[level]})")
    rng = random.Random(f"arith:{level}:{seed}")
    make = _MAKERS[level - 1]
    seen: dict[str, int] = {}
    for _ in range(100 * n):  # far more draws than finding n of SIZES[level] questions takes
        if len(seen) == n:
            break
        question, answer = make(rng)
        seen.setdefault(question, answer)
    if len(seen) < n:
        raise UsageError(f"arith level {level}: found only {len(seen)} of {n} distinct questions")
    return [{"question": q, "answer": str(a), "level": level} for q, a in seen.items()]


def _sums(rng: random.Random) -> tuple[str, int]:
    terms = [rng.randint(1, 9) for _ in range(rng.choice((2, 3)))]
    return f"What is {' + '.join(map(str, terms))}?", sum(terms)


def _two_digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def _two_operations(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(2, 19), rng.randint(2, 9), rng.randint(1, 50)
    op = rng.choice("+-")
    expr = f"{a} * {b} {op} {c}"
    return f"What is {expr}?", eval(expr)  # noqa: S307 (our own digits and operators)


def _parentheses(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = rng.randint(10, 49), rng.randint(2, 49), rng.randint(2, 6), rng.randint(1, 30)
    expr = f"({a} {rng.choice('+-')} {b}) * {c} {rng.choice('+-')} {d}"
    return f"What is {expr}?", eval(expr)  # noqa: S307


_THINGS = ("apples", "books", "marbles", "stickers", "cookies", "pencils", "coins", "cards")
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo")


def _word_problem(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    start, lost, boxes, per_box = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 5), rng.randint(3, 12)
    lost = min(lost, start - 1)
    if rng.random() < 0.5:
        question = (
            f"{name} has {start} {thing}. {name} gives away {lost}, then buys {boxes} packs "
            f"of {per_box} {thing}. How many {thing} does {name} have now?"
        )
        return question, start - lost + boxes * per_box
    question = (
        f"{name} buys {boxes} packs of {per_box} {thing} and already had {start}. "
        f"Then {name} gives away {lost}. How many {thing} does {name} have now?"
    )
    return question, boxes * per_box + start - lost


_MAKERS: tuple[Callable[[random.Random], tuple[str, int]], ...] = (
    _sums,
    _two_digit,
    _two_operations,
    _parentheses,
    _word_problem,
)
