"""Budget sweeps from one sample pool (`ttcl.eval.sweep`), on a scripted model whose samples
are right with a known probability: which programs qualify, what a sweep costs, and that its
accuracies agree with running every budget on its own."""

import json
import random
import re

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.eval.sweep import pool_plan


def noisy(request):
    """Right with probability 0.45 per sample (by the request's seed and question), else one of three
    wrong answers: majority voting helps, as it does on a real model."""
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    rng = random.Random(f"{request.params.seed}:{a}:{b}")
    answer = a + b if rng.random() < 0.45 else a + b + rng.choice((1, 2, 3))
    return f"Adding gives {answer}.\n\nThe answer is {answer}."


def score_by_text(request, options):
    """A verifier that slightly prefers right answers (P(Yes) 0.6 against 0.4)."""
    text = request.messages[-1].content
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", text).groups())
    right = f"The answer is {a + b}." in text
    return [0.6, 0.4] if right else [0.4, 0.6]


@pytest.fixture
def scripted(monkeypatch):
    backend = ScriptedBackend(noisy, score_by_text)
    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: backend)
    return backend


def program_file(tmp_path, body):
    path = tmp_path / "p.ttcl"
    path.write_text(
        'import "parallel"\nverifier prm = self_verify(policy)\nmodel policy = llama("smollm2-135m")\n' + body
    )
    return path


@pytest.mark.parametrize(
    "body",
    [
        "program main(n: int = 4) = majority(n)\n",
        "program main(n: int = 4) = weighted_best_of_n(n, prm)\n",
        "program main(n: int = 4) = best_of_n(n, prm)\n",
        "program main(n: int = 4) = sample(n) |> vote\n",
    ],
)
def test_programs_of_independent_samples_and_an_order_free_selector_qualify(tmp_path, body):
    assert not isinstance(pool_plan(ttcl.load(program_file(tmp_path, body)), "n", [2, 4]), str)


@pytest.mark.parametrize(
    "body, why",
    [
        ('import "search"\nprogram main(n: int = 4) = beam_search(n, prm, width=2)\n', "keeps partial solutions"),
        ("program main(n: int = 4) = revise(n) |> vote\n", "sees the attempts before it"),
        ("program main(n: int = 4) = match difficulty(prm) { _ => majority(n) }\n", "chooses a strategy per question"),
        ("program main(n: int = 4) = sample(n) + sample(2) |> vote\n", "more than one stage"),
        ("program main(n: int = 4) = sample(2 * n) |> vote\n", "does not set the number of samples"),
    ],
)
def test_other_programs_say_why_they_run_each_budget(tmp_path, body, why):
    assert why in pool_plan(ttcl.load(program_file(tmp_path, body)), "n", [2, 4])


def eval_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_sweep_costs_what_its_largest_budget_costs_and_agrees_with_separate_runs(tmp_path, scripted, capsys):
    program = program_file(tmp_path, "program main(n: int = 4) = weighted_best_of_n(n, prm)\n")
    common = [program, "--dataset", tmp_path / "q.jsonl", "--budgets", "1,2,4,8,16"]
    rng = random.Random(5)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(80)]
    (tmp_path / "q.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {a} + {b}?", "answer": a + b}) + "\n" for a, b in pairs)
    )
    code, err = eval_cli(capsys, "eval", *common, "-o", tmp_path / "pooled.jsonl")
    assert code == 0 and "budgets 1, 2, 4, 8, 16 from one pool of 16 samples" in err
    pooled_requests = sum(scripted.batch_sizes)
    assert pooled_requests == 16 * len(pairs)  # what budget 16 alone draws
    code, _ = eval_cli(capsys, "eval", *common, "--no-pool", "-o", tmp_path / "alone.jsonl")
    assert code == 0
    assert sum(scripted.batch_sizes) - pooled_requests == (1 + 2 + 4 + 8 + 16) * len(pairs)

    pooled, alone = records(tmp_path / "pooled.jsonl"), records(tmp_path / "alone.jsonl")
    assert {r["pooled_from"] for r in pooled} == {16} and {r["pooled_from"] for r in alone} == {None}
    for budget in (1, 2, 4, 8, 16):
        p = [r for r in pooled if r["budget"] == budget]
        a = [r for r in alone if r["budget"] == budget]
        assert all(r["generations"] == budget for r in p + a)
        share = sum(r["share"] for r in p) / len(p)
        accuracy = sum(r["correct"] for r in a) / len(a)
        # two estimates of one accuracy from 80 questions: within a few standard errors
        assert abs(share - accuracy) < 0.2, (budget, share, accuracy)
        tokens_p, tokens_a = (sum(r["tokens"] for r in rs) / len(rs) for rs in (p, a))
        assert abs(tokens_p - tokens_a) < 0.1 * tokens_a  # a subset costs what the budget alone costs
    first = sum(r["share"] for r in pooled if r["budget"] == 1) / len(pairs)
    last = sum(r["share"] for r in pooled if r["budget"] == 16) / len(pairs)
    assert last > first + 0.1  # weighted voting over more samples helps this model


def test_a_pooled_sweep_resumes_and_its_table_marks_the_pool(tmp_path, scripted, capsys, monkeypatch):
    program = program_file(tmp_path, "program main(n: int = 4) = majority(n)\n")
    (tmp_path / "q.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {a} + 1?", "answer": a + 1}) + "\n" for a in range(10, 16))
    )
    out = tmp_path / "r.jsonl"
    argv = ["eval", program, "--dataset", tmp_path / "q.jsonl", "--budgets", "2,8", "-o", out]
    assert eval_cli(capsys, *argv)[0] == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-3]) + "\n")  # the last question's budget 8 and another's lost
    before = sum(scripted.batch_sizes)
    code = main([str(a) for a in argv] + ["--resume", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and sum(scripted.batch_sizes) - before == 2 * 8  # two pools drawn again
    assert sorted((r["budget"], r["index"]) for r in records(out)) == sorted((b, i) for b in (2, 8) for i in range(6))
    assert [(s["budget"], s["pooled_from"]) for s in summary] == [(2, 8), (8, 8)]


def test_smaller_samples_and_adaptive_draws_are_the_first_draws_of_a_larger_pool():
    # what bench/compute_optimal.py relies on: sample(k) and adaptive(k) draw the seeds
    # sample(16) draws first, so on a batch-invariant backend they are its first candidates
    def texts(src):
        result = ttcl.compile(src).run("What is 12 + 30?", backend=ScriptedBackend(noisy))
        return [(c.seed, c.text) for c in result.candidates]

    pool = texts("program main = sample(16) |> vote\n")
    assert texts("program main = sample(4) |> vote\n") == pool[:4]
    drawn = texts("program main = adaptive(16) |> vote\n")
    assert 4 <= len(drawn) <= 16 and drawn == pool[: len(drawn)]
