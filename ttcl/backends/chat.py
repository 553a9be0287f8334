"""Chat templates: the one function every backend renders a request's prompt with.

A model file carries its chat template (Jinja2 source, as Hugging Face writes it) and the
texts of its BOS and EOS tokens. `render_chat` applies the template to a request's messages
with the generation prompt and appends the request's `prefix`, so the llama.cpp and the torch
backend give the same prompt text for the same request and model; where their tokenizers
agree, the same prompt tokens.

A template is untrusted data from a model file. It renders in jinja2's immutable sandbox (no
way to Python), bounded in time and size (`_bounded_environment`): one past the limits below
is a BackendError naming the model file and the limit, never a hang or a memory blow-up.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from ttcl.backends.base import BackendError, GenerationRequest, RequestError

# What one rendering of a chat template may do. A template comes from a model file, so it is
# untrusted data: jinja2's sandbox stops it reaching Python, and these stop it hanging a run or
# exhausting memory. Real templates render in milliseconds and stay far below them.
MAX_TEXT = 4_000_000  # characters in any value the template makes, and in the whole prompt
MAX_MADE = 64_000_000  # characters of all the values one render makes, together
MAX_STEPS = 500_000  # loop iterations, calls, filters, operators and outputs in one render
MAX_SECONDS = 10.0  # wall-clock time of one render
MAX_DEPTH = 64  # nesting of lists, dicts and namespaces
MAX_ITEMS = 250_000  # items in any value (all its lists and dicts, counted as printed)
MAX_INT_BITS = 16_384  # integers (about 4900 digits)


class TemplateLimitError(Exception):
    """A chat template went past one of the limits above while rendering."""


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> Any:
    """A chat template compiled in a bounded, immutable jinja2 sandbox (templates come from
    model files: they are data, never executed as Python, and bounded in time and size)."""

    def raise_exception(message: str) -> None:  # Hugging Face templates call this
        raise ValueError(message)

    env = _bounded_environment()(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render_template(source: str, **context: Any) -> str:
    """A chat template's text for `context`, within the limits above (else TemplateLimitError;
    a broken template raises what jinja2 raised)."""
    template = compile_template(source)
    return template.environment.render_bounded(template, context)


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
        text = render_template(
            template, messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )
    except TemplateLimitError as e:
        raise BackendError(
            f"model {name}: its chat template exceeded its limits: {e} (a chat template may render "
            f"for {MAX_SECONDS:g} s, {MAX_STEPS:,} steps and {MAX_TEXT:,} characters); the template "
            "in the model file is broken or hostile"
        ) from None
    except Exception as e:  # a template error is the model file's fault, not the program's
        raise BackendError(f"model {name}: its chat template failed: {e}") from None
    return text + request.prefix


def prompt_tokens(tokenize: Callable[[str, bool], list[int]], text: str, room: int, n_ctx: int, name: str) -> list[int]:
    """A rendered prompt's tokens (control tokens parsed), checked against `n_ctx` with room
    for `room` generated tokens: the same errors on every backend."""
    tokens = tokenize(text, True)
    if not tokens:
        raise RequestError(f"model {name}: the prompt is empty")
    if len(tokens) + room > n_ctx:
        raise RequestError(
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


# --------------------------------------------------------------------------- the bounded sandbox


_SCALARS = (int, float, bool, type(None))
_CONTAINERS: tuple[type[Collection[Any]], ...] = (
    list,
    tuple,
    set,
    frozenset,
    type({}.items()),
    type({}.keys()),
    type({}.values()),
)


def _measure(value: Any, limit: int) -> tuple[int, int, int]:
    """(about how many characters `value` prints as, how deeply it nests, how many items it
    has: lists, dicts and what they hold, each counted as often as it is printed), walked iteratively
    and given up past `limit` characters, MAX_ITEMS items or MAX_DEPTH levels (raising
    TemplateLimitError): so a value that shares one list many times over, or holds itself, is
    refused before it is printed, compared or hashed, and no walk takes long."""
    if isinstance(value, str):  # the common cases, at once
        if len(value) > limit:
            raise TemplateLimitError(f"a value of more than {limit:,} characters")
        return len(value), 0, 1
    if type(value) in _SCALARS and (type(value) is not int or value.bit_length() <= MAX_INT_BITS):
        return 5, 0, 1
    Undefined, Namespace = _jinja_types()
    total, deepest, items = 0, 0, 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            raise TemplateLimitError(f"a value of more than {MAX_ITEMS:,} items")
        deepest = max(deepest, depth)
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, bool) or item is None or isinstance(item, (float, Undefined)):
            total += 5
        elif isinstance(item, int):
            if item.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Namespace):
            stack.append((object.__getattribute__(item, "_Namespace__attrs"), depth))
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend((child, depth + 1) for child in itertools.chain.from_iterable(item.items()))
        elif isinstance(item, _CONTAINERS):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend((child, depth + 1) for child in item)
        else:  # functions, macros, loop contexts, ranges: short to print
            total += 8
        if total > limit:
            raise TemplateLimitError(f"a value of more than {limit:,} characters")
        if deepest > MAX_DEPTH:
            raise TemplateLimitError(f"a value nested more than {MAX_DEPTH} levels deep")
    return total, deepest, items


@functools.lru_cache(maxsize=1)
def _jinja_types() -> tuple[type, type]:
    from jinja2.runtime import Undefined
    from jinja2.utils import Namespace

    return Undefined, Namespace


def _size(value: Any) -> int:
    return _measure(value, MAX_TEXT)[0]


def _number(value: Any) -> int:
    """An integer argument as a size (0 for anything else)."""
    return abs(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _format_size(fmt: str, values: Any) -> int:
    """An upper bound on `fmt % values` or `fmt.format(*values)`: the format, every value, and
    every number that may be a field width (in the format or among the values)."""
    items = (
        list(values.values()) if isinstance(values, dict) else list(values) if isinstance(values, tuple) else [values]
    )
    widths = sum(int(digits) if len(digits) < 12 else 10**12 for digits in re.findall(r"\d+", fmt))
    return len(fmt) + widths + sum(_size(v) + _number(v) for v in items)


def _replace_size(s: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(0, len(new) - len(old))


def _join_size(separator: Any, items: Any) -> int:
    try:
        n = len(items)
    except TypeError:  # an iterator: its items are checked as they are made
        return 0
    return len(separator) * max(0, n - 1) + _size(items) if isinstance(separator, str) else 0


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _filter_size(name: str, args: tuple, kwargs: dict) -> int:
    """An upper bound on what the filter `name` makes (or the work it does), for the filters
    whose result can be much larger than their arguments; 0 for the rest."""
    a = functools.partial(_arg, args, kwargs)
    if name == "replace":
        return _replace_size(a(0, "s"), a(1, "old"), a(2, "new"), a(3, "count"))
    if name == "join":
        return _join_size(a(1, "d", ""), a(0, "value"))
    if name == "indent":
        s, width = a(0, "s", ""), a(1, "width", 4)
        step = len(width) if isinstance(width, str) else _number(width)
        return len(s) + (s.count("\n") + 1) * step if isinstance(s, str) else 0
    if name == "wordwrap":
        s, width, wrap = a(0, "s", ""), _number(a(1, "width", 79)) or 1, a(3, "wrapstring") or "\n"
        lines = len(s) // width + s.count("\n") + 1 if isinstance(s, str) else 0
        return len(s) + lines * len(wrap) if isinstance(s, str) and isinstance(wrap, str) else 0
    if name == "format" and args and isinstance(args[0], str):
        return _format_size(args[0], kwargs if kwargs else tuple(args[1:]))
    if name in ("tojson", "pprint"):  # an item a line, indented by its depth
        size, depth, items = _measure(a(0, "value"), MAX_TEXT)
        indent = a(1, "indent") if name == "tojson" else 1
        step = len(indent) if isinstance(indent, str) else _number(indent)
        return size + items * (2 + step * depth)
    if name == "sum":
        start, items = a(2, "start", 0), a(0, "iterable")
        if not isinstance(start, (int, float)):  # sums of lists or strings copy at every step
            return _size(items) * (len(items) if hasattr(items, "__len__") else MAX_TEXT)
    return 0


def _method_size(method: Any, args: tuple, kwargs: dict) -> int:
    """The same for the str methods that can make much more than they are given."""
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if not isinstance(owner, str):
        return 0
    a = functools.partial(_arg, args, kwargs)
    if name == "replace":
        return _replace_size(owner, a(0, "old"), a(1, "new"), a(2, "count"))
    if name == "join":
        return _join_size(owner, a(0, "iterable", ()))
    if name == "expandtabs":
        return len(owner) + owner.count("\t") * _number(a(0, "tabsize", 8))
    return 0


@functools.lru_cache(maxsize=1)
def _bounded_environment() -> type:
    """The jinja2 environment chat templates render in (made on first use: jinja2 is imported
    only by the commands that render prompts).

    It is jinja2's immutable sandbox, with every way a template could run long or allocate
    much passing a check: loops, calls (macros and methods), filters, tests, arithmetic,
    `~`, comparisons, dict keys and every output count as steps against MAX_STEPS and the
    render's deadline; their arguments are measured (`_measure`), and their results too, which
    count against MAX_MADE (a lazy filter's items as they come); the operations whose result
    can be much larger than their arguments (`'x' * n`, `** n`, `%`, `format`, `replace`,
    `join`, `indent`, `center(n)`, ...) are refused before they run when that result would
    pass MAX_TEXT; and the output of a render is at most MAX_TEXT."""
    from jinja2 import nodes, pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import _PassArg

    class Budget(threading.local):
        deadline: float | None = None  # None outside a render (while compiling)
        steps = 0
        output = 0
        made = 0

    class Counted:
        """An iterable whose iteration counts steps (what a `{% for %}` loops over)."""

        def __init__(self, env: BoundedEnvironment, iterable: Iterable):
            self.env, self.iterable = env, iterable

        def __len__(self) -> int:
            return len(self.iterable)  # type: ignore[arg-type]  # TypeError: the loop counts itself

        def __iter__(self) -> Iterator:
            for item in self.iterable:
                self.env.tick()
                yield item

    def produced(env: BoundedEnvironment, iterator: Iterator) -> Iterator:
        """A lazy filter's items (`map`, `select`, `batch`, ...), each checked as it comes."""
        for item in iterator:
            yield env.made(item)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

        def __init__(self, **options: Any):
            super().__init__(**options)
            self.budget = Budget()
            self.globals.pop("lipsum", None)  # lorem ipsum of any length: no template needs it
            filters: dict[str, Any] = self.filters  # checks on every filter and test
            tests: dict[str, Any] = self.tests
            self.filters = {name: self._bounded(name, f) for name, f in filters.items()}
            self.tests = {name: self._bounded(name, f) for name, f in tests.items()}
            self.filters["_ttcl_loop"] = pass_context(lambda _, iterable: Counted(self, iterable))
            self.filters["_ttcl_value"] = pass_context(lambda _, value: self.checked(value))
            self.filters["_ttcl_part"] = pass_context(lambda _, value: self.made(value))
            self.filters["_ttcl_output"] = pass_context(lambda _, value: self.output(value))

        # ---- the budget of one render ----------------------------------------------------

        def render_bounded(self, template: Any, context: dict) -> str:
            budget = self.budget
            budget.deadline, budget.steps, budget.output, budget.made = time.monotonic() + MAX_SECONDS, 0, 0, 0
            try:
                return template.render(**context)
            finally:
                budget.deadline = None

        def tick(self) -> None:
            budget = self.budget
            if budget.deadline is None:
                return
            budget.steps += 1
            if budget.steps > MAX_STEPS:
                raise TemplateLimitError(f"more than {MAX_STEPS:,} steps (loop iterations, calls and operations)")
            if time.monotonic() > budget.deadline:
                raise TemplateLimitError(f"rendering took more than {MAX_SECONDS:g} s")

        def checked(self, value: Any) -> Any:
            """A value the template uses, measured (so no single value passes the limits)."""
            self.tick()
            _measure(value, MAX_TEXT)
            return value

        def made(self, value: Any) -> Any:
            """A value the template made, measured and added to what this render has made."""
            self.tick()
            if isinstance(value, Iterator):
                return produced(self, value)
            size = _measure(value, MAX_TEXT)[0]
            budget = self.budget
            if budget.deadline is not None:
                budget.made += size
                if budget.made > MAX_MADE:
                    raise TemplateLimitError(f"values of more than {MAX_MADE:,} characters made in all")
            return value

        def output(self, value: Any) -> Any:
            self.tick()
            budget = self.budget
            room = MAX_TEXT - budget.output
            try:
                budget.output += _measure(value, room)[0]
            except TemplateLimitError:
                raise TemplateLimitError(f"a prompt of more than {MAX_TEXT:,} characters") from None
            return value

        def before(self, args: Iterable, estimate: int) -> None:
            """Check a call's arguments, and the estimate of what it makes, before it runs."""
            self.tick()
            for value in args:
                if _number(value) > MAX_TEXT:
                    raise TemplateLimitError(f"the number {value} (sizes above {MAX_TEXT:,} are refused)")
                _measure(value, MAX_TEXT)
            if estimate > MAX_TEXT:
                raise TemplateLimitError(f"a value of about {estimate:,} characters")

        # ---- the template's code -----------------------------------------------------------

        def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
            """The template's syntax tree, with checks around what jinja2 gives no hook for:
            loops, outputs, `~` operands, comparisons and dict keys."""
            tree = super()._parse(source, name, filename)

            def wrap(node: Any, check: str) -> nodes.Expr:
                return nodes.Filter(node, check, [], [], None, None, lineno=node.lineno)

            for node in list(tree.find_all((nodes.For, nodes.Output, nodes.Concat, nodes.Compare, nodes.Dict))):
                if isinstance(node, nodes.For):
                    node.iter = wrap(node.iter, "_ttcl_loop")
                elif isinstance(node, nodes.Output):
                    node.nodes = [wrap(n, "_ttcl_output") for n in node.nodes]
                elif isinstance(node, nodes.Concat):  # what `~` makes is as long as its parts
                    node.nodes = [wrap(n, "_ttcl_part") for n in node.nodes]
                elif isinstance(node, nodes.Compare):
                    node.expr = wrap(node.expr, "_ttcl_value")
                    for operand in node.ops:
                        operand.expr = wrap(operand.expr, "_ttcl_value")
                elif isinstance(node, nodes.Dict):
                    for pair in node.items:
                        pair.key = wrap(pair.key, "_ttcl_value")
            tree.set_environment(self)
            return tree

        def _bounded(self, name: str, f: Callable) -> Callable:
            """A filter or test that checks its arguments and its result."""
            at = 1 if _PassArg.from_obj(f) is not None else 0  # where jinja2's first argument ends

            @functools.wraps(f)
            def bounded(*args: Any, **kwargs: Any) -> Any:
                if name in ("join", "sum") and len(args) > at and not hasattr(args[at], "__len__"):
                    args = (*args[:at], list(args[at]), *args[at + 1 :])  # to know how many items
                self.before([*args[at:], *kwargs.values()], _filter_size(name, args[at:], kwargs))
                return self.made(f(*args, **kwargs))

            return bounded

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805  # jinja2's names
            if isinstance(getattr(__obj, "__self__", None), str) and getattr(__obj, "__name__", "") == "join" and args:
                args = (list(args[0]), *args[1:])  # to know how many items
            __self.before([*args, *kwargs.values()], _method_size(__obj, args, kwargs))
            return __self.made(super().call(__context, __obj, *args, **kwargs))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.tick()
            _measure(left, MAX_TEXT), _measure(right, MAX_TEXT)
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes, list, tuple)) and _number(n) and _size(seq) * n > MAX_TEXT:
                        raise TemplateLimitError(f"a value of about {_size(seq) * n:,} characters")
            elif operator == "**" and _number(left) > 1 and isinstance(right, int):
                if left.bit_length() * right > MAX_INT_BITS:
                    raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
            elif operator == "%" and isinstance(left, str) and _format_size(left, right) > MAX_TEXT:
                raise TemplateLimitError(f"a value of about {_format_size(left, right):,} characters")
            return self.made(super().call_binop(context, operator, left, right))

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.tick()
            if not isinstance(argument, (str, int, slice)):
                _measure(argument, MAX_TEXT)  # a key is hashed: a huge one takes long
            return super().getitem(obj, argument)

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.tick()
            return super().getattr(obj, attribute)

        def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
            if isinstance(obj, (str, bytes)) and attr in ("translate", "maketrans"):
                return False  # a translation table can make every character as long as it likes
            return super().is_safe_attribute(obj, attr, value)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt = value.__self__

            def bounded(*args: Any, **kwargs: Any) -> str:
                values = args[0] if value.__name__ == "format_map" and args else (*args, *kwargs.values())
                self.before((), _format_size(fmt, values if isinstance(values, dict) else tuple(values)))
                return self.made(wrapped(*args, **kwargs))

            return functools.update_wrapper(bounded, wrapped)

    return BoundedEnvironment
