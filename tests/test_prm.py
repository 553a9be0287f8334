"""PRMs: the trained head (`prm(...)`), its training from Monte Carlo rollouts (`ttcl
train-prm`), the default `prm`, and transformers checkpoints (`hf_prm(...)`).

Training runs on the scripted backend, whose "model" continues a solution that has gone
wrong to a wrong answer, and whose hidden states are features of the text: a head trained on
the rollout labels must then really separate good steps from bad ones on held-out questions.
"""

import json

import numpy as np
import pytest
from conftest import check_text

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.errors import TTCLError
from ttcl.eval.train_prm import Settings, auroc, collect, read_data, train
from ttcl.runtime.prm import Head, load_head, read_card, resolve_head_path

GOOD = "First I add the numbers, which is correct.\n\nThe answer is 5."
BAD = "First I add the numbers, which is wrong.\n\nThe answer is 7."


def script(request):
    """Solutions alternate by seed; a rollout follows the way its prefix went."""
    if "wrong" in request.prefix:
        return "So the answer is 7."
    if "correct" in request.prefix:
        return "So the answer is 5."
    return GOOD if request.params.seed % 2 else BAD


def questions(n=20):
    return [{"question": f"What is 2 + 3? (#{i})", "answer": "5"} for i in range(n)]


def small_head(d=8, seed=0) -> Head:
    rng = np.random.default_rng(seed)
    t = {
        "w1": rng.normal(size=(4, d)).astype(np.float32),
        "b1": np.zeros(4, np.float32),
        "w2": rng.normal(size=(1, 4)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
        "mean": np.zeros(d, np.float32),
        "std": np.ones(d, np.float32),
    }
    return Head(t, {"base_model": "test"})


# --------------------------------------------------------------------------- the head


def test_a_head_round_trips_through_safetensors(tmp_path):
    head, x = small_head(), np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    head.save(tmp_path / "h.safetensors")
    again = load_head(str(tmp_path / "h.safetensors"))
    assert again.meta == {"base_model": "test"}
    assert np.allclose(again.score(x), head.score(x))
    assert ((head.score(x) > 0) & (head.score(x) < 1)).all()


def test_the_numpy_head_computes_what_the_torch_net_it_was_trained_as_does():
    torch = pytest.importorskip("torch")
    head, x = small_head(), np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(4, 1))
    net.load_state_dict(
        {
            "0.weight": torch.tensor(head.tensors["w1"]),
            "0.bias": torch.tensor(head.tensors["b1"]),
            "2.weight": torch.tensor(head.tensors["w2"]),
            "2.bias": torch.tensor(head.tensors["b2"]),
        }
    )
    expected = torch.sigmoid(net(torch.tensor(x))[:, 0]).detach().numpy()
    assert np.allclose(head.score(x), expected, atol=1e-5)


