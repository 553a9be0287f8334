"""`ttcl serve`: a program behind the OpenAI API, tested with the `openai` client and raw HTTP.

The fast tests run the server in a thread on a scripted backend: replies, usage and the `ttcl`
field, errors as OpenAI's bodies, the API key, concurrent requests sharing batches, clients
that disconnect, the queue's limit and the time limit. Batching and disconnects are made
deterministic by holding the backend at a gate until the test has seen the server's state,
never by timing. The slow tests run the embedded SmolLM2 model, and `ttcl serve` itself.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import ttcl
from ttcl.backends.base import BackendError, RequestError
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.serve import Server

VOTE = "program main = sample(2) |> vote"
WAIT_S = 20  # the most a test waits for the server to reach a state; never reached when it works


def number(request) -> str:
    """The number in a request's question ("What is Q7?" -> "7"), or 0."""
    found = re.search(r"Q(\d+)", request.messages[-1].content)
    return found.group(1) if found else "0"


class Gated(ScriptedBackend):
    """Answers "The answer is N." for question QN; while `gate` is clear, each request waits
    at it. `seen` holds every question number the model was asked."""

    def __init__(self, fail=None):
        self.gate = threading.Event()
        self.gate.set()
        self.seen: list[str] = []
        self.fail = fail or (lambda request: None)
        super().__init__(self.answer)

    def answer(self, request) -> str:
        self.seen.append(number(request))
        self.fail(request)
        self.gate.wait(WAIT_S)
        return f"The answer is {number(request)}."


def until(condition, what: str) -> None:
    """Wait for the server to reach a state (polling), or fail saying which."""
    end = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < end, f"the server never reached: {what}"
        time.sleep(0.01)


@pytest.fixture
def backend():
    return Gated()


@pytest.fixture
def serve(backend):
    """`serve(text="...", **options)`: a started server on a free port, closed after the test."""
    servers = []

    def start(text: str = VOTE, **options) -> Server:
        options.setdefault("backend", backend)
        server = Server(ttcl.compile(text), "prog", port=0, **options).start()
        servers.append(server)
        return server

    yield start
    backend.gate.set()
    for server in servers:
        server.close()


def client(server: Server, key: str = "unused", **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, **options)


def ask(server: Server, text: str, **options):
    return client(server).chat.completions.create(model="prog", messages=[{"role": "user", "content": text}], **options)


def raw(server: Server, method: str, path: str, body: bytes | dict | list | None = None, headers=None):
    """Status and parsed JSON body of one request over plain HTTP."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert "Traceback" not in text
    return response.status, json.loads(text)


def send_raw(server: Server, data: bytes) -> socket.socket:
    """A connection that has sent `data` and not read the reply (to disconnect, say)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.sendall(data)
    return sock


def post_bytes(body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def message(text: str) -> dict:
    return {"model": "prog", "messages": [{"role": "user", "content": text}]}


def is_error(body: dict) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


# ---- replies ------------------------------------------------------------------------------


def test_models_lists_the_served_program(serve):
    server = serve()
    assert [m.id for m in client(server).models.list().data] == ["prog"]
    assert client(server).models.retrieve("prog").owned_by == "ttcl"
    status, body = raw(server, "GET", "/v1/models/other")
    assert status == 404 and is_error(body) and body["error"]["code"] == "model_not_found"


def test_a_reply_carries_the_chosen_answer_its_real_usage_and_ttcl_s_account(serve):
    reply = ask(serve(), "What is Q7?")
    alone = ttcl.compile(VOTE).run("What is Q7?", seed=0, backend=Gated())
    assert reply.choices[0].message.content == alone.text == "The answer is 7."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "prog"
    cost = alone.cost
    assert reply.usage.prompt_tokens == cost.prompt_tokens + cost.verifier_prompt_tokens
    assert reply.usage.completion_tokens == cost.generated_tokens
    assert reply.usage.total_tokens == cost.tokens > 0
    extra = reply.model_extra["ttcl"]
    assert extra["answer"] == "7" and extra["strategy"] == "vote" and extra["candidates"] == 2
    assert extra["flops"] == cost.flops and extra["tokens"] == cost.tokens and extra["stopped"] is None


def test_the_question_is_the_last_user_message_and_text_parts_are_joined(serve, backend):
    server = serve()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is Q1?"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "Q5?"}]},
    ]
    reply = client(server).chat.completions.create(model="prog", messages=messages)
    assert reply.model_extra["ttcl"]["answer"] == "5"
    assert backend.seen == ["5", "5"]


