"""Declared answers: each kind reads and compares answers, votes group by its equivalence, and
the grader uses the same equivalence (scripted backend, so every figure is checked by hand)."""

import itertools
import json
import time

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.errors import CheckError, TTCLError
from ttcl.eval.datasets import Fields, read_jsonl
from ttcl.eval.evaluate import Eval
from ttcl.ir import checksum
from ttcl.prompts import SOLVE_PROMPTS
from ttcl.runtime.answers import ChoiceAnswer, MathAnswer, NumberAnswer, RegexAnswer, extract_answer, register_answer


def in_turn(texts):
    """A model that gives `texts` in turn, one per request, in the order they are made."""
    replies = itertools.cycle(texts)
    return ScriptedBackend(lambda req: next(replies))


def run(src, backend, question="What is 1 + 1?", **kw):
    return ttcl.compile(src).run(question, backend=backend, **kw)


# ---- number ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, answer",
    [
        ("2 + 3 = 5. The answer is N.", None),  # a placeholder copied from a prompt is no answer
        ("The answer is 2 + 3 = 5.", "5"),  # the result, not the first operand
        ("The answer is: **12**", "12"),
        ("#### 1,200", "1200"),
        ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # a box's contents, as text
        ("I get 4 then 9", "9"),
    ],
)
def test_number_answers(text, answer):
    assert extract_answer(text) == answer == NumberAnswer().extract(text)


# ---- math ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "1/2"),
        ("\\frac{1}{2}", "1/2"),
        ("\\boxed{10^{3}}", "1000"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
    ],
)
def test_math_equivalence(a, b):
    math = MathAnswer()
    assert math.same(a, b) and math.same(b, a)


@pytest.mark.parametrize("a, b", [("\\frac{1}{2}", "0.6"), ("1000", "10^{4}"), ("x + 1", "x - 1")])
def test_math_inequivalence(a, b):
    assert not MathAnswer().same(a, b)


def test_math_extracts_balanced_boxes_and_stated_answers():
    math = MathAnswer()
    assert math.extract("so $\\boxed{\\frac{3}{4}}$.") == "\\frac{3}{4}"
    assert math.extract("The answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert math.extract("The answer is N.") is None
    assert math.extract("no answer here") is None


def test_math_comparison_of_runaway_expressions_ends_at_once():
    start = time.perf_counter()
    assert not MathAnswer().same("99999999999999999999999!", "5")
    assert not MathAnswer().same("2^{2^{30}}", "3")
    assert time.perf_counter() - start < 5  # refused as text, not evaluated (seconds to hours)


def test_math_vote_groups_equivalent_answers():
    # three spellings of one half outvote two threes
    texts = ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "The answer is 1/2."]
    src = "answer math\nprogram main = sample(5) |> vote\n"
    result = run(src, in_turn(texts))
    assert MathAnswer().same(result.answer, "1/2")
    number = run("program main = sample(5) |> vote\n", in_turn(texts))
    assert number.answer == "3"  # as numbers, 0.5, \frac{1}{2} and 1/2 are three answers


def test_weighted_vote_sums_scores_of_equivalent_answers():
    texts = ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}"]
    register = {"\\boxed{0.5}": 0.4, "\\boxed{3}": 0.7, "\\boxed{\\frac{1}{2}}": 0.4}
    ttcl.register_verifier("by_text", lambda q, steps: register[steps[-1]])
    src = 'answer math\nverifier v = registered("by_text", steps=false)\nprogram main = sample(3) |> weighted_vote(v)\n'
    assert MathAnswer().same(run(src, in_turn(texts)).answer, "0.5")  # 0.8 against 0.7


# ---- choice and regex ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B).", "B"),
        ("Answer: c", "C"),
        ("\\boxed{D}", "D"),
        ("Options...\n(A)\n", "A"),
        ("F is odd", None),
    ],
)
def test_choice_extraction(text, letter):
    assert ChoiceAnswer("ABCDE").extract(text) == letter


def test_choice_program_votes_letters_and_grades_them():
    texts = ["The answer is (B).", "Answer: b", "The answer is C", "I pick\nB"]
    src = 'answer choice(letters="ABCD")\nprogram main = sample(4) |> vote\n'
    result = run(src, in_turn(texts), question="Which? (A) 1 (B) 2 (C) 3 (D) 4", answer="(B)")
    assert result.answer == "B"
    oracle = run("answer choice\nprogram main = sample(4) |> best(oracle)\n", in_turn(texts), answer="b")
    assert oracle.answer == "B"  # the oracle grades with the same equivalence


def test_regex_program_reads_the_last_match():
    texts = ["Final: Paris. (not Final: Rome)", "Final: paris", "Final: Rome"]
    src = 'answer regex("Final: (\\\\w+)")\nprogram main = sample(3) |> vote\n'
    result = run(src, in_turn(texts))
    assert RegexAnswer("Final: (\\w+)").same(result.answer, "rome")  # "Rome" twice, "paris" once


def test_registered_answer_through_the_api():
    assert ttcl.register_answer is register_answer  # public, beside register_verifier
    register_answer("last_word", lambda text: text.split()[-1].strip("."), lambda a, b: a.lower() == b.lower())
    texts = ["It is Lyon.", "Surely LYON", "Maybe Nice"]
    result = run('answer registered("last_word")\nprogram main = sample(3) |> vote\n', in_turn(texts))
    assert result.answer.lower() == "lyon"
    register_answer("broken", lambda text: 1 / 0)
    with pytest.raises(TTCLError, match="registered answer 'broken' failed: ZeroDivisionError"):
        run('answer registered("broken")\nprogram main = sample(1) |> vote\n', in_turn(texts))


