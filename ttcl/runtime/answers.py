"""Final answers: extracting them from a candidate's text and normalizing them for comparison.

"The answer is 12", "#### 12", "\\boxed{12}" and "Answer: 12" all give "12"; "1,200" and
"1200.0" both normalize to "1200", so votes count them as one answer.
"""

from __future__ import annotations

import re

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_PATTERNS = [
    re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}"),
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"answer\s*(?:is|:|=)?\s*:?\s*\**\s*(" + _NUMBER + ")", re.I),
]
_ANY_NUMBER = re.compile(_NUMBER)


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
    """A canonical form: numbers without commas, currency or trailing zeros; other text
    lower-cased and stripped."""
    text = answer.strip().strip(".").replace("$", "").replace(",", "").strip()
    try:
        value = float(text)
    except ValueError:
        return " ".join(text.lower().split())
    if value == int(value):
        return str(int(value))
    return repr(value)


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two answers are equal after normalization (None equals nothing)."""
    return a is not None and b is not None and normalize(a) == normalize(b)
