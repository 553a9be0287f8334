"""The cost analyzer: model facts, the FLOPs formula, the paper's exchange (checked against
numbers worked out by hand), per-node estimates of the stdlib strategies, calibration,
budget rejection and `ttcl cost`. Reads the embedded GGUF's metadata; never loads a model."""

import json

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.backends.models import (
    ModelFactsError,
    facts_from_config,
    facts_from_gguf,
    facts_from_spec,
    resolve_model_path,
)
from ttcl.cli.app import main
from ttcl.cost.calibration import Calibration, Priors
from ttcl.cost.fit import calibrate, with_factors
from ttcl.cost.flops import exchange, forward_flops, matching_size

HEADER = """
import "parallel"
import "search"
import "revision"
model policy = llama("smollm2-135m")
verifier prm = self_verify(policy)
"""


UPPER = Calibration()  # no priors: the program's own, the upper bounds worked out by hand below


def report(body: str, **kw):
    kw.setdefault("calibration", UPPER)
    return ttcl.compile(HEADER + f"program main = {body}\n").cost(**kw)


def node(rep, op):
    return next(e for e in rep.nodes if e.op == op)


@pytest.fixture(scope="module")
def smollm2():
    return facts_from_gguf(resolve_model_path("smollm2-135m"))


# ---- model facts -------------------------------------------------------------------------


def test_smollm2_facts_from_the_gguf_file(smollm2):
    f = smollm2
    assert (f.n_layer, f.d_model, f.n_head, f.n_head_kv, f.head_dim, f.n_vocab) == (30, 576, 9, 3, 64, 49152)
    assert f.d_attn == 576 and f.d_kv == 192 and f.n_ctx == 8192 and f.architecture == "llama"
    # 134,515,008 parameters in all; token_embd is 576 x 49152 = 28,311,552 and there is no
    # output.weight (the embedding is tied), so N = 134,515,008 - 28,311,552 = 106,203,456
    assert f.params == 134_515_008 and f.params_non_embedding == 106_203_456 and f.tied_embeddings
    assert facts_from_gguf(resolve_model_path("smollm2-135m")) is f  # cached per file


SMOLLM2_CONFIG = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


def test_facts_from_a_config_match_the_gguf(tmp_path, smollm2):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    f = facts_from_config(tmp_path)
    # per layer: q 576·576 + k, v 2·576·192 + o 576·576 + MLP 3·576·1536 + norms 2·576
    #          = 331,776 + 221,184 + 331,776 + 2,654,208 + 1,152 = 3,540,096; × 30 + final norm 576
    assert f.params_non_embedding == 3_540_096 * 30 + 576 == smollm2.params_non_embedding
    assert f.params == smollm2.params and (f.n_layer, f.d_attn, f.d_kv) == (30, 576, 192)


def test_facts_from_a_gpt2_config(tmp_path):
    config = {
        "model_type": "gpt2",
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "vocab_size": 50257,
        "n_positions": 1024,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    f = facts_from_config(tmp_path / "config.json")
    # per layer 4·768² (attention) + 2·768·3072 (MLP) + 2·768 (norms) = 7,079,424; GPT-2 small's ~85M
    assert f.params_non_embedding == 7_079_424 * 12 + 768 and f.params == f.params_non_embedding + 50257 * 768


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "model file not found"),
        (b"not a model", "not a GGUF model file"),
        (b"GGUF\x03\x00\x00\x00garbage", "corrupt GGUF model file"),
    ],
)
def test_bad_model_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "m.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFactsError, match=message) as info:
        facts_from_gguf(path)
    assert str(path) in info.value.message


def test_bad_configs(tmp_path):
    with pytest.raises(ModelFactsError, match="model config not found"):
        facts_from_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelFactsError, match="lacks 'hidden_size'"):
        facts_from_config(tmp_path)