def test_missing_and_broken_heads_are_clear_errors(tmp_path):
    with pytest.raises(TTCLError, match="no PRM head at nowhere.safetensors: train one"):
        resolve_head_path("nowhere.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(TTCLError, match="is not a PRM head"):
        load_head(str(tmp_path / "bad.safetensors"))


def test_auroc():
    assert auroc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert auroc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auroc(np.array([0.5]), np.array([True])) is None


# --------------------------------------------------------------------------- training


def test_rollouts_label_steps_by_the_fraction_that_reach_the_answer(tmp_path):
    backend = ScriptedBackend(script)
    records = collect(backend, questions(3), tmp_path / "d.jsonl", Settings(samples=2, rollouts=3))
    assert [r["index"] for r in records] == [0, 1, 2]
    for rec in records:
        for sol in rec["solutions"]:
            good = "correct" in sol["steps"][0]
            assert sol["labels"] == ([1.0, 1.0] if good else [0.0, 0.0])
            assert len(sol["features"]) == len(sol["self_verify"]) == 2


def test_a_trained_head_separates_good_steps_from_bad_on_held_out_questions(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "heads" / "t.safetensors"
    info = train(
        ScriptedBackend(script),
        questions(20),
        out,
        Settings(samples=2, rollouts=2, epochs=200),
        {"base_model": "scripted"},
        log=lambda _: None,
    )
    assert info["held_out"]["auroc"] == 1.0
    assert info["held_out"]["accuracy"] == 1.0
    assert info["held_out_questions"] == 4 and info["questions"] == 20
    assert json.loads(out.with_suffix(".json").read_text()) == info
    head = load_head(str(out))
    assert head.meta["base_model"] == "scripted" and head.d_model == 8


def test_training_refuses_to_overwrite_and_resumes_losing_and_repeating_nothing(tmp_path):
    data = tmp_path / "t.steps.jsonl"
    calls = {"n": 0}

    def interrupted(request):
        calls["n"] += 1
        if calls["n"] > 30:
            raise KeyboardInterrupt
        return script(request)

    settings = Settings(samples=2, rollouts=2, batch_questions=2)
    with pytest.raises(KeyboardInterrupt):
        collect(ScriptedBackend(interrupted), questions(8), data, settings)
    kept = read_data(data)
    assert 0 < len(kept) < 8
    with open(data, "a") as f:  # a killed process leaves a torn line
        f.write('{"index": 7, "quest')
    resumed = collect(ScriptedBackend(script), questions(8), data, settings)
    fresh = collect(ScriptedBackend(script), questions(8), tmp_path / "fresh.jsonl", settings)
    assert resumed == fresh
    with pytest.raises(TTCLError, match="pass --resume"):
        train(ScriptedBackend(script), questions(8), tmp_path / "t.safetensors", settings, {})


# --------------------------------------------------------------------------- in programs


def test_prm_scores_steps_from_the_policys_hidden_states(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "t.safetensors"
    train(
        ScriptedBackend(script),
        questions(10),
        out,
        Settings(samples=2, rollouts=2, epochs=200),
        {"base_model": "scripted"},
        log=lambda _: None,
    )
    program = ttcl.compile(f'verifier v = prm("{out}")\nprogram main = sample(6) |> best(v)\n')
    backend = ScriptedBackend(script)
    result = program.run("What is 2 + 3?", backend=backend)
    assert result.answer == "5" and "correct" in result.text
    scores = [c.score for c in result.candidates]
    assert min(s for s, c in zip(scores, result.candidates) if "correct" in c.text) > max(
        s for s, c in zip(scores, result.candidates) if "wrong" in c.text
    )
    assert result.cost.verifier_prompt_tokens > 0  # the hidden-state pass is counted


def test_a_head_for_another_width_is_a_clear_error(tmp_path):
    small_head(d=5).save(tmp_path / "h.safetensors")
    program = ttcl.compile(f'verifier v = prm("{tmp_path / "h.safetensors"}")\nprogram main = sample(2) |> best(v)\n')
    with pytest.raises(TTCLError, match="hidden size 5.*has hidden size 8"):
        program.run("q", backend=ScriptedBackend(script))


def test_the_default_prm_is_the_shipped_head_for_smollm2_and_self_verify_otherwise():
    (smol,) = check_text("program main = sample(4) |> best(prm)\n")
    assert smol.ir.verifiers["prm"] == {"kind": "prm", "path": "arith.safetensors", "m": "policy", "agg": "last"}
    (other,) = check_text('model m = llama("other.gguf")\nprogram main = sample(4) |> best(prm)\n')
    assert other.ir.verifiers["prm"] == {"kind": "self_verify", "m": "m", "agg": "last"}
    (declared,) = check_text(
        'model m = llama("x.gguf")\nverifier prm = prm("h.safetensors", agg="min")\n'
        "program main = sample(4) |> best(prm)\n"
    )
    assert declared.ir.verifiers["prm"] == {"kind": "prm", "path": "h.safetensors", "agg": "min", "m": "m"}


def test_the_shipped_head_loads_and_fits_smollm2():
    head = load_head("heads/arith.safetensors")
    assert head.d_model == 576 and head.meta["base_model"] == "smollm2-135m"
    card = read_card(resolve_head_path("heads/arith.safetensors"))
    assert card["model_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and {"auroc", "self_verify_auroc"} <= set(
        card["held_out"]
    )


# --------------------------------------------------------------------------- hf_prm


def _tiny_checkpoint(path, kind: str):
    """A tiny randomly initialised Llama PRM and a byte-level tokenizer, saved like a hub
    checkpoint: a token classifier (2 labels) or a causal LM read at step tags."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        ["What is 2 + 3? First add. The answer is 5. ки + -"] * 20,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<pad>", "<eos>"],
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_labels=2,
        pad_token_id=0,
    )
    model = (transformers.LlamaForTokenClassification if kind == "token" else transformers.LlamaForCausalLM)(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["token", "tagged"])
def test_hf_prm_scores_every_step_of_a_local_checkpoint(tmp_path, kind):
    path = _tiny_checkpoint(tmp_path / kind, kind)
    src = f'verifier v = hf_prm("{path}", agg="min")\nprogram main = sample(4) |> best(v)\n'
    result = ttcl.compile(src).run("What is 2 + 3?", backend=ScriptedBackend(script))
    for c in result.candidates:
        steps = c.scores["v"]
        assert len(steps) == len(c.steps) == 2 and all(0.0 < s < 1.0 for s in steps)
    again = ttcl.compile(src).run("What is 2 + 3?", backend=ScriptedBackend(script))
    assert [c.scores for c in again.candidates] == [c.scores for c in result.candidates]


def test_hf_prm_without_a_checkpoint_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    program = ttcl.compile(f'verifier v = hf_prm("{tmp_path}")\nprogram main = sample(2) |> best(v)\n')
    with pytest.raises(TTCLError, match="not a transformers checkpoint"):
        program.run("q", backend=ScriptedBackend(script))


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-o", "head.bin"], "-o/--output names a .safetensors file"),
        (["-o", "h.safetensors", "--model", "nowhere.gguf"], "nowhere.gguf"),
        (["--out", "h.safetensors", "--dataset", "arith:9"], "arith levels are arith:1 to arith:5"),
    ],
)
def test_train_prm_command_errors_are_one_clear_line(capsys, tmp_path, argv, message):
    from ttcl.cli.app import main

    argv = [a if not a.startswith("h") else str(tmp_path / a) for a in argv]
    code = main(["train-prm", *argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
