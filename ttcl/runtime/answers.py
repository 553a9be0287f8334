"""Final answers: reading them from a candidate's text and comparing them, per answer kind.

A program's `answer` declaration names the kind (`number` by default, `math`, `choice`,
`regex`, or a Python extractor registered through the API); `answer_kind(decl)` gives its
`AnswerKind`, which votes and the grader share, so the answers a vote groups together are
exactly the answers the grader calls equal.

Numbers: "The answer is 12", "#### 12", "\\boxed{12}" and "Answer: 12" all give "12"; "1,200",
"1200.0" and "1.2e3" all normalize to "1200", so votes count them as one answer.
Normalization is total: any text gives a canonical text, never an error. Numbers are compared
exactly, by their decimal digits (never through a float, which would round 310-digit numbers
to infinity and 17-digit ones to their neighbours); "inf" and "nan" are not numbers here but
words, so "inf" equals "Infinity" and nothing else.

Mathematical answers (`math`) are compared by math-verify, the checker open-r1 and
search-and-learn grade MATH with: `\\frac{1}{2}`, `0.5` and `1/2` are one answer.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from ttcl.errors import TTCLError, UsageError

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+(?!\w|\.\d))?"  # 1.5e3 is one number, not 1.5
_ANY_NUMBER = re.compile(_NUMBER)
# An explicit final answer: "\boxed{...}", "#### ...", "The answer is ...", "Answer: ...".
_STATED = re.compile(r"####|\banswer\s*(?:is\b|:|=)|\\boxed\s*\{", re.I)
_PLACEHOLDER = re.compile(r"^\s*[*$(\[]*\s*[A-Z](?![\w+\-*/=])")  # "The answer is N." copied from a prompt

# A number as normalization reads it: sign, digits with an optional point, optional exponent.
_DECIMAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?", re.ASCII)
MAX_NUMBER_CHARS = 4000  # longer numbers are kept as text (and int("...") stops at 4300 digits)
MAX_PLAIN_DIGITS = 1000  # numbers needing more digits are written as 1.234e5678, exactly
MAX_ANSWER_CHARS = 400  # a stated answer longer than this is not an answer but a runaway text
MAX_BOX_CHARS = 2 * MAX_NUMBER_CHARS  # a box's contents are read this far, for its closing brace
MAX_MATH_CHARS = 1000  # longer answers are compared as text only: math-verify's parse is not linear
_WORDS = {"infinity": "inf", "+inf": "inf", "+infinity": "inf", "-infinity": "-inf", "+nan": "nan", "-nan": "nan"}


# ---- the kinds of answer -----------------------------------------------------------------


class AnswerKind:
    """How one kind of answer is read from a text and compared. `canonical` is a text that
    equal answers share where the kind has one; `same` is the equivalence votes and the grader
    use (by default: equal canonical texts)."""

    name = "number"

    def extract(self, text: str) -> str | None:
        """The final answer stated in `text`, or None if it states none."""
        return extract_answer(text)

    def canonical(self, answer: str) -> str:
        return normalize(answer)

    def same(self, a: str | None, b: str | None) -> bool:
        """Whether two answers are one (None equals nothing)."""
        return a is not None and b is not None and self.canonical(a) == self.canonical(b)

    def classes(self, answers: Sequence[str | None]) -> list[str | None]:
        """Each answer's class: the first answer in `answers` that is the same as it (None
        stays None), so grouping by the result groups equivalent answers."""
        firsts: dict[str, str] = {}  # canonical text -> its first answer
        out: list[str | None] = []
        for answer in answers:
            if answer is None:
                out.append(None)
                continue
            key = self.canonical(answer)
            if key not in firsts:
                firsts[key] = next((f for f in firsts.values() if self.same(f, answer)), answer)
            out.append(firsts[key])
        return out


class NumberAnswer(AnswerKind):
    """A number, compared exactly by its decimal value (`answer number`, the default)."""


class ChoiceAnswer(AnswerKind):
    """A multiple-choice letter among `letters`: "The answer is (B)", "Answer: B", "\\boxed{B}"."""

    name = "choice"

    def __init__(self, letters: str = "ABCDE"):
        self.letters = "".join(dict.fromkeys(letters.upper()))
        one = "[" + re.escape(self.letters) + "]"
        self._stated = re.compile(
            r"(?:\banswer\s*(?:is|:|=)?\s*:?|\\boxed\s*\{)\s*[*$]*\s*\(?\s*(" + one + r")\b", re.I
        )
        self._alone = re.compile(r"^\s*[*(\[]*\s*(" + one + r")\s*[)\].:*]*\s*$", re.I | re.M)

    def extract(self, text: str) -> str | None:
        found = self._stated.findall(text) or self._alone.findall(text)
        return found[-1].upper() if found else None

    def canonical(self, answer: str) -> str:
        letter = answer.strip().strip("()[]. *").upper()
        return letter if len(letter) == 1 else " ".join(answer.lower().split())


class RegexAnswer(AnswerKind):
    """The text of the last match of a pattern (its first group, else the whole match),
    compared after normalization."""

    name = "regex"

    def __init__(self, pattern: str):
        try:
            self.pattern = re.compile(pattern)
        except re.error as e:
            raise UsageError(f"answer regex({pattern!r}): not a valid regular expression: {e}") from None

    def extract(self, text: str) -> str | None:
        last = _last_match(self.pattern, text)
        if last is None:
            return None
        found = last.group(1) if self.pattern.groups else last.group(0)
        return None if found is None or not found.strip() else found.strip()[:MAX_ANSWER_CHARS]


class MathAnswer(AnswerKind):
    """A mathematical answer (LaTeX or plain), the last `\\boxed{}` or stated answer, else the
    last number; two are one when math-verify finds them equivalent."""

    name = "math"

    def extract(self, text: str) -> str | None:
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip() or None
        stated = _last_statement(text)
        if stated is not None:
            value = re.split(r"\n|\.(?:\s|$)", stated, maxsplit=1)[0].rsplit("=", 1)[-1]
            value = value.strip().strip("*$").strip()
            if _PLACEHOLDER.fullmatch(value):  # "The answer is N." copied from a prompt
                return None
            return value[:MAX_ANSWER_CHARS] or None
        numbers = _ANY_NUMBER.findall(text)
        return numbers[-1] if numbers else None

    def canonical(self, answer: str) -> str:
        return " ".join(answer.replace("$", "").split()).rstrip(".")

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        if self.canonical(a) == self.canonical(b) or normalize(a) == normalize(b):
            return True
        return _math_equal(self.canonical(a), self.canonical(b))


# name -> (extract(text) -> answer or None, same(a, b) -> bool or None)
REGISTERED: dict[str, tuple[Callable[[str], Any], Callable[[str, str], Any] | None]] = {}


def register_answer(
    name: str, extract: Callable[[str], str | None], same: Callable[[str, str], bool] | None = None
) -> None:
    """Make `extract(text) -> answer or None` available to programs as `answer registered("name")`;
    `same(a, b)` says when two answers are one (default: equal after normalization)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"register_answer: the name must be a non-empty string, not {name!r}")
    for what, fn in (("extract", extract), ("same", same)):
        if fn is not None and not callable(fn):
            raise UsageError(f"register_answer({name!r}, ...): {what} must be a function, not {type(fn).__name__}")
    REGISTERED[name] = (extract, same)


