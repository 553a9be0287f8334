"""Programs on the real embedded model (SmolLM2-135M through llama.cpp). Marked slow; CI runs them."""

import json
import subprocess
import sys

import pytest

import ttcl
from ttcl.backends.base import GenerationRequest, SamplingParams
from ttcl.prompts import solve_messages

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

MODEL = 'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=48)\n'
QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def backend():
    from ttcl.backends.llama import backend_for

    return backend_for({"kind": "llama", "path": "smollm2-135m"})


def test_batched_samples_equal_the_same_seeds_one_at_a_time(backend):
    result = ttcl.compile(MODEL + "program main = sample(8) |> vote").run(QUESTION, seed=1, backend=backend)
    assert len(result.candidates) == 8
    for c in result.candidates:
        alone = backend.generate(
            [
                GenerationRequest(
                    messages=solve_messages(QUESTION, []),
                    params=SamplingParams(temperature=0.8, top_p=1.0, top_k=0, max_tokens=48, seed=c.seed),
                )
            ]
        )[0]
        assert alone.text.strip() == c.text


def test_the_shipped_prm_scores_steps_and_picks_a_right_answer(backend):
    prog = ttcl.compile(
        'model policy = llama("smollm2-135m", temperature=0.7, max_tokens=96)\n'
        "program main = sample(8) |> weighted_vote(prm)"
    )
    assert prog.ir.verifiers["prm"]["kind"] == "prm"
    before = backend.counters.model_copy()
    result = prog.run(QUESTION, seed=0, backend=backend)
    assert result.answer == "5"
    assert all(0.0 < c.score < 1.0 for c in result.candidates)
    # one hidden-state pass per candidate, forked from the samples' cached cells: far fewer
    # prompt tokens than the samples' own prompts and texts
    assert 0 < result.cost.verifier_prompt_tokens < sum(c.generated_tokens for c in result.candidates) + 100
    assert (
        backend.counters.prompt_tokens - before.prompt_tokens
        == result.cost.prompt_tokens + result.cost.verifier_prompt_tokens
    )


def test_vote_answers_an_easy_question(backend):
    prog = ttcl.compile(
        'model policy = llama("smollm2-135m", temperature=0.7, max_tokens=96)\nprogram main = sample(8) |> vote'
    )
    assert prog.run(QUESTION, seed=0, backend=backend).answer == "5"


@pytest.mark.parametrize(
    "body, budget",
    [
        ("beam(8, prm, width=4, depth=3) |> weighted_vote(prm)", 8),
        ("revise(3) |> weighted_vote(prm)", 3),
    ],
)
def test_search_and_revisions_finish_within_their_budgets(backend, body, budget):
    src = (
        MODEL + f"verifier prm = self_verify(policy)\nbudget {budget} generations\nbudget 6000 tokens\n"
        f"program main = {body}"
    )
    result = ttcl.compile(src).run(QUESTION, seed=0, backend=backend)
    assert result.cost.generations <= budget
    assert result.cost.tokens <= 6000
    assert result.answer is not None or result.stopped == "budget"


def test_trace_token_counts_equal_the_backend_counters(backend):
    before = backend.counters.model_copy()
    prog = ttcl.compile(
        MODEL + "verifier prm = self_verify(policy)\nprogram main = sample(4) + revise(2) |> weighted_vote(prm)"
    )
    results = prog.run_many([QUESTION, "What is 7 - 4?"], seed=0, backend=backend)
    prompt = sum(r.cost.prompt_tokens + r.cost.verifier_prompt_tokens for r in results)
    generated = sum(r.cost.generated_tokens for r in results)
    assert prompt == backend.counters.prompt_tokens - before.prompt_tokens
    assert generated == backend.counters.generated_tokens - before.generated_tokens
    assert generated == sum(c.generated_tokens for r in results for c in r.candidates)


def test_measured_flops_are_counted_from_the_backend_per_node(backend):
    from ttcl.cost.flops import counted_flops

    prog = ttcl.compile(MODEL + "verifier prm = self_verify(policy)\nprogram main = sample(4) |> weighted_vote(prm)")
    before = backend.counters.model_copy()
    result = prog.run(QUESTION, seed=0, backend=backend)
    after = backend.counters
    forward = after.forward_tokens - before.forward_tokens
    assert result.cost.flops == pytest.approx(
        counted_flops(backend.facts, forward, after.attended - before.attended, after.logits - before.logits), rel=1e-9
    )
    assert sum(c.flops for c in result.cost.per_node.values()) == pytest.approx(result.cost.flops, rel=1e-9)
    # every decoded token costs 2N and more (attention, logits); the sampler's last token of
    # each sequence is never decoded
    assert result.cost.flops > 2 * backend.n_params * forward
    assert forward == result.cost.tokens - len(result.candidates)


