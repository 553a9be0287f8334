"""Hostile inputs to the Python API and to the runtime's answer and score handling.

Every bad input is a `TTCLError` that says what is wrong (a `UsageError` for a wrong argument),
never a Python traceback from inside, and never a silently wrong result: answers that are not
finite numbers, numbers too long for a float, wrong arguments to `compile`, `run` and
`run_many`, verifiers that return what is not a score, and parameters that are NaN.
"""

import asyncio
import math
from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ttcl
from ttcl.backends.base import Counters
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.errors import TTCLError, UsageError
from ttcl.runtime.answers import MAX_NUMBER_CHARS, extract_answer, normalize, same_answer
from ttcl.runtime.verifiers import register_verifier

VOTE = "program main = sample(3) |> vote"


def scripted(text="The answer is 5.") -> ScriptedBackend:
    return ScriptedBackend(lambda r: text)


# ---- answers: normalization is total and exact ----------------------------------------------


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so \\boxed{inf}", "inf"),
        ("\\boxed{NaN}", "nan"),
        ("\\boxed{-Infinity}", "-inf"),
        ("\\boxed{+inf}", "inf"),
        ("\\boxed{1e400}", "1" + "0" * 400),
        ("The answer is " + "9" * 400, "9" * 400),
        ("#### " + "1" * 320 + ".5", "1" * 320 + ".5"),
        ("\\boxed{1e-400}", "0." + "0" * 399 + "1"),
        ("\\boxed{1e99999999}", "1e99999999"),
        ("\\boxed{-2.50E+3}", "-2500"),
        ("\\boxed{.5}", "0.5"),
        ("\\boxed{-0.0}", "0"),
        ("The answer is 12.", "12"),
        ("The answer is 1e400.", "1" + "0" * 400),  # the exponent is part of the number
        ("#### 2.5E-3", "0.0025"),
        ("I have 3 eggs", "3"),
    ],
)
def test_extract_answer_is_total_on_inf_nan_and_huge_numbers(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "a, b",
    [
        ("1e3", "1000"),
        ("0.5", ".5"),
        ("inf", "inf"),
        ("inf", "INF"),
        ("Infinity", "inf"),
        ("nan", "NaN"),
        ("1e400", "1" + "0" * 400),
        ("1,200", "1200.0"),
        ("$3.50", "3.5"),
        ("-0", "0"),
        ("12.", "12"),
        ("1.5e2000", "15" + "0" * 1999),  # written as 1.5e2000 past MAX_PLAIN_DIGITS: the same value
    ],
)
def test_same_answer_agrees_with_normalization(a, b):
    assert same_answer(a, b) and same_answer(b, a)
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("12345678901234567890", "12345678901234567891"),  # equal as floats
        ("0.1", "0.10000000000000001"),  # equal as floats
        ("1" + "0" * 400, "1" + "0" * 399 + "1"),  # both overflow a float
        ("inf", "-inf"),
        ("inf", "nan"),
        ("inf", "1e400"),  # a huge number is not infinity
        (".5", "5"),  # the point of ".5" is no sentence's final period
    ],
)
def test_different_answers_stay_different(a, b):
    assert not same_answer(a, b) and normalize(a) != normalize(b)


def test_numbers_too_long_to_convert_are_kept_as_text():
    digits = "7" * 5000  # past Python's 4300-digit limit on int("...")
    assert normalize(digits) == digits and same_answer(digits, digits)
    assert extract_answer(f"so \\boxed{{{digits}}}") == digits
    exponent = "1e" + "9" * 4500
    assert normalize(exponent) == exponent
    assert normalize("1e" + "9" * (MAX_NUMBER_CHARS - 3)).startswith("1e")


def test_one_inf_answer_does_not_abort_the_batch():
    backend = ScriptedBackend(lambda r: "So \\boxed{inf}." if "first" in r.messages[0].content else "The answer is 4.")
    results = ttcl.compile(VOTE).run_many(["first?", "second?", "third?"], backend=backend)
    assert [r.answer for r in results] == ["inf", "4", "4"]


