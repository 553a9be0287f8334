"""`ttcl serve`: a program behind an OpenAI-compatible HTTP API, so any OpenAI client can use it
as if it were a model.

    POST /v1/chat/completions   the last user message is the question; the reply, the chosen answer
    GET  /v1/models             the served program, as the one model

Each request's thread reads and checks the request, puts its question on a queue and waits. One
worker thread takes what arrives within a short window (up to `max_batch` questions) and runs it
with the program's batched runtime (`run_isolating`, which is `run_many` with a question the
model cannot take failing alone), so the requests of concurrent clients share backend batches
as the questions of one `run_many` do; each reply goes out as soon as its question finishes. A
run has one seed, so requests with different seeds run one batch after the other.

Every error is OpenAI's error body (`{"error": {"message", "type", "param", "code"}}`) with its
HTTP status, never a traceback. A client that disconnects is noticed while its request waits:
a question not yet started is dropped, and a finished one's reply is discarded; other clients
are not affected. The standard library's threading HTTP server is enough here: the work is in
the worker thread, and the request threads only parse and wait.

Why one module: the request's checks, the batching queue and the reply's shape are one
protocol, read and changed together.
"""

from __future__ import annotations

import hmac
import json
import queue
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

from ttcl.errors import TTCLError, UsageError, printable
from ttcl.source import NotJSON, parse_json

if TYPE_CHECKING:  # the runtime is imported when a batch runs, so `ttcl --help` stays quick
    from ttcl.program import Program
    from ttcl.results import Result

DEFAULT_HOST = "127.0.0.1"  # the loopback only, unless asked: a program's models are the host's compute
API_KEY_ENV = "TTCL_API_KEY"  # where `ttcl serve` reads the key clients must send, when one is set
MAX_BODY = 1 << 20  # bytes in a request's body
POLL_S = 0.05  # how often a waiting request looks whether its client is still there
DRAIN_S = 2.0  # how long a stopping server gives refused requests to send their replies
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class APIError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        """`{"error": {"message", "type", "param", "code"}}`, as OpenAI's API writes it."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What a chat completion request asks of the program."""

    question: str
    seed: int
    stream: bool = False
    stream_usage: bool = False  # `stream_options.include_usage`: a last chunk with the usage


def parse_request(body: bytes, model: str, default_seed: int = 0) -> Ask:
    """A chat completion request's body, checked: an `Ask`, or an `APIError` saying what is
    wrong. Sampling fields (`temperature`, `max_tokens`, `top_p`, ...) are ignored: the
    program's declarations fix them."""
    try:
        request = parse_json(body)
    except NotJSON:
        raise APIError(400, "the request body is not valid JSON (UTF-8)", code="invalid_json") from None
    if not isinstance(request, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_json_kind(request)}", code="invalid_type")
    name = request.get("model")
    if not isinstance(name, str):
        raise APIError(400, "`model` is required: the name of the served program", param="model")
    if name != model:
        raise APIError(
            404,
            f"the model `{name}` does not exist; this server serves `{model}`",
            param="model",
            code="model_not_found",
        )
    _refuse_unsupported(request)
    seed = request.get("seed", default_seed)
    if seed is None:
        seed = default_seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise APIError(400, f"`seed` must be an integer, not {_json_kind(seed)}", param="seed", code="invalid_type")
    stream, options = request.get("stream") or False, request.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise APIError(400, "`stream` must be a boolean and `stream_options` an object", param="stream")
    return Ask(question(request.get("messages")), seed, stream, options.get("include_usage") is True)


def _refuse_unsupported(request: dict) -> None:
    """Refuse what the program cannot honour, rather than silently answering something else."""
    n = request.get("n", 1)
    if n not in (1, None) or isinstance(n, bool):
        raise APIError(400, "`n` must be 1: a program gives one chosen answer per question", param="n")
    if request.get("tools") or request.get("functions"):
        raise APIError(400, "tools and functions are not supported: a program answers questions", param="tools")
    if request.get("logprobs"):
        raise APIError(400, "`logprobs` is not supported: the answer is chosen among samples", param="logprobs")
    response_format = request.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError(400, "`response_format` must be text", param="response_format")