class RegisteredAnswer(AnswerKind):
    """A Python extractor (and optional equivalence) registered with `register_answer`."""

    name = "registered"

    def __init__(self, name: str):
        if name not in REGISTERED:
            raise TTCLError(f"no answer kind registered as {name!r}; call ttcl.register_answer(name, extract) first")
        self.registered, (self._extract, self._same) = name, REGISTERED[name]

    def extract(self, text: str) -> str | None:
        found = self._call(self._extract, text)
        if found is not None and not isinstance(found, str):
            raise TTCLError(
                f"registered answer {self.registered!r} returned {type(found).__name__}, not a string or None"
            )
        return found

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        return super().same(a, b) if self._same is None else bool(self._call(self._same, a, b))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # user code: reported as a program error, not a traceback
            raise TTCLError(f"registered answer {self.registered!r} failed: {type(e).__name__}: {e}") from e


def answer_kind(decl: dict | None = None) -> AnswerKind:
    """The kind an IR `answer` declaration names ({"kind": "math"}); None is `number`."""
    decl = decl or {"kind": "number"}
    kind = decl.get("kind")
    if kind == "math":
        return MathAnswer()
    if kind == "choice":
        return ChoiceAnswer(str(decl.get("letters", "ABCDE")))
    if kind == "regex":
        return RegexAnswer(str(decl.get("pattern", "")))
    if kind == "registered":
        return RegisteredAnswer(str(decl.get("name", "")))
    return NumberAnswer()


