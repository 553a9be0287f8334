"""The OpenAI-compatible backend against a real server: llama-cpp-python's own
(`python -m llama_cpp.server`, see `llama_server.py`) on the embedded SmolLM2, on 127.0.0.1.
Marked slow; CI runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from llama_server import MODEL_ALIAS, Server, free_port  # noqa: E402

import ttcl  # noqa: E402
from ttcl.backends.base import BackendError, GenerationRequest, Message, SamplingParams  # noqa: E402
from ttcl.backends.models import facts_from_path
from ttcl.backends.remote import OpenAIBackend, _finish, _option_probability, _usage  # noqa: E402
from ttcl.cost.flops import counted_flops  # noqa: E402

pytest.importorskip("openai")
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")

QUESTION = (Message(role="user", content="What is 2 + 3?"),)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server") / "server.log").start()
    yield srv
    srv.kill()


def program(url: str, body: str, **options) -> ttcl.Program:
    args = "".join(f", {k}={json.dumps(v)}" for k, v in {"model": MODEL_ALIAS, **options}.items())
    return ttcl.compile(f'model m = openai("{url}"{args})\n{body}')


def request(seed: int, **params) -> GenerationRequest:
    return GenerationRequest(messages=QUESTION, params=SamplingParams(seed=seed, **{"max_tokens": 24, **params}))


# ---- against the server ------------------------------------------------------------------


@pytest.mark.slow
def test_parallel_requests_equal_one_at_a_time_and_usage_is_counted(server):
    backend = OpenAIBackend(server.url, MODEL_ALIAS, concurrency=4, config="smollm2-135m", retries=0)
    requests = [request(seed, stop=("\n\n",), logprobs=True) for seed in range(4)]
    batch = backend.generate(requests)
    assert backend.supports_n is False  # llama.cpp's server ignores n: one request per seed
    alone = [backend.generate([r])[0] for r in reversed(requests)][::-1]
    assert [g.text for g in batch] == [g.text for g in alone]
    for g in batch:
        assert 1 <= g.generated_tokens <= 24 and g.prompt_tokens > 10
        assert len(g.logprobs) == g.generated_tokens
        assert g.finish == "length" or g.generated_tokens < 24
    assert backend.counters.generated_tokens == sum(g.generated_tokens for g in batch + alone)
    assert backend.counters.prompt_tokens == sum(g.prompt_tokens for g in batch + alone)


@pytest.mark.slow
def test_a_program_runs_and_its_cost_is_the_servers_usage(server):
    prog = program(
        server.url, "program main = sample(3) |> vote", config="smollm2-135m", max_tokens=48, temperature=0.7, retries=0
    )
    backend = ttcl.backends.backend_for(prog.ir.models["m"])
    before = backend.counters.model_copy()
    result = prog.run("What is 2 + 3?", seed=1)
    cost = result.cost
    assert cost.generations == 3 and len(result.candidates) == 3
    assert cost.generated_tokens == backend.counters.generated_tokens - before.generated_tokens > 0
    assert cost.prompt_tokens == backend.counters.prompt_tokens - before.prompt_tokens > 0
    spent = {k: getattr(backend.counters, k) - getattr(before, k) for k in ("forward_tokens", "attended", "logits")}
    assert cost.flops == pytest.approx(
        counted_flops(
            facts_from_path("smollm2-135m"),
            **{"tokens": spent["forward_tokens"], "attended": spent["attended"], "logits": spent["logits"]},
        )
    )


@pytest.mark.slow
def test_self_verify_reads_log_probabilities_like_the_local_model(server):
    from ttcl.backends.llama import backend_for

    ask = [GenerationRequest(messages=(Message(role="user", content="Is 2 + 3 = 5 correct? Answer Yes or No."),))]
    served = OpenAIBackend(server.url, MODEL_ALIAS, config="smollm2-135m", retries=0).next_token_probs(
        ask, ["Yes", "No"]
    )
    local = backend_for({"kind": "llama", "path": "smollm2-135m"}).next_token_probs(ask, ["Yes", "No"])
    for p, q in zip(served[0], local[0]):
        assert 0 < p < 1 and abs(p - q) < 0.1


@pytest.mark.slow
def test_beam_search_continues_partial_solutions(server):
    prog = program(
        server.url,
        "verifier v = self_verify(m)\nprogram main = beam(4, v, width=2, depth=3) |> best(v)",
        config="smollm2-135m",
        max_tokens=32,
        retries=0,
    )
    result = prog.run("What is 2 + 3?", seed=0)
    assert result.stopped is None and result.candidates
    deep = [c for c in result.candidates if len(c.steps) > 1]
    assert all(c.text.startswith(c.steps[0]) for c in deep)  # later steps extend the first


@pytest.mark.slow
def test_chat_endpoint_without_config(server):
    prog = program(server.url, "program main = sample(2) |> vote", max_tokens=24, retries=0)
    result = prog.run("What is 2 + 3?", seed=0)
    assert len(result.candidates) == 2 and result.cost.generated_tokens > 0
    assert result.cost.flops is None  # the served model's size is unknown without config=
    with pytest.raises(ttcl.TTCLError, match="config="):
        prog.cost()


@pytest.mark.slow
def test_retries_with_backoff_on_5xx_and_keeps_concurrency(server):
    with FlakyProxy(server.url, failures=2) as proxy:
        prog = program(
            proxy.url, "program main = sample(2) |> vote", config="smollm2-135m", concurrency=2, max_tokens=8, retries=3
        )
        results = prog.run_many([f"What is {i} + 1?" for i in range(4)], seed=0)
    assert all(r.stopped is None and len(r.candidates) == 2 for r in results)
    assert proxy.refused == 2 and proxy.forwarded == 8
    assert proxy.most_in_flight <= 2


@pytest.mark.slow
def test_eval_resumes_after_the_server_is_killed_mid_eval(tmp_path):
    srv = Server(tmp_path / "server.log").start()
    try:
        source = tmp_path / "p.ttcl"
        source.write_text(
            f'model m = openai("{srv.url}", model="{MODEL_ALIAS}", config="smollm2-135m", '
            "concurrency=2, retries=1, max_tokens=24)\nprogram main = sample(2) |> vote\n"
        )
        out = tmp_path / "results.jsonl"
        command = [
            sys.executable,
            "-m",
            "ttcl",
            "eval",
            str(source),
            "--dataset",
            "arith:1",
            "--limit",
            "12",
            "--output",
            str(out),
        ]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while run.poll() is None and not (out.exists() and out.read_text().count("\n") >= 3):
            time.sleep(0.1)
        srv.kill()
        output = run.communicate(timeout=120)[0]
        assert run.returncode != 0 and "cannot reach the server" in output and "Traceback" not in output
        kept = out.read_text()
        done = len(kept.splitlines())
        assert 3 <= done < 12
        served = srv.completions_served()
        srv.start()
        resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        text = out.read_text()
        assert text.startswith(kept)  # nothing already recorded is lost or rewritten
        indices = sorted(json.loads(line)["index"] for line in text.splitlines())
        assert indices == list(range(12))
        assert srv.completions_served() - served == 2 * (12 - done)  # no recorded question ran again
    finally:
        srv.kill()


@pytest.mark.slow
def test_ctrl_c_stops_a_served_eval_and_keeps_what_finished(server, tmp_path):
    import signal

    source = tmp_path / "p.ttcl"
    source.write_text(
        f'model m = openai("{server.url}", model="{MODEL_ALIAS}", config="smollm2-135m", '
        "concurrency=2, max_tokens=24)\nprogram main = sample(2) |> vote\n"
    )
    out = tmp_path / "results.jsonl"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ttcl",
            "eval",
            str(source),
            "--dataset",
            "arith:1",
            "--limit",
            "40",
            "--output",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while run.poll() is None and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 130 and "--resume" in output and "Traceback" not in output
    lines = out.read_text().splitlines()
    assert 2 <= len(lines) < 40
    assert len({json.loads(line)["index"] for line in lines}) == len(lines)


@pytest.mark.slow
def test_unreachable_server_is_a_clear_error():
    prog = program(f"http://127.0.0.1:{free_port()}/v1", "program main = sample(2) |> vote", retries=0)
    with pytest.raises(BackendError, match="cannot reach the server"):
        prog.run("What is 2 + 3?")


# ---- without a server ----------------------------------------------------------------------


def test_hidden_states_from_a_served_model_is_a_check_error(errors_of):
    text = errors_of(
        'model m = openai("http://127.0.0.1:1/v1", model="x")\n'
        'verifier v = prm("heads/arith.safetensors")\nprogram main = sample(2) |> best(v)'
    )
    assert "reads hidden states" in text and "m=local" in text


def test_declaration_errors(errors_of):
    assert "model" in errors_of('model m = openai("http://h/v1")\nprogram main = sample(2) |> vote')
    with pytest.raises(BackendError, match="http"):
        ttcl.compile('model m = openai("h:8000", model="x")\nprogram main = sample(2) |> vote').run("q")


def test_finish_reasons():
    assert _finish({"finish_reason": "length"}, "a", None, ("\n\n",)) == "length"
    assert _finish({"finish_reason": "stop"}, "a", None, ()) == "eos"
    assert _finish({"finish_reason": "stop", "stop_reason": "\n\n"}, "a", None, ("\n\n",)) == "stop"
    assert _finish({"finish_reason": "stop", "stop_reason": None}, "a", None, ("\n\n",)) == "eos"
    # llama.cpp reports the tokens that held the stop string past the text
    assert _finish({"finish_reason": "stop"}, "a. ", ["a", ".", " \n", "\n"], ("\n\n",)) == "stop"
    assert _finish({"finish_reason": "stop"}, "a.", ["a", "."], ("\n\n",)) == "eos"


def test_usage_split_and_cached_prompt():
    reply = {"usage": {"prompt_tokens": 10, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}}}
    assert _usage(reply, [1, 2]) == (6, [3, 6])
    assert _option_probability({"Yes": 0.0, " No": -1.0}, "Yes") == 1.0
    assert _option_probability({"Ye": -1.0, "Y": -2.0}, "Yes") == pytest.approx(0.3679, abs=1e-4)
    assert _option_probability({"No": 0.0}, "Yes") == 0.0


class FlakyProxy:
    """A proxy in front of the server that answers its first `failures` requests with 503,
    forwards the rest, and records how many it had in flight at once."""

    def __init__(self, target: str, failures: int):
        self.target, self.failures = target.removesuffix("/v1"), failures
        self.refused = self.forwarded = self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.forward(None)

            def do_POST(self):
                self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def forward(self, body):
                import urllib.request

                with proxy.lock:
                    refuse = body is not None and proxy.refused < proxy.failures
                    proxy.refused += refuse
                    proxy.in_flight += 1
                    proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                try:
                    if refuse:
                        self.send_response(503)
                        self.end_headers()
                        return
                    req = urllib.request.Request(
                        proxy.target + self.path, data=body, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(req, timeout=120) as reply:
                        data = reply.read()
                    with proxy.lock:
                        proxy.forwarded += body is not None
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
