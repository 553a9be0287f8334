"""Prompts: the chat messages a generator or a verifier sends for a question.

A `prompt` declaration replaces the default user message; its `{question}` hole takes the
question and `{attempts}` the previous attempts (revisions, or a Pool fed to a generator).
"""

from __future__ import annotations

from ttcl.backends.base import Message

SOLVE = '{question}\n\nSolve it step by step, one short step per paragraph. Finish with "The answer is N."'
REVISE = (
    "{question}\n\nHere are earlier attempts, which may contain mistakes:\n\n{attempts}\n\n"
    'Write a new, correct solution step by step. Finish with "The answer is N."'
)
VERIFY = (
    "Question: {question}\n\nPartial solution:\n{steps}\n\nIs the last step of this solution correct? Answer Yes or No."
)
DEFAULT_DELIMITER = "\n\n"


def solve_messages(question: str, attempts: list[str], template: str | None = None) -> tuple[Message, ...]:
    """The user message for a generator: the template (or the default) with its holes filled."""
    shown = "\n\n".join(f"Attempt {i + 1}:\n{a.strip()}" for i, a in enumerate(attempts))
    if template is None:
        template = REVISE if attempts else SOLVE
    return (Message(role="user", content=template.format(question=question, attempts=shown)),)


def verify_messages(question: str, steps: list[str]) -> tuple[Message, ...]:
    """The self-verification question about the last of `steps`."""
    text = "\n\n".join(s.strip() for s in steps)
    return (Message(role="user", content=VERIFY.format(question=question, steps=text)),)


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """A solution's steps: the non-empty pieces between delimiters."""
    return [s for s in (p.strip() for p in text.split(delimiter)) if s] or [text.strip()]