def test_the_seed_is_the_run_s_seed(serve):
    server = serve()
    reply = ask(server, "What is Q3?", seed=7)
    assert reply.model_extra["ttcl"]["seed"] == 7
    assert ask(server, "What is Q3?").model_extra["ttcl"]["seed"] == 0


def test_a_strategy_call_is_named_as_the_chosen_strategy(serve):
    text = 'import "parallel"\nprogram main = majority(3)'
    assert ask(serve(text), "What is Q2?").model_extra["ttcl"]["strategy"] == "majority"


def test_streaming_gives_the_answer_in_chunks_then_the_usage(serve):
    server = serve()
    chunks = list(ask(server, "What is Q4?", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(server, "What is Q4?").choices[0].message.content
    assert chunks[-1].usage.total_tokens > 0


# ---- errors -------------------------------------------------------------------------------

OK = {"model": "prog", "messages": [{"role": "user", "content": "What is Q1?"}]}


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"\xff\xfe", 400, None),
        (b"[" * 100_000, 400, None),
        ([1, 2], 400, None),
        ({"messages": OK["messages"]}, 400, "model"),
        ({**OK, "model": "gpt-4o"}, 404, "model"),
        ({"model": "prog"}, 400, "messages"),
        ({**OK, "messages": []}, 400, "messages"),
        ({**OK, "messages": ["hi"]}, 400, "messages[0]"),
        ({**OK, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({**OK, "messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
        ({**OK, "messages": [{"role": "user", "content": "  "}]}, 400, "messages"),
        ({**OK, "messages": [{"role": "user", "content": None}]}, 400, "messages[0].content"),
        ({**OK, "messages": [{"role": "user", "content": {"text": "hi"}}]}, 400, "messages[0].content"),
        (
            {**OK, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "messages[0].content[0]",
        ),
        ({**OK, "seed": "1"}, 400, "seed"),
        ({**OK, "seed": True}, 400, "seed"),
        ({**OK, "n": 2}, 400, "n"),
        ({**OK, "stream": "yes"}, 400, "stream"),
        ({**OK, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({**OK, "logprobs": True}, 400, "logprobs"),
        ({**OK, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ],
)
def test_a_bad_request_gets_an_openai_error_body(serve, body, status, param):
    server = serve()
    got, reply = raw(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert (got, reply["error"]["param"]) == (status, param) and is_error(reply)
    assert ask(server, "What is Q1?").choices[0].message.content == "The answer is 1."  # and it goes on


def test_sampling_fields_are_ignored(serve):
    reply = ask(serve(), "What is Q2?", temperature=0.0, max_tokens=1, top_p=0.5)
    assert reply.choices[0].message.content == "The answer is 2."


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/nope", 404), ("POST", "/v1/completions", 404), ("PUT", "/v1/chat/completions", 501)],
)
def test_unknown_paths_and_methods_get_error_bodies(serve, method, path, status):
    got, body = raw(serve(), method, path, OK)
    assert got == status and is_error(body)


def test_a_body_over_the_limit_is_refused_unread(serve):
    server = serve(max_body=100)
    status, body = raw(server, "POST", "/v1/chat/completions", {**OK, "user": "x" * 200})
    assert status == 413 and body["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    "head, status",
    [
        ("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        ("GARBAGE\r\n\r\n", 400),
    ],
)
def test_malformed_http_gets_an_error_body(serve, head, status):
    with send_raw(serve(), head.encode()) as sock:
        reply = sock.makefile("rb").read().decode()
    assert reply.startswith("HTTP/1.") and f" {status} " in reply.splitlines()[0]
    assert is_error(json.loads(reply.partition("\r\n\r\n")[2])) and "Traceback" not in reply


def test_a_question_the_model_cannot_take_fails_alone(serve):
    def fail(request):
        if number(request) == "9":
            raise RequestError("context overflow: the prompt is longer than the model's context")

    server = serve(backend=Gated(fail))
    status, body = raw(server, "POST", "/v1/chat/completions", message("What is Q9?"))
    assert status == 400 and body["error"]["code"] == "question_not_taken" and "context" in body["error"]["message"]
    assert ask(server, "What is Q3?").model_extra["ttcl"]["answer"] == "3"


def test_a_model_failure_is_a_500_without_a_traceback_and_the_server_goes_on(serve):
    def fail(request):
        if number(request) == "8":
            raise BackendError("the model crashed")
        if number(request) == "6":
            raise ValueError("a bug")

    lines: list[str] = []
    server = serve(backend=Gated(fail), log=lines.append)
    for question, code in (("What is Q8?", "model_error"), ("What is Q6?", None)):
        status, body = raw(server, "POST", "/v1/chat/completions", message(question))
        assert status == 500 and body["error"]["type"] == "server_error" and body["error"]["code"] == code
    assert any("ValueError: a bug" in line for line in lines)
    assert ask(server, "What is Q3?").model_extra["ttcl"]["answer"] == "3"


# ---- the API key --------------------------------------------------------------------------


def test_an_api_key_is_required_when_set(serve):
    server = serve(api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        status, body = raw(server, "POST", "/v1/chat/completions", OK, headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    good = client(server, "s3cret")
    assert good.chat.completions.create(model="prog", messages=OK["messages"]).choices[0].message.content


# ---- concurrency, disconnects, limits -----------------------------------------------------


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(serve, backend):
    server = serve(max_batch=8)
    backend.gate.clear()  # the first request holds the model while the other seven queue
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(ask, server, "What is Q0?")
        until(lambda: backend.seen == ["0"], "the first question at the model")
        rest = [pool.submit(ask, server, f"What is Q{i}?") for i in range(1, 8)]
        until(lambda: server.batcher.waiting() == 7, "seven questions queued")
        backend.gate.set()
        replies = [first.result()] + [f.result() for f in rest]
    assert [r.model_extra["ttcl"]["answer"] for r in replies] == [str(i) for i in range(8)]
    assert backend.batch_sizes == [2, 14]  # 8 requests in 2 backend calls


def test_requests_with_different_seeds_are_each_run_with_their_own(serve, backend):
    server = serve()
    backend.gate.clear()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(ask, server, "What is Q0?")
        until(lambda: len(backend.seen) == 1, "the first question at the model")
        seeded = [pool.submit(ask, server, f"What is Q{s}?", seed=s) for s in (5, 6)]
        until(lambda: server.batcher.waiting() == 2, "two questions queued")
        backend.gate.set()
        assert [f.result().model_extra["ttcl"]["seed"] for f in [first, *seeded]] == [0, 5, 6]


def test_a_client_that_disconnects_while_queued_is_dropped_and_others_are_answered(serve, backend):
    server = serve()
    backend.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(ask, server, "What is Q1?")
        until(lambda: len(backend.seen) == 1, "the first question at the model")
        sock = send_raw(server, post_bytes(message("What is Q9?")))
        until(lambda: server.batcher.waiting() == 1, "the second question queued")
        sock.close()
        until(lambda: server.batcher.abandoned == 1, "the disconnect noticed")
        backend.gate.set()
        assert first.result().model_extra["ttcl"]["answer"] == "1"
    assert ask(server, "What is Q2?").model_extra["ttcl"]["answer"] == "2"
    assert "9" not in backend.seen and server.batcher.dropped == 1


def test_a_client_that_disconnects_while_its_question_runs_does_not_disturb_the_server(serve, backend):
    server = serve()
    backend.gate.clear()
    sock = send_raw(server, post_bytes(message("What is Q9?")))
    until(lambda: "9" in backend.seen, "the question at the model")
    sock.close()
    until(lambda: server.batcher.abandoned == 1, "the disconnect noticed")
    backend.gate.set()
    assert ask(server, "What is Q2?").model_extra["ttcl"]["answer"] == "2"


def test_a_full_queue_answers_503(serve, backend):
    server = serve(max_batch=1, max_queue=1)
    backend.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(ask, server, "What is Q1?")
        until(lambda: len(backend.seen) == 1, "the first question at the model")
        queued = pool.submit(ask, server, "What is Q2?")
        until(lambda: server.batcher.waiting() == 1, "the second question queued")
        status, body = raw(server, "POST", "/v1/chat/completions", message("What is Q3?"))
        assert status == 503 and body["error"]["code"] == "queue_full"
        backend.gate.set()
        assert [f.result().model_extra["ttcl"]["answer"] for f in (running, queued)] == ["1", "2"]


def test_closing_the_server_answers_the_requests_still_waiting_with_503(serve, backend):
    server = serve(max_batch=1)
    backend.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(raw, server, "POST", "/v1/chat/completions", message("What is Q1?"))
        until(lambda: len(backend.seen) == 1, "the first question at the model")
        queued = pool.submit(raw, server, "POST", "/v1/chat/completions", message("What is Q2?"))
        until(lambda: server.batcher.waiting() == 1, "the second question queued")
        server.close(timeout=0)
        for status, body in (running.result(), queued.result()):
            assert status == 503 and body["error"]["code"] == "stopping"


SLOW_SELF_VERIFY = (
    'model policy = llama("smollm2-135m")\nverifier v = self_verify(policy)\nprogram main = sample(2) |> best(v)'
)


def test_the_time_limit_stops_a_run_with_its_best_answer_so_far(serve):
    slow = ScriptedBackend(lambda r: time.sleep(0.3) or f"The answer is {number(r)}.")
    reply = ask(serve(SLOW_SELF_VERIFY, backend=slow, time_limit=0.1, grace=WAIT_S), "What is Q4?")
    extra = reply.model_extra["ttcl"]
    assert extra["stopped"] == "time" and extra["answer"] == "4" and extra["candidates"] == 2


def test_a_request_past_its_time_limit_and_grace_gets_a_504(serve, backend):
    server = serve(time_limit=0.05, grace=0.05)
    backend.gate.clear()
    status, body = raw(server, "POST", "/v1/chat/completions", message("What is Q1?"))
    assert status == 504 and body["error"]["code"] == "timeout"


def test_a_request_whose_time_limit_passes_in_the_queue_is_not_run(serve, backend):
    server = serve(time_limit=0.2, grace=WAIT_S, max_batch=1)
    backend.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, server, "What is Q1?")
        until(lambda: len(backend.seen) == 1, "the first question at the model")
        late = pool.submit(raw, server, "POST", "/v1/chat/completions", message("What is Q2?"))
        until(lambda: server.batcher.waiting() == 1, "the second question queued")
        time.sleep(0.3)  # past the queued request's limit: an order of events, not a measurement
        backend.gate.set()
        assert first.result().model_extra["ttcl"]["answer"] == "1"
        status, body = late.result()
    assert status == 504 and "waited" in body["error"]["message"] and "2" not in backend.seen


# ---- the command --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, message",
    [
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--time-limit", "-1"], "--time-limit takes a positive number"),
        (["--port", "70000"], "--port must be 0 to 65535"),
        (["--batch-window", "nan"], "--batch-window takes seconds"),
    ],
)
def test_bad_options_are_one_line(capsys, option, message):
    assert main(["serve", "programs/bon.ttcl", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_port_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "programs/bon.ttcl", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and "Traceback" not in err


def test_ctrl_c_stops_the_command_cleanly(tmp_path):
    # an openai(...) model loads nothing, so the command is serving at once
    program = tmp_path / "served.ttcl"
    program.write_text('model m = openai("http://127.0.0.1:9/v1", model="x")\n' + VOTE)
    command = [sys.executable, "-m", "ttcl", "serve", str(program), "--port", "0"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        line = proc.stderr.readline()
        assert "serving main" in line and "model `served`" in line
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"] == "served"
        conn.close()
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(WAIT_S) == 130
    finally:
        proc.kill()
    assert "stopped" in rest and "Traceback" not in rest


# ---- the embedded model -------------------------------------------------------------------

SMOL = (
    'model policy = llama("smollm2-135m", temperature=0.7, max_tokens=24, threads=1)\nprogram main = sample(2) |> vote'
)


@pytest.mark.slow
def test_the_embedded_model_served_to_concurrent_openai_clients_answers_as_run_does(serve):
    pytest.importorskip("llama_cpp")
    questions = [f"What is {a} + {a + 1}?" for a in range(3)]
    server = serve(SMOL, backend=None, max_batch=3)
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda q: ask(server, q), questions))
    program = ttcl.compile(SMOL)
    for question, reply in zip(questions, replies):
        alone = program.run(question, seed=0)  # batch-invariant: alone as in the server's batch
        assert reply.choices[0].message.content == alone.text
        # prompt tokens and FLOPs depend on the prefixes a batch shares; what was generated does not
        assert reply.usage.completion_tokens == alone.cost.generated_tokens > 0
        assert reply.model_extra["ttcl"]["flops"] > 0
