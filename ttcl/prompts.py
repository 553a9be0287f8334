"""Prompts: the chat messages a generator or a verifier sends for a question.

A generator's user message is, in order of precedence: its own `prompt=`, the `answer`
declaration's `prompt=`, or the default written for the program's answer kind. A template's
`{question}` hole takes the question and `{attempts}` the previous attempts (revisions, or a
Pool fed to a generator).

The defaults name no placeholder: asked to "finish with 'The answer is N.'", a small model
copies the N. The `number` default was chosen on held-out arithmetic (bench/prompts.py).
"""

from __future__ import annotations

from ttcl.backends.base import Message

# The default solve prompt of each answer kind (`answer number` is the default kind).
SOLVE_PROMPTS = {
    "number": "Calculate: {question}\nShow the calculation, then write the result.",
    "math": (
        "{question}\n\nSolve it step by step. Put the final answer, in simplest form, in \\boxed{{}}, "
        "for example: the answer is $\\boxed{{\\frac{{3}}{{4}}}}$."
    ),
    "choice": (
        "{question}\n\nThink step by step, then finish with the letter of the correct option, "
        "for example: The answer is (B)."
    ),
    "regex": "{question}\n\nSolve it step by step.",
    "registered": "{question}\n\nSolve it step by step.",
}
SOLVE = SOLVE_PROMPTS["number"]
REVISE = (
    "{question}\n\nHere are earlier attempts, which may contain mistakes:\n\n{attempts}\n\n"
    'Write a new, correct solution step by step. End with a line "The answer is" followed by the final answer.'
)
# The context a trained PRM head reads hidden states in: the prompt the shipped head (and any
# head `ttcl train-prm` makes) was trained with, kept as it was so heads stay valid.
HEAD_CONTEXT = '{question}\n\nSolve it step by step, one short step per paragraph. Finish with "The answer is N."'
VERIFY = (
    "Question: {question}\n\nPartial solution:\n{steps}\n\nIs the last step of this solution correct? Answer Yes or No."
)
DEFAULT_DELIMITER = "\n\n"


def solve_template(params: dict, prompts: dict[str, str], answer: dict) -> str | None:
    """The template a generator node uses: its own `prompt=`, else the answer declaration's,
    else None (the default of the answer kind)."""
    name = params.get("prompt") or answer.get("prompt")
    return prompts.get(str(name)) if name else None


def solve_messages(
    question: str, attempts: list[str], template: str | None = None, kind: str = "number"
) -> tuple[Message, ...]:
    """The user message for a generator: the template (or the default for the answer kind)
    with its holes filled."""
    shown = "\n\n".join(f"Attempt {i + 1}:\n{a.strip()}" for i, a in enumerate(attempts))
    if template is None:
        template = REVISE if attempts else SOLVE_PROMPTS.get(kind, SOLVE)
    return (Message(role="user", content=template.format(question=question, attempts=shown)),)


def head_messages(question: str) -> tuple[Message, ...]:
    """The context a trained PRM head scores a solution's steps in (see HEAD_CONTEXT)."""
    return (Message(role="user", content=HEAD_CONTEXT.format(question=question)),)


def verify_messages(question: str, steps: list[str]) -> tuple[Message, ...]:
    """The self-verification question about the last of `steps`."""
    text = "\n\n".join(s.strip() for s in steps)
    return (Message(role="user", content=VERIFY.format(question=question, steps=text)),)


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """A solution's steps: the non-empty pieces between delimiters."""
    return [s for s in (p.strip() for p in text.split(delimiter)) if s] or [text.strip()]