# ---- declarations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src, message",
    [
        ('answer regex("(a")\n', "not a valid regular expression"),
        ('answer regex("(a)(b)")\n', "the pattern has 2 groups"),
        ("answer mathh\n", "`mathh` does not make an answer; did you mean `math`?"),
        ("answer math\nanswer number\n", "duplicate `answer` declaration"),
        ("answer choice(letters=3)\n", "must be a str"),
    ],
)
def test_bad_answer_declarations_are_located(src, message):
    with pytest.raises(CheckError, match=message.replace("(", "\\(").replace(")", "\\)").replace("?", "\\?")):
        ttcl.compile(src + "program main = sample(1) |> vote\n")


def test_an_imported_module_cannot_declare_the_answer(tmp_path):
    (tmp_path / "lib.ttcl").write_text("answer math\nstrategy s(n: int) = sample(n) |> vote\n")
    main = tmp_path / "main.ttcl"
    main.write_text('import "./lib.ttcl"\nprogram main = s(2)\n')
    with pytest.raises(CheckError, match="belongs in the main file"):
        ttcl.load(main)


def test_the_answer_travels_in_artifacts_and_old_artifacts_read_as_numbers(tmp_path):
    program = ttcl.compile('answer choice(letters="AB")\nprogram main = sample(1) |> vote\n')
    path = tmp_path / "p.json"
    program.save(path)
    assert ttcl.load(path).ir.answer == {"kind": "choice", "letters": "AB"}
    data = json.loads(path.read_text())
    del data["answer"]
    data["checksum"] = checksum(data)  # as a TTCL before answer kinds wrote it
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert ttcl.load(old).ir.answer == {"kind": "number"}


# ---- prompts -------------------------------------------------------------------------------


def test_each_kind_has_its_default_prompt_and_the_answer_can_name_one():
    seen = []

    def script(req):
        seen.append(req.messages[-1].content)
        return "The answer is (A)."

    backend = ScriptedBackend(script)
    run("answer choice\nprogram main = sample(1) |> vote\n", backend, question="Q?")
    assert seen[-1] == SOLVE_PROMPTS["choice"].format(question="Q?")
    src = 'import "parallel"\nprompt mine = "Q: {question}"\nanswer choice(prompt=mine)\nprogram main = majority(1)\n'
    run(src, backend, question="Q?")  # a stdlib strategy's generator takes the answer's prompt
    assert seen[-1] == "Q: Q?"
    for kind, template in SOLVE_PROMPTS.items():
        assert "{question}" in template and " N." not in template, kind  # no placeholder to copy


# ---- datasets and grading --------------------------------------------------------------------


MATH_LINE = {
    "problem": "What is $\\frac{2}{4}$ in lowest terms?",
    "solution": "Divide both by 2: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
}


def test_a_math_style_jsonl_line_is_graded_by_equivalence(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps(MATH_LINE) + "\n" + json.dumps({**MATH_LINE, "answer": "1/2"}) + "\n")
    data = read_jsonl(str(path))
    assert [q["answer"] for q in data.questions] == ["\\frac{1}{2}", "1/2"]
    program = ttcl.compile("answer math\nprogram main = sample(1) |> vote\n")
    ev = Eval(tmp_path / "r.jsonl", data.questions, backend=ScriptedBackend(lambda req: "So it is \\boxed{0.5}."))
    assert ev.run(program, "p")
    assert [r.correct for r in ev.records] == [True, True]  # 0.5 is graded equal to \frac{1}{2}


def test_field_names_are_chosen(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Capital of France?", "target": "Paris"}) + "\n" + '{"prompt": "x"}\n')
    data = read_jsonl(str(path), fields=Fields("prompt", "target"))
    assert [(q["question"], q["answer"]) for q in data.questions] == [("Capital of France?", "Paris")]
    assert data.skipped == [f'{path}:2: expected an "target" (a string or a number)']


def test_the_stdlib_prompts_are_valid_templates_a_program_can_choose():
    from ttcl.loader import parse, resource_dir

    names = [s.name for s in parse((resource_dir("stdlib") / "prompts.ttcl").read_text()).statements]
    assert len(names) >= 5
    for name in names:  # each is checked (holes, {question}) and reaches the model as written
        program = ttcl.compile(f'import "prompts"\nanswer math(prompt={name})\nprogram main = sample(1) |> vote\n')
        assert "{question}" in program.ir.prompts[name]


def test_eval_reads_chosen_fields_and_grades_by_the_programs_answer_kind(tmp_path, monkeypatch, capsys):
    from ttcl.cli.app import main

    backend = ScriptedBackend(lambda req: "So it is \\boxed{0.5}.")
    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: backend)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"task": "Half of 1?", "gold": "\\frac{1}{2}"}) + "\n")
    program = tmp_path / "p.ttcl"
    program.write_text("answer math\nprogram main(n: int = 1) = sample(n) |> vote\n")
    out = tmp_path / "r.jsonl"
    argv = ["eval", program, "--dataset", data, "--question-field", "task", "--answer-field", "gold", "-o", out]
    assert main([str(a) for a in argv]) == 0
    assert "Traceback" not in capsys.readouterr().err
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["question"] == "Half of 1?" and record["correct"] is True