def test_spec_facts():
    f = facts_from_spec({"params": 1.7e9, "layers": 24, "d_model": 2048, "heads": 32, "vocab": 49152})
    assert f.params_non_embedding == 1.7e9 - 49152 * 2048 and f.d_attn == 2048 and not f.notes
    assert facts_from_spec({"params": 1e9}).notes  # no layers: the attention term is left out


# ---- the FLOPs formula and the exchange --------------------------------------------------


def test_forward_flops_by_hand(smollm2):
    # one token at position 0: 2N + 4·30·576·1 = 212,406,912 + 69,120
    assert forward_flops(smollm2, 1) == 212_476_032
    # its logits add 2·576·49152 = 56,623,104
    assert forward_flops(smollm2, 1, logits=1) == 212_476_032 + 56_623_104
    # 10 tokens from position 100 attend over 101..110 positions, 1055 in all
    assert forward_flops(smollm2, 10, 100) == 10 * 212_406_912 + 4 * 30 * 576 * 1055


@pytest.mark.parametrize(
    "ratio, multiple",
    [
        (0.16, 257.75),  # 14 + 3·13/0.16 = 14 + 39/0.16 = 14 + 243.75
        (0.79, 63.367088607594937),  # 14 + 39/0.79 = 14 + 49.3670886...
        (22, 15.772727272727273),  # 14 + 39/22 = 14 + 1.7727...
    ],
)
def test_exchange_for_the_papers_ratios(ratio, multiple):
    x = exchange(14, ratio)
    assert x.multiple == pytest.approx(multiple, rel=1e-12)
    # the definition: the small model (N = 1, D_pretrain = 1, D_inference = R) spending k
    # times its inference compute costs what the 14x model costs spending it once
    assert 6 * 1 + 2 * x.multiple * ratio == pytest.approx(14 * (6 + 2 * ratio))
    assert matching_size(multiple, ratio).size_ratio == pytest.approx(14)  # (kR + 3) / (R + 3)


def test_exchange_refuses_nonsense():
    with pytest.raises(ttcl.TTCLError, match="ratio must be a positive number"):
        exchange(14, 0)


# ---- per-node estimates ------------------------------------------------------------------


def test_sample_pays_its_prompt_once(smollm2):
    one, sixteen = node(report("majority(1)"), "sample"), node(report("majority(16)"), "sample")
    assert sixteen.decode_tokens == 16 * one.decode_tokens == 16 * 256  # max_tokens per answer
    assert sixteen.prefill_tokens == one.prefill_tokens > 0
    prompt_flops = forward_flops(smollm2, one.prefill_tokens, 0, 1)
    assert sixteen.flops - prompt_flops == pytest.approx(16 * (one.flops - prompt_flops))
    # past the backend's 64 sequences a call is split, and each part prefills the prompt
    assert node(report("majority(100)"), "sample").prefill_tokens == 2 * one.prefill_tokens


def test_selectors_price_verifier_passes():
    rep = report("best_of_n(8, prm)")
    assert node(rep, "best").verifier_tokens > 8 * 256 and node(rep, "best").flops > 0
    assert node(report("majority(8)"), "vote").tokens == 0
    checked = ttcl.compile('verifier c = check("arith")\nprogram main = sample(8) |> best(c)').cost()
    assert node(checked, "best").tokens == 0  # a programmatic checker runs no model


def test_beam_search_by_hand():
    rep = report("beam_search(16, prm, width=4)")
    beam = node(rep, "beam")
    # program priors: answers of max_tokens = 256 in steps of 32 -> 8 steps of 16 beams
    assert beam.generations == 16 and beam.decode_tokens == 16 * 8 * 32
    # steps 1..7 each score 16 partials; only the new step and the closing question are new
    assert beam.verifier_tokens > 7 * 16 * 32
    assert rep.priors["policy"].source == "program"
    lookahead = node(report("lookahead_search(16, prm, k=2)"), "lookahead")
    assert lookahead.decode_tokens == beam.decode_tokens + 7 * 2 * 16 * 32  # 2 rollout steps at 1..7