# ---- numbers ---------------------------------------------------------------------------------


def extract_answer(text: str) -> str | None:
    """The final number stated in `text`, normalized, or None if it states none.

    An explicit statement wins (boxed, `####`, "the answer is", "Answer:"), the last one: a
    box's contents, or the statement's number, or the result after its last "=" ("The answer
    is 2 + 3 = 5" is 5). A statement with a letter where the number belongs ("The answer is
    N.", copied from a prompt) states none. Without a statement the last number in the text is taken, as graders of GSM8K-style
    data do.
    """
    last = _last_match(_STATED, text)
    boxed = last_boxed(text) if last is not None and last.group(0).startswith("\\") else None
    if boxed is not None and boxed.strip():
        return normalize(boxed)  # a box holds the answer alone, whatever it is
    stated = _last_statement(text)
    if stated is not None:
        clause = re.split(r"\n|\.(?:\s|$)", stated, maxsplit=1)[0]
        if "=" in clause:
            clause = clause.rsplit("=", 1)[1]
        numbers = _ANY_NUMBER.findall(clause)
        if numbers:
            return normalize(numbers[0])
        if _PLACEHOLDER.match(clause) or not clause.strip():
            return None
    numbers = _ANY_NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else None


def _last_statement(text: str) -> str | None:
    """What follows the last explicit answer statement ("#### ", "The answer is", ...); for
    `\\boxed{...}` the box's contents."""
    last = _last_match(_STATED, text)
    if last is None:
        return None
    if last.group(0).startswith("\\"):
        return last_boxed(text[last.start() :]) or ""
    return text[last.end() : last.end() + MAX_NUMBER_CHARS + 100].lstrip(" :*")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 (the loop keeps the last)
        pass
    return found


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` in `text`, braces balanced, or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        brace = text.find("{", start)
        if brace != -1 and not text[start + 6 : brace].strip():
            depth = 0
            for i in range(brace, min(len(text), brace + MAX_BOX_CHARS)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[brace + 1 : i]
        start = text.rfind("\\boxed", 0, start)
    return None


def normalize(answer: str) -> str:
    """A canonical form: numbers without commas, currency, a sign on zero, leading or trailing
    zeros, as plain digits (up to MAX_PLAIN_DIGITS) or else `d.ddde±N`; other text lower-cased,
    its whitespace collapsed and a final period dropped. Never raises, and
    `normalize(normalize(a)) == normalize(a)`."""
    text = _trim(answer.replace("$", "").replace(",", ""))
    if not text.isascii():  # digits of other scripts ("٤٢") are numbers too
        text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    number = _number(text) if len(text) <= MAX_NUMBER_CHARS else None
    if number is not None:
        return number
    words = " ".join(text.lower().split())
    return _WORDS.get(words, words)


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two numbers (or texts) are equal after normalization (None equals nothing)."""
    return a is not None and b is not None and normalize(a) == normalize(b)


def _trim(text: str) -> str:
    """`text` without surrounding whitespace or a sentence's final periods ("12." is 12; the
    point of ".5" stays)."""
    end = len(text)
    while end and (text[end - 1] == "." or text[end - 1].isspace()):
        end -= 1
    return text[:end].lstrip()


def _number(text: str) -> str | None:
    """The canonical form of a decimal number, or None if `text` is not one."""
    match = _DECIMAL.fullmatch(text)
    if match is None:
        return None
    sign, whole, fraction, exponent = match.groups()
    fraction = fraction or ""
    if not whole and not fraction:  # "", ".", "e5", "-": no digits
        return None
    # value = digits * 10**scale, digits without leading or trailing zeros
    digits = (whole + fraction).lstrip("0")
    scale = (int(exponent) if exponent else 0) - len(fraction)  # exponent has < 4300 digits
    if not digits:
        return "0"
    stripped = digits.rstrip("0")
    scale += len(digits) - len(stripped)
    digits = stripped
    sign = "-" if sign == "-" else ""
    if scale >= 0:
        if len(digits) + scale <= MAX_PLAIN_DIGITS:
            return sign + digits + "0" * scale
    elif max(len(digits), -scale) + 1 <= MAX_PLAIN_DIGITS:
        point = len(digits) + scale  # digits before the point; <= 0: "0." and zeros first
        if point > 0:
            return f"{sign}{digits[:point]}.{digits[point:]}"
        return f"{sign}0.{'0' * -point}{digits}"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{scale + len(digits) - 1}"


# ---- math-verify -------------------------------------------------------------------------------

_LARGEST_EXPONENT = 10_000  # 2^{10000} is compared in microseconds; 2^{2^{30}} takes seconds
_LARGEST_FACTORIAL = 1_000
_MATH_LOCK = threading.Lock()  # sympy's caches are shared; one comparison at a time


def _math_equal(a: str, b: str) -> bool:
    """Whether math-verify finds two answers equivalent. Its timeouts use signal.alarm, which
    only the main thread may set, so they are off; instead an answer whose evaluation could
    run away (a tower of powers, a huge factorial) is compared as text only."""
    if max(len(a), len(b)) > MAX_MATH_CHARS:
        return False
    with _MATH_LOCK:
        parsed_a, parsed_b = _math_parse(a), _math_parse(b)
        if not parsed_a or not parsed_b:
            return False
        from math_verify import verify

        try:
            return bool(verify(list(parsed_a), list(parsed_b), timeout_seconds=None))
        except Exception:  # math-verify raises whatever sympy hit on a strange expression
            return False


@lru_cache(maxsize=4096)
def _math_parse(answer: str) -> tuple:
    """An answer parsed by math-verify, or () when it cannot be parsed or could run away."""
    try:
        from math_verify import parse
    except ImportError:
        raise UsageError("answer math needs the math-verify package (pip install math-verify)") from None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that timeouts are off
    try:
        parsed = parse(f"${answer}$", parsing_timeout=None)
    except Exception:
        return ()
    if not parsed or not all(_tame(p) for p in parsed[:1]):
        return ()
    return tuple(parsed)


def _tame(expr: Any) -> bool:
    """Whether evaluating a parsed answer is bounded: no power whose exponent is itself a
    power or beyond _LARGEST_EXPONENT, no factorial beyond _LARGEST_FACTORIAL."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return True
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            exponent = node.exp
            if exponent.has(sympy.Pow, sympy.factorial) or (exponent.is_Number and abs(exponent) > _LARGEST_EXPONENT):
                return False
        if isinstance(node, (sympy.factorial, sympy.gamma)):
            arg = node.args[0]
            if not arg.is_Number or abs(arg) > _LARGEST_FACTORIAL:
                return False
    return True
