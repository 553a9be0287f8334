"""A small OpenAI-compatible server that answers with hostile bodies, for the robustness tests.

`HostileServer(mode)` serves /v1/completions and /v1/chat/completions on 127.0.0.1 (a free
port) from a thread. Its first `good` completion requests get a well-formed reply (one choice
of `ANSWER`, with usage), every later one the body of `mode` (one of `MODES`; or one of
`ERRORS`, an HTTP error status with a hostile body), each after `delay` seconds. It stops by itself after `lifetime` seconds, or when its `with` block ends;
`mode` and `good` may be changed while it runs (to "fix" the server before a resume).

GET /v1/models answers 404, so the client takes it for a plain OpenAI server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "The answer is 5."


def good_reply(chat: bool, n: int = 1) -> dict:
    """A well-formed reply with n choices."""
    choices: list[dict[str, Any]] = []
    for i in range(n):
        choice: dict[str, Any] = {"index": i, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": ANSWER}
        else:
            choice["text"] = ANSWER
        choices.append(choice)
    return {
        "id": "x",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": "x",
        "choices": choices,
        "usage": {"prompt_tokens": 7, "completion_tokens": 5 * n, "total_tokens": 7 + 5 * n},
    }


def _with_choice(chat: bool, **fields: Any) -> dict:
    reply = good_reply(chat)
    reply["choices"][0].update(fields)
    return reply


def _with_content(chat: bool, value: Any) -> dict:
    reply = good_reply(chat)
    if chat:
        reply["choices"][0]["message"]["content"] = value
    else:
        reply["choices"][0]["text"] = value
    return reply


def _with_usage(chat: bool, usage: Any) -> dict:
    reply = good_reply(chat)
    reply["usage"] = usage
    return reply


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# each mode: (chat endpoint?) -> the body's bytes
MODES: dict[str, Any] = {
    "ok": lambda chat: good_reply(chat),
    "not_json": lambda chat: b"<html><body>502 Bad Gateway</body></html>",
    "truncated": lambda chat: json.dumps(good_reply(chat)).encode()[:40],
    "empty_body": lambda chat: b"",
    "deep_json": lambda chat: _deep(100_000),
    "deep_object": lambda chat: b'{"choices": ' + _deep(100_000) + b"}",
    "json_list": lambda chat: [1, 2, 3],
    "json_null": lambda chat: None,
    "json_string": lambda chat: "hello",
    "no_choices": lambda chat: {"id": "x", "object": "x"},
    "empty_choices": lambda chat: {**good_reply(chat), "choices": []},
    "choices_strings": lambda chat: {**good_reply(chat), "choices": ["x"]},
    "choices_dict": lambda chat: {**good_reply(chat), "choices": {"0": "x"}},
    "content_int": lambda chat: _with_content(chat, 42),
    "content_list": lambda chat: _with_content(chat, ["a", "b"]),
    "message_string": lambda chat: _with_choice(chat, message="hi") if chat else _with_content(chat, {"a": 1}),
    "usage_strings": lambda chat: _with_usage(chat, {"prompt_tokens": "many", "completion_tokens": "lots"}),
    "usage_list": lambda chat: _with_usage(chat, [1, 2]),
    "usage_negative": lambda chat: _with_usage(chat, {"prompt_tokens": -5, "completion_tokens": -1}),
    "usage_float": lambda chat: _with_usage(chat, {"prompt_tokens": 1e300, "completion_tokens": 5}),
    "cached_string": lambda chat: _with_usage(
        chat, {"prompt_tokens": 7, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": "x"}}
    ),
    "index_string": lambda chat: _with_choice(chat, index="first"),
    "index_out_of_range": lambda chat: _with_choice(chat, index=7),
    "index_negative": lambda chat: _with_choice(chat, index=-1),
    "finish_int": lambda chat: _with_choice(chat, finish_reason=3),
    "logprobs_string": lambda chat: _with_choice(chat, logprobs="many"),
    "logprobs_bad_content": lambda chat: _with_choice(
        chat,
        logprobs={"content": [{"token": 1, "logprob": "x"}]}
        if chat
        else {"tokens": ["a"], "token_logprobs": ["x"], "top_logprobs": "y"},
    ),
    "logprobs_bad_top": lambda chat: _with_choice(
        chat,
        logprobs={"content": [{"token": "a", "logprob": -1.0, "top_logprobs": [{"token": "Yes", "logprob": "x"}]}]}
        if chat
        else {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"Yes": "x"}]},
    ),
}

# each error mode: (chat endpoint?) -> (HTTP status, the body's bytes)
ERRORS: dict[str, Any] = {
    "error_not_json": lambda chat: (400, b"<html>Bad Request</html>"),
    "error_deep_json": lambda chat: (500, _deep(100_000)),
    "error_nested_json": lambda chat: (500, b'{"error": ' + _deep(900) + b"}"),
    "error_message_list": lambda chat: (422, json.dumps({"error": {"message": ["a", {"b": 1}]}}).encode()),
}

HOSTILE = [m for m in MODES if m != "ok"]


class HostileServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers completions with `mode`'s body
    (or the HTTP error of `ERRORS`) after its first `good` well-formed replies; each reply
    waits `delay` seconds, a good one `good_delay` more. Use as a context manager."""

    def __init__(
        self, mode: str = "ok", good: int = 0, lifetime: float = 120.0, delay: float = 0.0, good_delay: float = 0.0
    ):
        if mode not in MODES and mode not in ERRORS:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        self.mode, self.good, self.lifetime, self.delay, self.good_delay = mode, good, lifetime, delay, good_delay
        self.served = 0  # completion requests answered
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.answer(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(min(length, 1 << 20))
                path = self.path.split("?")[0].rstrip("/")
                if path not in ("/v1/completions", "/v1/chat/completions"):
                    self.answer(404, b'{"error": {"message": "not found"}}')
                    return
                with server.lock:
                    server.served += 1
                    mode = "ok" if server.served <= server.good else server.mode
                time.sleep(server.delay + (server.good_delay if mode == "ok" else 0.0))
                chat = path.endswith("/chat/completions")
                status, body = ERRORS[mode](chat) if mode in ERRORS else (200, MODES[mode](chat))
                self.answer(status, body if isinstance(body, bytes) else json.dumps(body).encode())

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True

    def start(self) -> HostileServer:
        self.thread.start()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.timer.cancel()
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":  # serve a mode by hand: python tests/hostile_server.py MODE
    import sys

    with HostileServer(sys.argv[1] if len(sys.argv) > 1 else "ok", lifetime=600) as s:
        print(s.url, flush=True)
        time.sleep(600)