def test_ground_truths_past_a_float_grade_exactly():
    prog = ttcl.compile("program main = sample(2) |> best(oracle)")
    huge = "1" + "0" * 400
    assert prog.run("q", backend=scripted(f"The answer is {huge}."), answer="1e400").candidates[0].score == 1.0
    assert prog.run("q", backend=scripted("\\boxed{inf}"), answer="inf").candidates[0].score == 1.0
    assert prog.run("q", backend=scripted("\\boxed{inf}"), answer="1e400").candidates[0].score == 0.0


def test_dataset_answers_inf_and_1e400_are_read(tmp_path):
    from ttcl.eval.datasets import read_jsonl

    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a", "answer": "inf"}\n{"question": "b", "answer": "#### 1e400"}\n')
    answers = [q["answer"] for q in read_jsonl(str(path)).questions]
    assert answers == ["inf", "1e400"]  # kept as written; graded by the answer kind
    assert same_answer(answers[1], "1" + "0" * 400) and same_answer(answers[0], "Infinity")


_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.one_of(st.text(), st.text(alphabet="0123456789.,$+-eE infINFatyA٤\n", max_size=40)))
def test_normalization_never_raises_on_any_text(text):
    once = normalize(text)
    assert normalize(once) == once  # a canonical form: normalizing it again changes nothing
    assert same_answer(text, text) and same_answer(text, once)
    answer = extract_answer(text)
    assert answer is None or normalize(answer) == answer


@_SETTINGS
@given(st.text(alphabet="0123456789.,$+-eE infINFnaN", max_size=60), st.text(max_size=20))
def test_extract_answer_never_raises_on_numberish_text(core, around):
    for text in (core, f"\\boxed{{{core}}}", f"{around} The answer is {core}", f"#### {core}"):
        answer = extract_answer(text)
        assert answer is None or normalize(answer) == answer
        same_answer(answer, core)


numeric = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-", "+"]),
    st.from_regex(r"[0-9]{1,400}", fullmatch=True),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,400}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,6}", fullmatch=True)),
)


@_SETTINGS
@given(numeric)
def test_a_number_normalizes_to_its_exact_value(text):
    once = normalize(text)
    assert normalize(once) == once
    assert Decimal(once) == Decimal(text)  # exact: no float in between


@_SETTINGS
@given(st.from_regex(r"[1-9][0-9]{0,300}", fullmatch=True), st.integers(0, 1500))
def test_the_ways_of_writing_a_number_are_one_answer(digits, zeros):
    plain = digits + "0" * zeros
    assert same_answer(f"{digits}e{zeros}", plain)
    assert same_answer(f"{digits}E+{zeros}", f"{plain}.000")
    assert same_answer(f"0.{'0' * zeros}{digits}", f"{digits}e-{zeros + len(digits)}")
    assert not same_answer(plain, plain + "1")