def question(messages: Any) -> str:
    """The question: the text of the last user message (other messages are checked, not used)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "`messages` must be a non-empty array of messages", param="messages")
    texts = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"`{where}` must be an object, not {_json_kind(message)}", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(
                400, f"`{where}.role` must be one of {', '.join(ROLES)}, not {_json_kind(role)}", param=f"{where}.role"
            )
        content = message.get("content")
        if content is None and role != "user":
            continue  # an assistant's tool call, say
        texts.append((role, _text(content, f"{where}.content")))
    asked = [text for role, text in texts if role == "user"]
    if not asked:
        raise APIError(400, "`messages` holds no user message: the last one is the question", param="messages")
    if not asked[-1].strip():
        raise APIError(400, "the last user message is empty: it is the question", param="messages")
    return asked[-1]


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or an array of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(
            400, f"`{where}` must be a string or an array of text parts, not {_json_kind(content)}", param=where
        )
    parts = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else None
            what = f"a part of type {_json_kind(kind)}" if kind is not None else _json_kind(part)
            raise APIError(
                400,
                f'`{where}[{i}]` must be a text part ({{"type": "text", "text": ...}}), not {what}',
                param=f"{where}[{i}]",
            )
        parts.append(part["text"])
    return "\n".join(parts)


def _json_kind(value: Any) -> str:
    """What a JSON value is, for a message: `null`, `a number`, `"image_url"`."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value[:40])
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return kinds.get(type(value), "a value")


# ---- replies ------------------------------------------------------------------------------


def strategy(program: Program, result: Result) -> str:
    """The strategy that chose the answer: the outermost strategy call of the node that gives
    it (in a `match`, the arm of the question's bin), else that node's operation."""
    graph = program.graph
    output = next(n for n, a in graph.nodes(data=True) if a["op"] == "output")
    node = next(iter(graph.predecessors(output)))
    if graph.nodes[node]["op"] == "merge":  # a match: the arm its bin took
        arms = graph.in_edges(node, data=True)
        node = next((u for u, _, e in arms if result.bin in (e.get("guard") or ())), node)
    attrs = graph.nodes[node]
    return attrs["origin"][0].partition("@")[0] if attrs.get("origin") else attrs["op"]


def completion(program: Program, name: str, result: Result, elapsed_s: float) -> dict:
    """The chat completion for a result: the chosen answer's text, the usage the program
    really spent (every prompt and verifier token read, every token generated), and TTCL's
    own account in `ttcl`."""
    cost = result.cost
    prompt = cost.prompt_tokens + cost.verifier_prompt_tokens
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text or ""},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": cost.generated_tokens, "total_tokens": cost.tokens},
        "ttcl": {
            "answer": result.answer,
            "strategy": strategy(program, result),
            "bin": result.bin,
            "candidates": len(result.candidates),
            "generations": cost.generations,
            "tokens": cost.tokens,
            "flops": cost.flops,
            "stopped": result.stopped,
            "seed": result.seed,
            "elapsed_s": round(elapsed_s, 3),
        },
    }


