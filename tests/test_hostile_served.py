"""Hostile servers and hostile chat templates.

Every malformed reply of an OpenAI-compatible server (`hostile_server.py` serves each kind) is
a BackendError naming the server and what was wrong, never a traceback; an eval that meets one
keeps the questions it finished, exits 1 (not 130, "interrupted"), and resumes once the server
is fixed. A chat template from a model file that would hang a run or exhaust memory is a
BackendError naming the model file; the sandbox still refuses code.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_server import ERRORS, HOSTILE, HostileServer  # noqa: E402

import ttcl  # noqa: E402
from ttcl.backends import chat  # noqa: E402
from ttcl.backends.base import Backend, BackendError, Generation, GenerationRequest, Message, RequestError  # noqa: E402
from ttcl.backends.chat import render_chat  # noqa: E402

pytest.importorskip("openai")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_model(directory: Path, template: str = CHATML) -> str:
    """A transformers model directory without weights: what `config=` reads (the chat template
    and the numbers that price FLOPs)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
    }
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer = {"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return str(directory)


def program(url: str, body: str = "program main = sample(2) |> vote", **options) -> ttcl.Program:
    args = "".join(f", {k}={json.dumps(v)}" for k, v in {"model": "x", "retries": 0, **options}.items())
    return ttcl.compile(f'model m = openai("{url}"{args})\n{body}')


def endpoint_options(endpoint: str, tmp_path: Path) -> dict:
    """/chat/completions without config=, /completions with a local chat template."""
    return {"config": tiny_model(tmp_path / "tiny")} if endpoint == "completions" else {}


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("mode", HOSTILE)
def test_a_malformed_reply_is_an_error_naming_the_server(mode, endpoint, tmp_path):
    with HostileServer(mode) as server:
        prog = program(server.url, **endpoint_options(endpoint, tmp_path))
        with pytest.raises(BackendError) as caught:
            prog.run("What is 2 + 3?")
    message = caught.value.message
    assert server.url in message
    assert "not an OpenAI-compatible completion" in message
    assert "(running `sample` at" in message  # the executor names the node


@pytest.mark.parametrize("mode", ERRORS)
def test_an_http_error_with_a_hostile_body_is_an_error_naming_the_server(mode):
    with HostileServer(mode) as server:
        with pytest.raises(BackendError) as caught:
            program(server.url).run("What is 2 + 3?")
    message = caught.value.message
    assert server.url in message and "the server refused the request (HTTP" in message
    assert len(message) < 1000  # a server's error body is cut short
    # a 4xx refuses this request (one question's failure), a 5xx is the server's own
    assert isinstance(caught.value, RequestError) == (ERRORS[mode](True)[0] < 500)


@pytest.mark.parametrize("mode", HOSTILE)
def test_a_malformed_reply_to_self_verify_is_an_error_naming_the_server(mode):
    from ttcl.backends.remote import OpenAIBackend

    with HostileServer(mode) as server:
        backend = OpenAIBackend(server.url, "x", retries=0)
        ask = [GenerationRequest(messages=(Message(role="user", content="Is 2 + 3 = 5? Yes or No."),))]
        with pytest.raises(BackendError) as caught:
            backend.next_token_probs(ask, ["Yes", "No"])
    assert server.url in caught.value.message and "not an OpenAI-compatible completion" in caught.value.message


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_well_formed_replies_still_run_and_are_counted(endpoint, tmp_path):
    with HostileServer("ok") as server:
        result = program(server.url, **endpoint_options(endpoint, tmp_path)).run("What is 2 + 3?")
    assert result.stopped is None and result.answer == "5" and len(result.candidates) == 2
    assert result.cost.generated_tokens == 10  # 5 a reply, by the server's usage


def test_a_server_without_log_probabilities_is_still_the_clear_error():
    from ttcl.backends.remote import OpenAIBackend

    with HostileServer("ok") as server:
        ask = [GenerationRequest(messages=(Message(role="user", content="Yes or No?"),))]
        with pytest.raises(BackendError, match="returns no log-probabilities"):
            OpenAIBackend(server.url, "x", retries=0).next_token_probs(ask, ["Yes", "No"])


def test_replies_that_all_came_are_kept_when_another_thread_cancels():
    from ttcl.backends.remote import OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "x", retries=0)
    cancel = threading.Event()
    cancel.set()  # another question failed, or Ctrl-C: only what is still pending is given up
    try:
        replies = backend._map(lambda call: call, [1, 2, 3], cancel)
    except KeyboardInterrupt:
        pytest.fail("replies that had all come were thrown away as interrupted")
    assert replies == [1, 2, 3]


