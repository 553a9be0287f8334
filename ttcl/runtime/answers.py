"""Final answers: extracting them from a candidate's text and normalizing them for comparison.

"The answer is 12", "#### 12", "\\boxed{12}" and "Answer: 12" all give "12"; "1,200",
"1200.0" and "1.2e3" all normalize to "1200", so votes count them as one answer.

Normalization is total: any text gives a canonical text, never an error. Numbers are compared
exactly, by their decimal digits (never through a float, which would round 310-digit numbers
to infinity and 17-digit ones to their neighbours); "inf" and "nan" are not numbers here but
words, so "inf" equals "Infinity" and nothing else.
"""

from __future__ import annotations

import re
import unicodedata

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+(?!\w|\.\d))?"  # 1.5e3 is one number, not 1.5
_PATTERNS = [
    re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}"),
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"answer\s*(?:is|:|=)?\s*:?\s*\**\s*(" + _NUMBER + ")", re.I),
]
_ANY_NUMBER = re.compile(_NUMBER)

# A number as normalization reads it: sign, digits with an optional point, optional exponent.
_DECIMAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?", re.ASCII)
MAX_NUMBER_CHARS = 4000  # longer numbers are kept as text (and int("...") stops at 4300 digits)
MAX_PLAIN_DIGITS = 1000  # numbers needing more digits are written as 1.234e5678, exactly
_WORDS = {"infinity": "inf", "+inf": "inf", "+infinity": "inf", "-infinity": "-inf", "+nan": "nan", "-nan": "nan"}


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`, normalized, or None if it states none.

    Explicit forms win (boxed, `####`, "the answer is"), the last occurrence first; otherwise
    the last number in the text is taken, as graders of GSM8K-style data do.
    """
    for pattern in _PATTERNS:
        found = pattern.findall(text)
        if found:
            return normalize(found[-1])
    numbers = _ANY_NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else None


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
    """Whether two answers are equal after normalization (None equals nothing)."""
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