def test_revisions_and_dvts():
    revise = node(report("sequential_revisions(4, prm)"), "revise")
    assert revise.generations == 4 and revise.decode_tokens == 4 * 256
    dvts = node(report("diverse_tree_search(16, prm)"), "dvts")
    assert dvts.decode_tokens == 16 * 8 * 32  # 4 trees x 4 proposals per step, 8 steps


def test_match_expected_and_worst_case():
    rep = report("match difficulty(prm, probe=4, bins=4) { 1..3 => majority(4)  4 => majority(16) }")
    samples = [e for e in rep.nodes if e.op == "sample"]
    assert [e.runs for e in samples] == [0.75, 0.25]
    probes = node(rep, "difficulty").decode_tokens
    assert rep.expected.decode_tokens == probes + 0.75 * 4 * 256 + 0.25 * 16 * 256
    assert rep.worst.decode_tokens == probes + 16 * 256 and rep.worst.generations == 20


def test_calibration_priors_are_used_and_reported(tmp_path):
    cal = Calibration(models={"smollm2-135m": Priors(answer_tokens=50, prompt_tokens=70, questions=3)})
    path = tmp_path / "cal.json"
    cal.save(path)
    rep = report("majority(8)", calibration=str(path))
    assert node(rep, "sample").decode_tokens == 400 and node(rep, "sample").prefill_tokens == 70
    assert rep.priors["policy"].source == f"calibration {path}"
    (tmp_path / "bad.json").write_text('{"format": "ttcl-calibration", "models": {"m": {"answer_tokens": "x"}}}')
    with pytest.raises(ttcl.TTCLError, match="malformed calibration at models.m.answer_tokens"):
        Calibration.load(tmp_path / "bad.json")


def test_calibration_from_results():
    prog = ttcl.compile(HEADER + "program main = sample(4) |> best(prm)")
    backend = ScriptedBackend(lambda r: "Step one.\n\nThe answer is 5.")
    results = prog.run_many(["What is 2 + 3?", "What is 1 + 4?"], backend=backend)
    cal = calibrate(prog.graph, results)
    p = cal.models["smollm2-135m"]
    assert p.questions == 2 and p.answer_tokens == 6 and p.answer_steps == 2  # scripted tokens are words
    assert p.prompt_tokens == results[0].candidates[0].prompt_tokens
    verifier = sum(r.cost.verifier_prompt_tokens for r in results)
    assert p.verify_tokens == verifier / 8  # 4 verifier passes per question
    assert cal.merge(cal).models["smollm2-135m"].questions == 4


def test_calibration_factors_make_the_estimate_match_what_was_measured():
    # beam search whose beams run for different numbers of steps: lengths alone miss the
    # pruned proposals, so the factors carry the rest, per op and component
    prog = ttcl.compile(HEADER + "program main = beam(4, prm, width=2, depth=5) |> weighted_vote(prm)")

    def script(r):  # "What is 2 + 3?" ends after 2 steps, "What is 4 + 1?" after 4
        steps = r.prefix.count("Add")
        first = int(r.messages[-1].content.split("What is ")[1][0])
        return "The answer is 5." if steps >= first + len(r.prefix) % 2 else "Add them up.\n\nNext."

    results = prog.run_many(
        ["What is 2 + 3?", "What is 1 + 4?", "What is 4 + 1?"], backend=ScriptedBackend(script, lambda r, o: [0.6, 0.4])
    )
    cal = calibrate(prog.graph, results)
    factors = cal.models["smollm2-135m"].factors
    assert {"beam.decode", "beam.verifier", "weighted_vote.verifier"} <= factors.keys()
    calibrated = prog.cost(calibration=cal)
    for e in calibrated.nodes:
        measured = [r.cost.per_node[e.node] for r in results if e.node in r.cost.per_node]
        for estimate, field in (
            (e.prefill_tokens, "prompt_tokens"),
            (e.decode_tokens, "generated_tokens"),
            (e.verifier_tokens, "verifier_prompt_tokens"),
        ):
            assert estimate == pytest.approx(sum(getattr(m, field) for m in measured) / len(results))
    # factors come from the priors' own estimate: refitting a calibrated one changes nothing
    assert with_factors(cal, prog.graph, results) == cal