def stream_events(reply: dict, usage: bool) -> bytes:
    """A completion as server-sent events: the whole answer is known at once (the program
    chooses among finished candidates), so one chunk carries it, the next the finish reason."""
    head = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = reply["choices"][0]
    chunks = [
        head | {"choices": [{"index": 0, "delta": choice["message"], "finish_reason": None}]},
        head
        | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}], "ttcl": reply["ttcl"]},
    ]
    if usage:
        chunks.append(head | {"choices": [], "usage": reply["usage"]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


# ---- the batching worker ------------------------------------------------------------------


@dataclass(eq=False)
class Pending:
    """A question waiting for its answer; `gone` once its client stopped waiting."""

    ask: Ask
    deadline: float | None  # time.monotonic() by which the run must stop
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    error: APIError | None = None
    gone: bool = False

    def resolve(self, result: Result) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: APIError) -> None:
        self.error = error
        self.done.set()


class Batcher:
    """One worker thread that runs queued questions together on the program."""

    def __init__(self, program: Program, backend, max_batch: int, window: float, max_queue: int, log):
        self.program, self.backend, self.log = program, backend, log
        self.max_batch, self.window, self.max_queue = max_batch, window, max_queue
        self.queue: queue.Queue[Pending | None] = queue.Queue()
        self.lock = threading.Lock()
        self.abandoned = 0  # requests no longer waited for: the client went away, or got a 504
        self.dropped = 0  # questions not run because their clients had stopped waiting
        self.closed = False
        self.running: list[Pending] = []  # the batch being run
        self.thread = threading.Thread(target=self._loop, name="ttcl-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, pending: Pending) -> None:
        """Queue a question, or refuse it (503) when the queue is full or the server stops."""
        with self.lock:
            if self.closed:
                raise stopping()
            if self.queue.qsize() >= self.max_queue:
                raise APIError(
                    503,
                    f"the server is busy: {self.max_queue} questions are waiting; try again",
                    "server_error",
                    code="queue_full",
                )
            self.queue.put(pending)

    def abandon(self, pending: Pending) -> None:
        """Its request no longer waits: drop the question if it has not started."""
        with self.lock:
            pending.gone = True
            self.abandoned += 1

    def waiting(self) -> int:
        """Questions queued and not yet taken into a batch."""
        return self.queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking questions, wait up to `timeout` seconds for the running batch, and
        refuse (503) every question still unanswered, queued or running."""
        with self.lock:
            self.closed = True
        self.queue.put(None)
        self.thread.join(timeout)
        unanswered: list[Pending | None] = [*self.running]
        while not self.queue.empty():
            unanswered.append(self.queue.get_nowait())
        for p in unanswered:
            if p is not None and not p.done.is_set():
                p.fail(stopping())

    def _loop(self) -> None:
        while (batch := self._collect()) is not None:
            self.running = batch
            try:
                self._run(batch)
            except Exception as e:  # a bug: its questions fail, the server goes on
                self.log(f"error: {type(e).__name__}: {e}")
                for p in batch:
                    if not p.done.is_set():
                        p.fail(APIError(500, "the server failed running the program", "server_error"))
            self.running = []

    def _collect(self) -> list[Pending] | None:
        """The next batch: the first question to come, and what follows within the window (or
        is already waiting, after a batch), up to `max_batch`. None when the server stops."""
        first = self.queue.get()
        if first is None:
            return None
        batch, end = [first], time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _run(self, batch: list[Pending]) -> None:
        now, groups = time.monotonic(), dict[int, list[Pending]]()
        for p in batch:
            if p.gone:
                self.dropped += 1
            elif p.deadline is not None and p.deadline <= now:
                p.fail(timed_out("while it waited for its turn"))
            else:
                groups.setdefault(p.ask.seed, []).append(p)
        for seed, group in groups.items():
            self._run_group(seed, group)

    def _run_group(self, seed: int, group: list[Pending]) -> None:
        """Run one seed's questions together. The time limit is the earliest deadline among
        them: a run may stop early for a batch-mate, but never late."""
        from ttcl.eval.evaluate import run_isolating

        deadlines = [p.deadline for p in group if p.deadline is not None]
        limit = max(min(deadlines) - time.monotonic(), 1e-3) if deadlines else None
        error = APIError(500, "the run ended without an answer", "server_error")
        try:
            run_isolating(
                self.program,
                [{"question": p.ask.question} for p in group],
                list(range(len(group))),
                lambda i, result: group[i].resolve(result),
                lambda i, reason: group[i].fail(APIError(400, reason, code="question_not_taken")),
                seed=seed,
                backend=self.backend,
                time_limit=limit,
            )
        except TTCLError as e:  # the model failed, not one question: every question still waiting fails
            self.log(f"error: {e.message}")
            error = APIError(500, e.message, "server_error", code="model_error")
        for p in group:
            if not p.done.is_set():
                p.fail(error)


def stopping() -> APIError:
    """The 503 of a request the server stopped before answering."""
    return APIError(503, "the server is stopping", "server_error", code="stopping")


def timed_out(when: str) -> APIError:
    """The 504 of a request whose time limit passed with no answer."""
    return APIError(504, f"the request's time limit passed {when}", "server_error", code="timeout")


# ---- the HTTP server ----------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process from stopping

    def __init__(self, address: tuple[str, int], app: Server):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        # a client that drops its connection is not the server's error; anything else is one log line
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            self.app.log(f"error: {type(error).__name__}: {error}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as OpenAI's clients expect
    timeout = 120  # seconds a client may stall mid-request before its connection is closed
    server: _HTTPServer

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, route: Callable[[], tuple[int, bytes, str] | None]) -> None:
        """Run a route and send what it gives, or the error it raised, as JSON."""
        started, app = time.monotonic(), self.server.app
        with app.answering():
            try:
                reply = route()
            except APIError as e:
                reply = (e.status, json.dumps(e.body()).encode(), "application/json")
            except Exception as e:  # a bug: a line in the log, and a 500 without a traceback
                app.log(f"error: {type(e).__name__}: {e}")
                error = APIError(500, "the server failed", "server_error")
                reply = (500, json.dumps(error.body()).encode(), "application/json")
            if reply is None:  # the client went away
                self.close_connection = True
            else:
                self._send(*reply)
        outcome = "client gone" if reply is None else reply[0]
        app.log(f"{self.command} {printable(self.path[:200], False)} {outcome} {time.monotonic() - started:.2f}s")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):  # it went away as the reply went out
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unsupported method, huge
        headers), in OpenAI's shape."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a request line too broken to say: answer with a status line
            self.request_version = "HTTP/1.0"
        error = APIError(code, message or HTTPStatus(code).phrase, "invalid_request_error")
        self._send(code, json.dumps(error.body()).encode(), "application/json")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # `_answer` logs each request once, with its time

    def log_message(self, format: str, *args: Any) -> None:
        self.server.app.log(printable(format % args, False))

    # ---- routes

    def _get(self) -> tuple[int, bytes, str]:
        app = self.server.app
        self._authorize()
        path = self._path()
        if path == "/v1/models":
            return _json({"object": "list", "data": [app.model_card()]})
        if path == f"/v1/models/{app.name}":
            return _json(app.model_card())
        if path.startswith("/v1/models/"):
            raise APIError(
                404,
                f"the model `{path[len('/v1/models/') :]}` does not exist; this server serves `{app.name}`",
                code="model_not_found",
            )
        raise APIError(
            404, f"no such path: GET {path}; this server has /v1/models and /v1/chat/completions", code="unknown_url"
        )

    def _post(self) -> tuple[int, bytes, str] | None:
        app = self.server.app
        started = time.monotonic()
        path = self._path()
        if path != "/v1/chat/completions":
            self.close_connection = True  # its body is not read
            raise APIError(404, f"no such path: POST {path}; this server has /v1/chat/completions", code="unknown_url")
        body = self._body(app.max_body)
        self._authorize()
        ask = parse_request(body, app.name, app.seed)
        deadline = started + app.time_limit if app.time_limit is not None else None
        pending = Pending(ask, deadline)
        app.batcher.submit(pending)
        result = self._wait(pending, None if deadline is None else deadline + app.grace)
        if result is None:
            return None
        reply = completion(app.program, app.name, result, time.monotonic() - started)
        if ask.stream:
            return 200, stream_events(reply, ask.stream_usage), "text/event-stream"
        return _json(reply)

    # ---- the parts

    def _path(self) -> str:
        return self.path.partition("?")[0].rstrip("/") or "/"

    def _authorize(self) -> None:
        key = self.server.app.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            what = "no API key was given" if not given else "the API key is not this server's"
            raise APIError(
                401, f"{what}: send `Authorization: Bearer KEY` with the key of ${API_KEY_ENV}", code="invalid_api_key"
            )

    def _body(self, limit: int) -> bytes:
        """The request's body, read whole; a body that is not read closes the connection."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise APIError(411, "send the body with a Content-Length, not chunked", code="length_required")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise APIError(400, "the Content-Length header is not a number of bytes", code="invalid_length")
        if length > limit:
            self.close_connection = True
            raise APIError(
                413, f"the request body is {length} bytes; this server takes at most {limit}", code="body_too_large"
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise APIError(400, "the request body ended before its Content-Length", code="incomplete_body")
        return body

    def _wait(self, pending: Pending, overdue: float | None) -> Result | None:
        """The question's result, or None once the client has gone (the question is then
        dropped if it has not started); a 504 past the time limit and its grace."""
        batcher = self.server.app.batcher
        while not pending.done.wait(POLL_S):
            if self._client_gone():
                batcher.abandon(pending)
                return None
            if overdue is not None and time.monotonic() > overdue:
                batcher.abandon(pending)
                raise timed_out("before the program finished")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _client_gone(self) -> bool:
        """Whether the client closed its connection: readable with nothing to read."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True


def _json(value: dict) -> tuple[int, bytes, str]:
    return 200, json.dumps(value).encode(), "application/json"


class Server:
    """A program served over HTTP as an OpenAI-compatible model named `name`.

    `Server(program, "bon", port=0).start()` serves it in a thread (`url` says where);
    `serve_forever()` serves in the calling thread; `close()` stops either. `backend` is what
    `Program.run` takes (None: the declared models). `time_limit` is per request, in seconds
    from its arrival: the run stops there with its best answer so far (`ttcl.stopped` is
    "time"), and a request with no answer `grace` seconds later (by default, the limit again)
    gets a 504. `api_key`, when set, must come as `Authorization: Bearer KEY`."""

    def __init__(
        self,
        program: Program,
        name: str = "ttcl",
        host: str = DEFAULT_HOST,
        port: int = 8000,
        *,
        backend=None,
        seed: int = 0,
        time_limit: float | None = None,
        grace: float | None = None,
        max_batch: int = 8,
        window: float = 0.01,
        max_queue: int = 64,
        max_body: int = MAX_BODY,
        api_key: str | None = None,
        log: Callable[[str], None] | None = None,
    ):
        _check_options(port, time_limit, max_batch, window, max_queue, max_body)
        self.program, self.name, self.seed = program, name, seed
        self.time_limit = time_limit
        self.grace = grace if grace is not None else (time_limit or 0.0)
        self.max_body, self.api_key = max_body, api_key or None
        self.log = log or (lambda line: None)
        self.created = int(time.time())
        try:
            self.httpd = _HTTPServer((host, port), self)
        except (OSError, OverflowError) as e:
            raise UsageError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
        self.batcher = Batcher(program, backend, max_batch, window, max_queue, self.log)
        self._thread: threading.Thread | None = None
        self._answering = 0  # requests between arrival and reply
        self._idle = threading.Condition()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes: `http://127.0.0.1:8000/v1`."""
        host = cast(str, self.httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"

    def model_card(self) -> dict:
        """The served program as `/v1/models` lists it."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "ttcl"}

    def serve_forever(self) -> None:
        """Answer requests until `close()` (from another thread) or Ctrl-C."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> Server:
        """Serve in a background thread; returns the server."""
        self._thread = threading.Thread(target=self.serve_forever, name="ttcl-serve", daemon=True)
        self._thread.start()
        return self

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Count a request being answered, so `close` can let its reply go out."""
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                self._idle.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Stop listening, wait up to `timeout` seconds (None: as long as it takes) for the
        batch that is running, and answer every request still waiting with a 503."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
        self.batcher.close(timeout)
        with self._idle:  # the refused requests' replies go out before the process may end
            self._idle.wait_for(lambda: self._answering == 0, timeout=DRAIN_S)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_options(port, time_limit, max_batch, window, max_queue, max_body) -> None:
    """Refuse settings that cannot work, each with one clear line."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0 to 65535 (0: any free port), not {port}")
    if time_limit is not None and not (time_limit > 0 and time_limit < float("inf")):
        raise UsageError(f"--time-limit takes a positive number of seconds, not {time_limit}")
    for option, value in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--max-body", max_body)):
        if value < 1:
            raise UsageError(f"{option} must be at least 1, not {value}")
    if not 0 <= window < 60:
        raise UsageError(f"--batch-window takes seconds from 0 to 60, not {window}")


__all__ = ["API_KEY_ENV", "DEFAULT_HOST", "APIError", "Ask", "Server", "completion", "parse_request", "question"]