def test_flops_budget_stops_a_run_on_the_real_model(backend):
    src = MODEL + "program main = sample(8) |> vote"
    one = ttcl.compile(src).run(QUESTION, seed=0, backend=backend).cost.flops
    # half of what the run needs: it stops before the batch that could overrun, never after
    limited = ttcl.compile(src.replace("program", f"budget {one / 2:.6g} flops\nprogram"))
    result = limited.run(QUESTION, seed=0, backend=backend)
    assert result.stopped == "budget" and (result.cost.flops or 0.0) <= one / 2


def test_ttcl_run_command(tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text(MODEL + "program main = sample(2) |> vote\n")
    done = subprocess.run(
        [sys.executable, "-m", "ttcl", "run", str(program), "-q", QUESTION, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cost"]["generations"] == 2 and len(out["candidates"]) == 2


def test_ttcl_run_questions_file_streams_one_line_each(tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text(MODEL + "program main = sample(2) |> vote\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n\n{"question": "What is 1 + 1?"}\n')
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttcl",
            "run",
            str(program),
            "--questions",
            str(questions),
            "-o",
            str(out),
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--calibration-out",
            str(tmp_path / "cal.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == [0, 1]
    assert all(line["cost"]["generations"] == 2 for line in lines)
    assert (tmp_path / "t.jsonl").read_text().count('"event"') > 4
    # the measured lengths price the program: the mean generated tokens per answer
    priors = ttcl.compile(MODEL + "program main = sample(2) |> vote").cost(calibration=tmp_path / "cal.json").priors
    mean = sum(line["cost"]["generated_tokens"] for line in lines) / 4
    assert priors["policy"].source.startswith("calibration") and priors["policy"].answer_tokens == pytest.approx(mean)


def test_ttcl_run_shows_measured_cost_beside_the_estimate(tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text(MODEL + "program main = sample(2) |> vote\n")
    done = subprocess.run(
        [sys.executable, "-m", "ttcl", "run", str(program), "-q", QUESTION], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "cost per node: measured, and estimated before the run" in done.stdout
    total = next(line for line in done.stdout.splitlines() if line.lstrip().startswith("total")).split()
    assert "e" in total[-3] and "e" in total[-2] and float(total[-1]) > 0  # measured, estimated, their ratio
    assert "measured / estimate: tokens" in done.stdout


def test_ttcl_eval_and_optimize_on_the_real_model(tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text(
        'import "parallel"\nmodel policy = llama("smollm2-135m", temperature=0.7, max_tokens=32)\n'
        "verifier prm = self_verify(policy)\nprogram main(n: int = 2) = majority(n)\n"
    )
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttcl",
            "eval",
            str(program),
            "--dataset",
            "arith:1",
            "--limit",
            "3",
            "--budgets",
            "1,2",
            "-o",
            str(out),
            "--plot",
            str(tmp_path / "p.png"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["budget"], r["index"]) for r in records) == [(b, i) for b in (1, 2) for i in range(3)]
    assert all(r["flops"] > 0 and r["correct"] == (r["answer"] == r["expected"]) for r in records)
    assert (tmp_path / "p.png").stat().st_size > 1000
    best = tmp_path / "best.ttcl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttcl",
            "optimize",
            str(program),
            "--dataset",
            "arith:1",
            "--limit",
            "4",
            "--budget",
            "3",
            "--probe",
            "1",
            "--candidate",
            "majority(2)",
            "--candidate",
            "best_of_n(2, prm)",
            "-o",
            str(best),
            "--runs",
            str(tmp_path / "runs.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    written = best.read_text()
    if "thresholds=[" in written:  # a winner per bin: probes, then the bin's arm
        assert ttcl.load(str(best)).ir.generations == 3
    else:  # one winner for every bin is written alone, without probes paid for nothing
        assert written.rstrip().splitlines()[-1] in ("program main = majority(2)", "program main = best_of_n(2, prm)")
        assert ttcl.load(str(best)).ir.generations == 2