# ---- the API's arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ttcl.compile(None), "compile takes the program's source text as a str, not None"),
        (lambda: ttcl.compile(123), "not 123 \\(int\\)"),
        (lambda: ttcl.compile(b"program main = sample(2) |> vote"), "decode it first"),
        (lambda: ttcl.compile(VOTE, path=3), "path must be a str"),
        (lambda: ttcl.compile(VOTE, program=["main"]), "program must be the name of a program"),
        (lambda: ttcl.compile(VOTE, params=[("n", 3)]), "params must be a dict"),
        (lambda: ttcl.load(None), "load takes a file path"),
        (lambda: ttcl.load(42), "load takes a file path"),
        (lambda: ttcl.load("programs/bon.ttcl", params="n=3"), "params must be a dict"),
    ],
)
def test_compile_and_load_refuse_wrong_arguments(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def _run(**kw):
    return lambda prog, backend: prog.run(**{"question": "q", "backend": backend, **kw})


def _many(questions, **kw):
    return lambda prog, backend: prog.run_many(questions, backend=backend, **kw)


@pytest.mark.parametrize(
    "call, message",
    [
        (_run(question=["q"]), "question must be a str .*not a list"),
        (_run(question=None), "question must be a str .*not None"),
        (_run(question=7), "question must be a str"),
        (_run(seed="x"), "seed must be an int, not 'x'"),
        (_run(seed=1.5), "seed must be an int"),
        (_run(seed=True), "seed must be an int"),
        (_run(time_limit="x"), "time_limit must be a positive number of seconds"),
        (_run(time_limit=math.nan), "time_limit must be a positive number of seconds or None, not nan"),
        (_run(time_limit=math.inf), "time_limit must be a positive number"),
        (_run(time_limit=0), "time_limit must be a positive number"),
        (_run(time_limit=-1.0), "time_limit must be a positive number"),
        (_run(time_limit=10**400), "time_limit must be a positive number"),
        (_run(backend=42), "backend must be a Backend.*got 42 \\(int\\)"),
        (_run(backend="llama"), "backend must be a Backend"),
        (_run(backend={"policy": 42}), "backend\\['policy'\\] must be a Backend"),
        (_run(answer=["5"]), "answer must be the ground truth"),
        (_run(answer=math.nan), "answer must be the ground truth"),
        (_run(thresholds="0.5"), "thresholds must be a list"),
        (_run(thresholds=[0.5, math.nan]), "thresholds must be numbers in \\[0, 1\\]"),
        (_run(thresholds=[0.2, 0.4, 0.6, 1.5]), "thresholds must be numbers in \\[0, 1\\]"),
        (_run(thresholds=[0.8, 0.6, 0.4, 0.2]), "ascending"),
        (_many("abc"), "questions must be a list .*not 'abc' \\(str\\).*use run"),
        (_many({"question": "q"}), "questions must be a list .*not a dict"),
        (_many(q for q in ["a"]), "questions must be a list"),
        (_many([{"q": 1}]), 'questions\\[0\\] is a dict without a "question"'),
        (_many(["ok", {"question": 1}]), 'questions\\[1\\]\\["question"\\] must be a str'),
        (_many([{"question": "q", "answer": object()}]), 'questions\\[0\\]\\["answer"\\] must be the ground truth'),
        (_many([None]), 'questions\\[0\\] must be a str or a dict with a "question", not None'),
        (_many(["q"], on_result=5), "on_result must be a function"),
    ],
)
def test_run_refuses_wrong_arguments_before_any_model_work(call, message):
    prog = ttcl.compile(VOTE)
    backend = scripted()
    with pytest.raises(UsageError, match=message):
        call(prog, backend)
    assert backend.counters.batches == 0


def test_thresholds_must_match_the_bins():
    prog = ttcl.compile(
        'verifier v = check("arith")\nprogram main = match difficulty(v, bins=3) { 1 => sample(2) |> vote  _ => sample(4) |> vote }'
    )
    with pytest.raises(UsageError, match="thresholds holds 1 number, but .* 3 bins, which 2 thresholds cut"):
        prog.run("q", backend=scripted(), thresholds=[0.5])
    assert prog.run("q", backend=scripted(), thresholds=[0.3, 0.6]).answer == "5"


def test_arun_checks_its_arguments_too():
    prog = ttcl.compile(VOTE)
    with pytest.raises(UsageError, match="seed must be an int"):
        asyncio.run(prog.arun("q", seed="x", backend=scripted()))


def test_accepted_forms_still_run():
    import numpy as np

    prog = ttcl.compile("program main = sample(2) |> best(oracle)")
    duck = SimpleNamespace(name="duck", counters=Counters(), generate=scripted().generate)
    assert prog.run("q", backend=duck, answer=5).candidates[0].score == 1.0  # a number as the truth
    assert prog.run("q", backend={"policy": scripted()}, seed=np.int64(3), answer="5", time_limit=60).answer == "5"
    results = prog.run_many(
        ({"question": "a", "answer": "4"}, {"question": "b", "answer": 5.0, "level": 1}), backend=scripted()
    )
    assert [r.candidates[0].score for r in results] == [0.0, 1.0]
    assert [r.answer for r in ttcl.compile(VOTE).run_many(("a", "b"), backend=scripted())] == ["5", "5"]
    assert prog.run_many([], backend=scripted()) == []


# ---- registered verifiers -------------------------------------------------------------------

TWO_STEPS = "First, 2 + 3 = 5.\n\nThe answer is 5."


def scored_by(fn, name="hostile"):
    register_verifier(name, fn)
    prog = ttcl.compile(f'verifier v = registered("{name}")\nprogram main = sample(2) |> best(v)')
    return prog.run("q", backend=scripted(TWO_STEPS))


@pytest.mark.parametrize(
    "returned, message",
    [
        ([0.5, 0.5, 0.5], "returned 3 scores for a candidate of 2 steps"),
        ([], "returned 0 scores for a candidate of 2 steps"),
        (math.nan, "returned the score nan"),
        ([0.5, math.nan], "returned the score nan"),
        (math.inf, "returned the score inf"),
        (-0.1, "returned the score -0.1"),
        ([0.5, 1.5], "returned the score 1.5"),
        (10**400, "returned the score"),
        ("0.5", "returned a str"),
        (None, "returned a NoneType"),
        ({"score": 0.5}, "returned a dict"),
        ([0.5, "0.5"], "returned a score of type str"),
        ([0.5, None], "returned a score of type NoneType"),
        (object(), "returned a object"),
    ],
)
def test_a_verifier_returning_what_is_no_score_is_a_clear_error(returned, message):
    with pytest.raises(TTCLError, match=f"registered verifier 'hostile' {message}"):
        scored_by(lambda q, steps: returned)


def test_a_verifier_may_return_one_score_or_one_per_step():
    import numpy as np

    assert scored_by(lambda q, steps: 0.25).candidates[0].score == 0.25
    assert scored_by(lambda q, steps: [0.25]).candidates[0].score == 0.25
    assert scored_by(lambda q, steps: (0.1, 0.75)).candidates[0].score == 0.75
    assert scored_by(lambda q, steps: np.array([0.1, 0.5], dtype=np.float32)).candidates[0].score == 0.5
    assert scored_by(lambda q, steps: (s for s in [0.0, 1])).candidates[0].score == 1.0
    assert scored_by(lambda q, steps: True).candidates[0].score == 1.0


def test_register_verifier_checks_its_arguments():
    with pytest.raises(UsageError, match="the name must be a non-empty string"):
        register_verifier(3, lambda q, steps: 0.5)
    with pytest.raises(UsageError, match="expected a function"):
        register_verifier("x", 0.5)


# ---- program parameters are finite ----------------------------------------------------------

PARAM = "program main(t: float = 0.5) = sample(2, temperature=t) |> vote"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "1e400", 10**400, True, None, [1.0]])
def test_non_finite_or_non_numeric_float_parameters_are_refused(value):
    with pytest.raises(UsageError, match="parameter `t` must be float \\(a finite number\\)"):
        ttcl.compile(PARAM, params={"t": value})
    with pytest.raises(UsageError, match="parameter `t` must be float"):
        ttcl.compile(PARAM).bind(t=value)