def test_what_if_on_a_spec_model():
    src = (
        HEADER + "model big = spec(params=1.7e9, layers=24, d_model=2048, heads=32, vocab=49152)\n"
        "program main = majority(8)"
    )
    prog = ttcl.compile(src)
    small, big = prog.cost(), prog.cost(model="big")
    assert big.expected.tokens == small.expected.tokens and big.expected.flops > 10 * small.expected.flops
    assert prog.cost(model="smollm2-135m").expected.flops == small.expected.flops
    spec_only = ttcl.compile("model big = spec(params=1e9)\nprogram main = sample(2) |> vote")
    with pytest.raises(ttcl.TTCLError, match="model `big` is a spec"):
        spec_only.run("What is 2 + 3?")
    assert spec_only.run("q", backend=ScriptedBackend(lambda r: "The answer is 1.")).answer == "1"


def test_budgets_convert_through_the_estimate():
    rep = report("majority(16)")
    tokens = rep.convert(16, "generations", "tokens")
    assert tokens == pytest.approx(rep.worst.tokens)
    assert rep.convert(tokens, "tokens", "flops") == pytest.approx(rep.worst.flops)


# best_of_n(8) with 128-token answers: at worst about 2700 tokens; at least (one-token
# answers) a few hundred. Only a budget under the least is an error: between the two, the
# runtime enforces it and stops with the best answer so far.
@pytest.mark.parametrize(
    "budget, fits",
    [
        ("budget 1e6 tokens", True),
        ("budget 2000 tokens", True),
        ("budget 150 tokens", False),
        ("budget 1e15 flops", True),
        ("budget 3e11 flops", True),
        ("budget 3e10 flops", False),
    ],
)
def test_checker_rejects_budgets_no_run_can_meet(errors_of, budget, fits):
    text = HEADER + budget + "\nprogram main = best_of_n(8, prm)\n"
    error = errors_of(text)
    assert (error is None) == fits
    if not fits:
        assert "but its budget is" in error and "costliest: " in error and "sample at" in error


# ---- the command line --------------------------------------------------------------------


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cost_command_table_and_json(capsys):
    code, out, _ = run(capsys, "cost", "programs/bon.ttcl")
    assert code == 0 and "weighted_vote" in out and "expected" in out
    assert "priors for policy: measured on the model and shipped with TTCL" in out  # a known model
    code, out, _ = run(capsys, "cost", "programs/per_difficulty.ttcl", "--json")
    data = json.loads(out)
    assert code == 0 and data["worst"]["generations"] == 20 and data["models"]["policy"]["n_layer"] == 30


def test_cost_command_budgets_and_exchange(capsys):
    code, out, _ = run(capsys, "cost", "programs/bon.ttcl", "--budget", "1e3 tokens")
    assert code == 1 and "does not fit" in out and "costliest" in out
    code, out, _ = run(capsys, "cost", "programs/bon.ttcl", "--budget", "64", "--vs-params", "1.7e9", "--ratio", "0.79")
    assert code == 0 and "fits" in out and "12.6× larger" in out
    code, _, err = run(capsys, "cost", "programs/bon.ttcl", "--budget", "lots")
    assert code == 2 and "--budget takes" in err
    code, _, err = run(capsys, "cost", "programs/bon.ttcl", "--calibration", "nope.json")
    assert code == 2 and "calibration file not found: nope.json" in err
    code, _, err = run(capsys, "cost", "programs/bon.ttcl", "--model", "/no/such.gguf")
    assert code == 1 and "/no/such.gguf" in err and "Traceback" not in err


def test_graph_text_shows_cost_per_node(capsys):
    code, out, _ = run(capsys, "graph", "programs/bon.ttcl")
    assert code == 0 and "FLOPs" in out
