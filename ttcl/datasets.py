"""Question sets: the built-in arithmetic generator, with difficulty levels and exact answers.

`arith(n, level, seed)` draws distinct questions of one level (1 to 5), each with its answer
computed by Python, so grading is exact:

    1  sums of two or three one-digit numbers           What is 3 + 8 + 5?
    2  two-digit addition and subtraction               What is 47 - 18?
    3  two operations, one a product                    What is 12 * 7 + 5?
    4  multi-step expressions with parentheses          What is (23 + 17) * 3 - 12?
    5  short word problems of two or three steps        A shop has 48 apples...

Every level has several hundred distinct questions or more; the same seed gives the same
questions in the same order.
"""

from __future__ import annotations

import random
from typing import Callable

LEVELS = (1, 2, 3, 4, 5)


def arith(n: int, level: int, seed: int = 0) -> list[dict]:
    """n distinct questions of `level`, as {"question", "answer", "level"} dicts."""
    if level not in LEVELS:
        raise ValueError(f"arith levels are 1 to 5, not {level}")
    rng = random.Random(f"arith:{level}:{seed}")
    make = _MAKERS[level - 1]
    seen: dict[str, int] = {}
    while len(seen) < n:
        question, answer = make(rng)
        seen.setdefault(question, answer)
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
        question = (f"{name} has {start} {thing}. {name} gives away {lost}, then buys {boxes} packs "
                    f"of {per_box} {thing}. How many {thing} does {name} have now?")
        return question, start - lost + boxes * per_box
    question = (f"{name} buys {boxes} packs of {per_box} {thing} and already had {start}. "
                f"Then {name} gives away {lost}. How many {thing} does {name} have now?")
    return question, boxes * per_box + start - lost


_MAKERS: tuple[Callable[[random.Random], tuple[str, int]], ...] = (
    _sums, _two_digit, _two_operations, _parentheses, _word_problem)