@pytest.mark.parametrize("value", [None, 5, ["x"]])
def test_str_parameters_take_strings(value):
    with pytest.raises(UsageError, match="parameter `s` must be str"):
        ttcl.compile('program main(s: str = "a") = sample(2) |> vote', params={"s": value})


def test_good_parameters_still_bind():
    assert ttcl.compile(PARAM, params={"t": "0.25"}).params == {"t": 0.25}
    assert ttcl.compile(PARAM).bind(t=1).params == {"t": 1.0}
    assert ttcl.load("programs/bon.ttcl", params={"n": "4"}).ir.generations == 4


def test_param_nan_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "p.ttcl"
    path.write_text(PARAM + "\n")
    code = main(["graph", str(path), "--param", "t=nan"])
    err = capsys.readouterr().err
    assert code == 2 and "parameter `t` must be float (a finite number), got 'nan'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("question", ["", "  \n\t"])
def test_an_empty_question_is_refused_before_any_model_work(question):
    prog = ttcl.compile("program main = sample(2) |> vote")
    backend = ScriptedBackend(lambda r: "The answer is 2.")
    with pytest.raises(UsageError, match="question is empty"):
        prog.run(question, backend=backend)
    with pytest.raises(UsageError, match=r"questions\[1\] is empty"):
        prog.run_many(["What is 1 + 1?", question], backend=backend)
    with pytest.raises(UsageError, match=r'questions\[0\]\["question"\] is empty'):
        prog.run_many([{"question": question, "answer": "2"}], backend=backend)
    assert backend.counters.batches == 0