# --------------------------------------------------------------------------- question threads


class Buggy(Backend):
    """A concurrent backend that fails with a non-TTCL exception on questions with "boom"."""

    concurrent = True
    concurrency = 2

    def __init__(self):
        super().__init__("buggy")

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if any("boom" in r.messages[-1].content for r in requests):
            raise ZeroDivisionError("a bug in a backend")
        return [Generation(text="The answer is 5.", prompt_tokens=3, generated_tokens=5, finish="eos")] * len(requests)


def test_a_non_ttcl_error_in_a_question_thread_is_raised_as_itself_and_finished_results_are_kept():
    finished: dict[int, object] = {}
    prog = ttcl.compile("program main = sample(1) |> vote")
    questions = ["What is 2 + 3?", "boom", *[f"What is {i} + 1?" for i in range(8)]]
    with pytest.raises(ZeroDivisionError, match="a bug in a backend"):  # not "interrupted"
        prog.run_many(questions, backend=Buggy(), on_result=lambda i, r: finished.setdefault(i, r))
    assert 0 in finished  # ran beside the failing question
    assert all(r.stopped is None and r.answer == "5" for i, r in finished.items() if r.stopped != "interrupted")
    assert 1 not in finished


# --------------------------------------------------------------------------- the eval command


def eval_command(source: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ttcl", "eval", str(source), "--dataset", str(dataset), "--output", str(out), *extra]


def run_eval(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def indices(out: Path) -> list[int]:
    return sorted(json.loads(line)["index"] for line in out.read_text().splitlines())


@pytest.mark.parametrize(
    "mode, concurrency",
    [("not_json", 1), ("choices_strings", 3)],  # each kind of reply: see the tests above
)
def test_an_eval_against_a_hostile_server_keeps_what_finished_and_resumes(mode, concurrency, tmp_path):
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text("".join(json.dumps({"question": f"What is {i} + 4?", "answer": "5"}) + "\n" for i in range(6)))
    out = tmp_path / "results.jsonl"
    with HostileServer(mode, good=2) as server:  # two good replies, then hostile ones
        source = tmp_path / "p.ttcl"
        source.write_text(
            f'model m = openai("{server.url}", model="x", retries=0, concurrency={concurrency})\n'
            "program main = sample(1) |> vote\n"
        )
        command = eval_command(source, dataset, out)
        failed = run_eval(command)
        assert failed.returncode == 1, failed.stderr  # an error, not 130 ("interrupted")
        assert "Traceback" not in failed.stderr and "interrupted" not in failed.stderr
        assert server.url in failed.stderr and "not an OpenAI-compatible completion" in failed.stderr
        kept = out.read_text()
        assert len(indices(out)) == 2  # the questions that finished before the bad reply
        if concurrency == 1:
            assert indices(out) == [0, 1]

        still = run_eval([*command, "--resume"])  # the server is still broken
        assert still.returncode == 1 and "Traceback" not in still.stderr and server.url in still.stderr
        assert out.read_text() == kept

        server.mode = "ok"  # fixed
        served = server.served
        resumed = run_eval([*command, "--resume"])
        assert resumed.returncode == 0, resumed.stderr
        assert "Traceback" not in resumed.stderr
        assert out.read_text().startswith(kept)  # nothing recorded is lost or rewritten
        assert indices(out) == list(range(6))
        assert server.served - served == 4  # no recorded question ran again


def test_a_failure_lets_the_other_questions_requests_in_flight_finish():
    # three questions at once: the first two replies are good but slow, the third is hostile
    # and comes first; the two good ones are still kept, and the failure is raised as itself
    finished: dict[int, ttcl.Result] = {}
    with HostileServer("choices_strings", good=2, good_delay=1.0) as server:
        prog = program(server.url, "program main = sample(1) |> vote", concurrency=3)
        questions = [f"What is {i} + 4?" for i in range(3)]
        with pytest.raises(BackendError, match="not an OpenAI-compatible completion"):
            prog.run_many(questions, on_result=lambda i, r: finished.__setitem__(i, r))
    assert server.served == 3
    assert len(finished) == 2 and all(r.stopped is None and r.answer is not None for r in finished.values())


def test_a_real_ctrl_c_is_still_interrupted(tmp_path):
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text("".join(json.dumps({"question": f"What is {i} + 4?", "answer": "5"}) + "\n" for i in range(60)))
    out = tmp_path / "results.jsonl"
    with HostileServer("ok", delay=0.2) as server:
        source = tmp_path / "p.ttcl"
        source.write_text(
            f'model m = openai("{server.url}", model="x", retries=0, concurrency=2)\nprogram main = sample(1) |> vote\n'
        )
        run = subprocess.Popen(eval_command(source, dataset, out), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while run.poll() is None and time.monotonic() < deadline and not (out.exists() and len(indices(out)) >= 2):
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        stderr = run.communicate(timeout=60)[1]
    assert run.returncode == 130 and "--resume" in stderr and "Traceback" not in stderr
    assert 2 <= len(indices(out)) < 60


# --------------------------------------------------------------------------- chat templates


def ask(text: str = "What is 2 + 3?") -> GenerationRequest:
    return GenerationRequest(messages=(Message(role="user", content=text),))


HOSTILE_TEMPLATES = {
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over text": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "repeat": "{{ 'x' * 9999999999 }}",
    "repeat a list": "{{ [1, 2] * 9999999999 }}",
    "power": "{{ 9 ** 99999999 }}",
    "squaring": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "concat doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "plus doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "replace doubling": "{% set ns = namespace(s='x') %}"
    "{% for i in range(64) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}",
    "shared lists": "{% set ns = namespace(v=[1]) %}{% for i in range(80) %}{% set ns.v = [ns.v, ns.v] %}{% endfor %}"
    "{{ ns.v }}",
    "shared tuple as a key": "{% set ns = namespace(v=(1,)) %}"
    "{% for i in range(80) %}{% set ns.v = (ns.v, ns.v) %}{% endfor %}{{ {ns.v: 1} }}",
    "shared lists compared": "{% set ns = namespace(a=[1], b=[1]) %}"
    "{% for i in range(80) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
    "{{ ns.a == ns.b }}",
    "center": "{{ 'x'|center(9999999999) }}",
    "ljust": "{{ 'x'.ljust(9999999999) }}",
    "percent width": "{{ '%9999999999s' % 'x' }}",
    "percent star width": "{{ '%*s' % (9999999999, 'x') }}",
    "format width": "{{ '{:>9999999999}'.format(1) }}",
    "format filter": "{{ '%9999999999s'|format('x') }}",
    "replace everywhere": "{{ ('x' * 1000000).replace('', 'yyyyyyyy') }}",
    "join separator": "{{ ('x' * 1000000).join(range(99999)|list|map('string')) }}",
    "join filter": "{{ range(99999)|join('x' * 1000000) }}",
    "indent": "{{ ('\\n' * 1000000)|indent('x' * 1000) }}",
    "wordwrap": "{{ ('ab ' * 1000000)|wordwrap(2, wrapstring='x' * 1000) }}",
    "tojson indent": "{{ ([[[[1]]]] * 100000)|tojson(indent=1000000) }}",
    "sum of lists": "{{ range(99999)|batch(1)|sum(start=[]) }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000000) }}",
    "long output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "long literal output": "{% for i in range(99999) %}{% for j in range(99999) %}LITERAL TEXT{% endfor %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "deep nesting": "{% set ns = namespace(v=1) %}{% for i in range(1000) %}{% set ns.v = [ns.v] %}{% endfor %}"
    "{{ ns.v|tojson }}",
}


@pytest.mark.parametrize("name", list(HOSTILE_TEMPLATES))
def test_a_template_past_its_limits_is_a_backend_error_naming_the_model(name, monkeypatch):
    monkeypatch.setattr(chat, "MAX_STEPS", 50_000)  # the same checks, reached sooner
    start = time.monotonic()
    with pytest.raises(BackendError) as caught:
        render_chat(HOSTILE_TEMPLATES[name], ask(), "/models/evil.gguf")
    assert caught.value.message.startswith("model /models/evil.gguf: its chat template exceeded its limits")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("name", ["nested loops", "repeat"])
def test_the_briefs_examples_stop_within_the_default_limits(name):
    start = time.monotonic()
    with pytest.raises(BackendError, match="model m.gguf: its chat template exceeded its limits"):
        render_chat(HOSTILE_TEMPLATES[name], ask(), "m.gguf")
    assert time.monotonic() - start < chat.MAX_SECONDS


def test_a_slow_template_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(chat, "MAX_SECONDS", 0.3)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"exceeded its limits: rendering took more than 0\.3 s"):
        render_chat(HOSTILE_TEMPLATES["exponential macro"], ask(), "m")
    assert time.monotonic() - start < 3


def test_limits_are_per_render():
    with pytest.raises(BackendError):
        render_chat(HOSTILE_TEMPLATES["long output"], ask(), "m")
    template = "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}"  # 3M characters: within
    for _ in range(2):
        assert len(render_chat(template, ask(), "m")) == 3_000_000


INJECTIONS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__()[0] }}",
    "{{ messages.__class__.__base__.__subclasses__()|length }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
    "{% set _ = messages.append({'role': 'system', 'content': 'pwned'}) %}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_the_sandbox_still_refuses_code(payload):
    with pytest.raises(BackendError, match="model m: its chat template failed"):
        render_chat(payload, ask(), "m")


RICH = """{%- set ns = namespace(system='', last_user=0) -%}
{%- for m in messages[::-1] -%}{%- if m.role == 'user' and ns.last_user == 0 -%}
{%- set ns.last_user = (messages|length - 1) - loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0].content|trim -%}{%- endif -%}
{{- bos_token ~ '<|system|>' ~ (ns.system or 'You are helpful.') ~ '\\n' -}}
{%- if tools is defined -%}{{ tools|tojson(indent=2) }}{%- endif -%}
{%- for m in messages if m.role != 'system' -%}
{%- set content = m.content.split('</think>')[-1].lstrip('\\n') -%}
{{- '<|%s|>' % m.role }}{{ '{}:{}'.format(loop.index, loop.length) }} {{ content|replace('  ', ' ')|indent(2) }}
{%- if not loop.last %}{{ '\\n' }}{% endif -%}
{%- if loop.index0 == ns.last_user %}[last user]{% endif -%}
{%- endfor -%}
{{- ' '.join(['a', 'b']) ~ (messages|map(attribute='role')|join(',')) ~ {'k': [1, 2]}|tojson -}}
{%- if add_generation_prompt %}<|assistant|>{{ eos_token if false else '' }}{% endif -%}"""


def test_real_templates_render_as_in_the_plain_sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "What is 2 + 3?  Think."},
        {"role": "assistant", "content": "<think>hmm</think>\n5"},
        {"role": "user", "content": "And 4 + 4?\nSay it."},
    ]
    context = {"messages": messages, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
    for template in (CHATML, RICH):
        plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
        assert chat.render_template(template, **context) == plain.render(**context)
        with_tools = {**context, "tools": [{"name": "calc", "parameters": {"a": {"type": "int"}}}]}
        assert chat.render_template(template, **with_tools) == plain.render(**with_tools)


def test_a_served_models_hostile_template_names_the_model_files(tmp_path):
    files = tiny_model(tmp_path / "evil-model", HOSTILE_TEMPLATES["repeat"])
    with HostileServer("ok") as server:
        with pytest.raises(BackendError) as caught:
            program(server.url, config=files).run("What is 2 + 3?")
        served = server.served
    message = caught.value.message
    assert files in message and server.url in message and "its chat template exceeded its limits" in message
    assert served == 0  # refused before any request


@pytest.mark.parametrize(
    "tokenizer_config", ["[1, 2]", "[" * 100_000 + "]" * 100_000, b"\xff\xfe{"], ids=["a-list", "deep", "not-utf8"]
)
def test_an_unreadable_tokenizer_config_falls_back_to_the_template_file(tmp_path, tokenizer_config):
    files = Path(tiny_model(tmp_path / "model"))
    path = files / "tokenizer_config.json"
    path.write_bytes(tokenizer_config if isinstance(tokenizer_config, bytes) else tokenizer_config.encode())
    (files / "chat_template.jinja").write_text(CHATML)
    with HostileServer("ok") as server:
        result = program(server.url, config=str(files)).run("What is 2 + 3?")
    assert result.answer is not None and server.served > 0
