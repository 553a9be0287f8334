"""Chat templates: the one function every backend renders a request's prompt with.

A model file carries its chat template (Jinja2 source, as Hugging Face writes it) and the
texts of its BOS and EOS tokens. `render_chat` applies the template to a request's messages
with the generation prompt and appends the request's `prefix`, so the llama.cpp and the torch
backend give the same prompt text for the same request and model; where their tokenizers
agree, the same prompt tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ttcl.backends.base import BackendError, GenerationRequest


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> Any:
    """A chat template compiled in jinja2's immutable sandbox (templates come from model files:
    they are data, never executed as Python)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:  # Hugging Face templates call this
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render_chat(
    template: str | None, request: GenerationRequest, name: str, bos_token: str = "", eos_token: str = ""
) -> str:
    """The prompt text for a request: the chat `template` applied to its messages with the
    generation prompt (`bos_token` and `eos_token` are the texts the template may write), then
    the prefix. A model without a template (a base model) gets plain "role: content" lines.
    `name` names the model in errors."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    if template is None:
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant: "]) + request.prefix
    try:
        text = compile_template(template).render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )
    except Exception as e:  # a template error is the model file's fault, not the program's
        raise BackendError(f"model {name}: its chat template failed: {e}") from None
    return text + request.prefix


def prompt_tokens(tokenize: Callable[[str, bool], list[int]], text: str, room: int, n_ctx: int, name: str) -> list[int]:
    """A rendered prompt's tokens (control tokens parsed), checked against `n_ctx` with room
    for `room` generated tokens: the same errors on every backend."""
    tokens = tokenize(text, True)
    if not tokens:
        raise BackendError(f"model {name}: the prompt is empty")
    if len(tokens) + room > n_ctx:
        raise BackendError(
            f"model {name}: context overflow: the prompt has {len(tokens)} tokens and "
            f"max_tokens is {room}: {len(tokens) + room} > n_ctx {n_ctx}"
        )
    return tokens


def first_token(tokenize: Callable[[str, bool], list[int]], option: str, name: str) -> int:
    """The first token of an option string (what `next_token_probs` reads)."""
    tokens = tokenize(option, False)
    if not tokens:
        raise BackendError(f"model {name}: the option {option!r} has no tokens")
    return tokens[0]
