"""`--set NAME.OPTION=VALUE` and `settings=`: applied to the declarations before checking, so a
wrong value gets the error it would get in the file, located in what was typed (`--set:N:COL`
with a caret); on every command that compiles a program, and in the API."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

import ttcl
from ttcl import ast
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.errors import UsageError

BON = "programs/bon.ttcl"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def errors(settings, text: str | None = None) -> str:
    """The rendered errors of compiling bon.ttcl (or `text`) with the settings."""
    with pytest.raises(ttcl.TTCLError) as info:
        if text is None:
            ttcl.load(BON, settings=settings)
        else:
            ttcl.compile(textwrap.dedent(text), "t.ttcl", settings=settings)
    return info.value.render()


# ---- values reach the program -------------------------------------------------------------


def test_settings_change_the_declarations_as_written_in_the_file():
    prog = ttcl.load(BON, settings=["policy.max_tokens=32", "policy.temperature=0.2", "prm.agg=min"])
    assert prog.ir.models["policy"]["max_tokens"] == 32 and prog.ir.models["policy"]["temperature"] == 0.2
    assert prog.ir.verifiers["prm"]["agg"] == "min"
    call = next(s.value for s in prog.ast.statements if isinstance(s, ast.ModelDecl))
    assert [k.name for k in call.kwargs] == ["temperature", "max_tokens"]  # replaced where they stood
    assert ttcl.load(BON).ir.models["policy"]["max_tokens"] == 256  # the file itself is untouched


def test_a_positional_argument_is_replaced_and_a_str_needs_no_quotes():
    prog = ttcl.load(BON, settings=["policy.path=model.gguf"])
    call = next(s.value for s in prog.ast.statements if isinstance(s, ast.ModelDecl))
    assert [a.value for a in call.args] == ["model.gguf"] and "path" not in [k.name for k in call.kwargs]
    assert prog.ir.models["policy"]["path"] == "model.gguf"
    quoted = ttcl.load(BON, settings=['policy.path="a b\\tc.gguf"'])  # quoted: a TTCL string, escapes and all
    assert quoted.ir.models["policy"]["path"] == "a b\tc.gguf"
    keyword = ttcl.compile('model m = llama(path="x.gguf")\nprogram main = sample(2) |> vote', settings=["m.path=y"])
    assert keyword.ir.models["m"]["path"] == "y"


def test_the_later_of_two_settings_of_one_option_wins():
    prog = ttcl.load(BON, settings=["policy.max_tokens=32", "policy.max_tokens=48"])
    assert prog.ir.models["policy"]["max_tokens"] == 48


def test_values_are_read_by_the_options_type():
    text = """
    model policy = llama("smollm2-135m")
    model other = llama("smollm2-135m")
    verifier prm = self_verify(policy)
    model big = spec(params=1e9)
    program main = sample(2) |> best(prm)
    """
    prog = ttcl.compile(
        textwrap.dedent(text),
        settings=["prm.m=other", "big.tied=false", "big.params=2e9", "big.layers=24", "policy.top_p=0.5"],
    )
    assert prog.ir.verifiers["prm"]["m"] == "other"  # a model option takes a declared name
    assert prog.checked.definitions["big"].value.kwargs[1].value.value is False
    assert prog.ir.models["policy"]["top_p"] == 0.5


def test_the_default_model_is_policy_where_the_file_declares_none():
    prog = ttcl.compile("program main = sample(2) |> best(prm)", settings=["policy.max_tokens=8"])
    assert prog.ir.models["policy"] | {"max_tokens": 8} == prog.ir.models["policy"]
    assert prog.ir.models["policy"]["kind"] == "llama" and prog.ir.models["policy"]["path"] == "smollm2-135m"
    assert prog.ir.verifiers["prm"]["kind"] == "prm"  # the shipped head, as for the undeclared default
    other = ttcl.compile("program main = sample(2) |> best(prm)", settings=["policy.path=other.gguf"])
    assert other.ir.models["policy"]["path"] == "other.gguf"
    assert other.ir.verifiers["prm"]["kind"] == "self_verify"  # the head was trained on SmolLM2 only


def test_answer_settings_change_the_declaration_or_make_one():
    prog = ttcl.compile("answer choice\nprogram main = sample(2) |> vote", settings=["answer.letters=ABCD"])
    value = prog.checked.answer.value
    assert value.func == "choice" and [(k.name, k.value.value) for k in value.kwargs] == [("letters", "ABCD")]
    text = 'prompt terse = "Q: {question}"\nprogram main = sample(2) |> vote'
    made = ttcl.compile(text, settings=["answer.prompt=terse"]).checked.answer.value
    assert made.func == "number" and [(k.name, k.value.id) for k in made.kwargs] == [("prompt", "terse")]


def test_the_api_takes_a_dict_of_python_values():
    prog = ttcl.load(BON, settings={"policy.max_tokens": 16, "policy.temperature": 0.5, "prm.agg": "prod"})
    assert prog.ir.models["policy"]["max_tokens"] == 16 and prog.ir.models["policy"]["temperature"] == 0.5
    assert prog.ir.verifiers["prm"]["agg"] == "prod"
    spec = ttcl.compile(
        "model big = spec(params=1e9)\nprogram main = sample(2, model=big) |> vote", settings={"big.tied": False}
    )
    assert spec.ir.models["big"]["tied"] is False
    assert prog.bind(n=4).ir.models["policy"]["max_tokens"] == 16  # bind keeps the settings


@pytest.mark.parametrize(
    "settings, message",
    [
        ("policy.max_tokens=32", "settings must be a list"),
        ([32], "each setting must be a"),
        ({1: 2}, "a settings key must be"),
        ({"policy.temperature": float("nan")}, "must be a bool, a number"),
        (["policy.path=a\nb"], "a setting is one line"),
    ],
)
def test_settings_of_the_wrong_shape_are_usage_errors(settings, message):
    with pytest.raises(UsageError, match=message):
        ttcl.load(BON, settings=settings)


def test_settings_on_a_compiled_artifact_are_refused(tmp_path, capsys):
    path = tmp_path / "bon.json"
    ttcl.load(BON).save(path)
    with pytest.raises(UsageError, match="is a compiled artifact, whose declarations are fixed"):
        ttcl.load(path, settings=["policy.max_tokens=8"])
    code, _, err = cli(capsys, "cost", path, "--set", "policy.max_tokens=8")
    assert code == 2 and "compile the source again" in err
    code, _, err = cli(capsys, "run", path, "-q", "What is 2 + 3?", "--set", "policy.max_tokens=8")
    assert code == 2 and "compiled artifact" in err
    # compiled with the setting, the artifact keeps it
    code, _, _ = cli(capsys, "compile", BON, "--set", "policy.max_tokens=8", "-o", tmp_path / "small.json")
    assert code == 0 and ttcl.load(tmp_path / "small.json").ir.models["policy"]["max_tokens"] == 8


# ---- errors: located in the settings, with a caret ---------------------------------------


def test_a_value_outside_its_limits_is_the_files_error_at_the_value():
    assert errors(["policy.max_tokens=0"]) == (
        "--set:1:19: error: `llama` argument `max_tokens` must be at least 1, got 0\n"
        " 1 | policy.max_tokens=0\n"
        "   |                   ^"
    )
    assert errors(["policy.max_tokens=32", "prm.agg=mean"]) == (
        "--set:2:9: error: `self_verify` argument `agg` must be one of 'last', 'min', 'prod', got 'mean'\n"
        " 2 | prm.agg=mean\n"
        "   |         ^^^^"
    )


def test_a_value_of_the_wrong_type_is_the_files_error_at_the_value():
    rendered = errors(["policy.max_tokens=0.5", 'policy.temperature="hot"', "policy.top_k=many"])
    assert "--set:1:19: error: `llama` argument `max_tokens` must be an int, not a float" in rendered
    assert (
        '--set:2:20: error: `llama` argument `temperature` must be a float, not a str\n 2 | policy.temperature="hot"'
        in rendered
    )
    assert "--set:3:14: error: unknown name `many`" in rendered  # as `top_k=many` in the file would be
    assert " 3 | policy.top_k=many\n   |              ^^^^" in rendered


def test_an_unknown_name_gets_a_suggestion_and_the_names_there_are():
    assert errors(["polcy.max_tokens=8"]) == (
        "--set:1:1: error: no model or verifier `polcy` to set; did you mean `policy`?\n"
        " 1 | polcy.max_tokens=8\n"
        "   | ^^^^^\n"
        "  note: --set can name: policy, prm, answer"
    )


def test_an_unknown_option_gets_a_suggestion_and_the_options_there_are():
    assert errors(["policy.max_token=8"]) == (
        "--set:1:8: error: `llama` has no parameter `max_token`; did you mean `max_tokens`?\n"
        " 1 | policy.max_token=8\n"
        "   |        ^^^^^^^^^\n"
        "  note: `llama` takes: path, temperature, top_p, top_k, max_tokens, n_ctx, n_gpu_layers, threads, batch"
    )
    text = "program main = sample(2) |> vote"
    assert "note: the file declares no `answer`, so it is `number`" in errors(["answer.letters=ABCD"], text)


@pytest.mark.parametrize(
    "setting, message, caret",
    [
        ("weighted_best_of_n.n=4", "`weighted_best_of_n` is a strategy; --set changes the options of", "^" * 18),
        ("main.n=4", "`main` is a program", "^^^^"),
        ("policy", "`policy` is not a setting: it has no `=`", "^" * 6),
        ("policy=4", "`policy` names no option: a `.` goes between", "^" * 6),
        (".max_tokens=4", "the declaration's name is missing", "^"),
        ("policy.=4", "the option's name is missing", "^"),
        ("policy.max-tokens=4", "`max-tokens` is not a name", "^" * 10),
        ("policy.max_tokens=", "`policy.max_tokens` needs a value after `=`", "^"),
        ("policy.temperature=[0.1, 0.2", "unexpected end of the value; expected", "^"),
        ("policy.max_tokens=3 4", "unexpected `4`", "^"),
    ],
)
def test_malformed_and_misplaced_settings_point_at_their_fault(setting, message, caret):
    rendered = errors([setting])
    first, line, under = rendered.split("\n")[:3]
    assert first.startswith("--set:1:") and message in first
    assert line == f" 1 | {setting}"
    column = int(first.split(":")[2])
    assert under == "   | " + " " * (column - 1) + caret


def test_settings_that_cannot_name_a_declaration_say_why(tmp_path):
    alias = 'model policy = llama("smollm2-135m")\nverifier v = self_verify(policy)\nverifier w = v\n'
    assert "verifier `w` is another name for `v` and has no options of its own" in errors(
        ["w.agg=min"], alias + "program main = sample(2) |> best(w)"
    )
    assert "`prm` is the built-in verifier, with no declaration to change" in errors(
        ["prm.agg=min"], 'model m = llama("smollm2-135m")\nprogram main = sample(2) |> best(prm)'
    )
    (tmp_path / "models.ttcl").write_text('model shared = llama("smollm2-135m")\n')
    main_file = tmp_path / "main.ttcl"
    main_file.write_text('import "./models.ttcl"\nprogram main = sample(2, model=shared) |> vote\n')
    with pytest.raises(ttcl.TTCLError, match="`shared` is declared in .*models.ttcl, an imported module"):
        ttcl.load(main_file, settings=["shared.max_tokens=8"])


def test_every_setting_error_is_reported_at_once_with_the_files_own():
    text = 'model policy = llama("smollm2-135m")\nprogram main = sample(2) |> best(prn)\n'
    rendered = errors(["polcy.x=1", "policy.max_token=3"], text)
    assert rendered.count("error:") == 3 and "t.ttcl:2:34: error: unknown name `prn`" in rendered


# ---- the commands ---------------------------------------------------------------------------


def test_cost_and_graph_take_set(capsys):
    code, out, _ = cli(capsys, "cost", BON, "--json", "--set", "policy.max_tokens=32", "--param", "n=4")
    small = json.loads(out)
    code2, out2, _ = cli(capsys, "cost", BON, "--json", "--param", "n=4")
    assert code == code2 == 0 and small["worst"]["tokens"] < json.loads(out2)["worst"]["tokens"]
    code, out, _ = cli(capsys, "graph", BON, "--set", "policy.max_tokens=32", "--set", "prm.agg=min")
    assert code == 0 and "max_tokens=32" in out and "agg=min" in out
    code, _, err = cli(capsys, "cost", BON, "--set", "policy.max_tokens=0")
    assert code == 1 and "--set:1:19: error: `llama` argument `max_tokens` must be at least 1, got 0" in err
    code, _, err = cli(capsys, "parse", BON, "--set", "policy.max_tokens=8")
    assert code == 2 and "use it with --emit ir" in err


def solve(request):
    a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    return f"{a} + {b} = {a + b}\n\nThe answer is {a + b}."


@pytest.fixture
def scripted(monkeypatch):
    """Every declared model is a scripted one; the declarations it was asked for are kept."""
    asked = []

    def backend_for(decl):
        asked.append(decl)
        return shared

    shared = ScriptedBackend(solve, lambda request, options: [0.9, 0.1])
    monkeypatch.setattr(ttcl.backends, "backend_for", backend_for)
    return asked


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(4))
    )
    return path


def test_eval_takes_set(capsys, tmp_path, scripted, dataset):
    out = tmp_path / "r.jsonl"
    code, _, _ = cli(
        capsys, "eval", BON, "--dataset", dataset, "-o", out, "--set", "policy.max_tokens=16", "--param", "n=2"
    )
    assert code == 0 and scripted and all(decl["max_tokens"] == 16 for decl in scripted)
    code, _, err = cli(capsys, "eval", BON, "--dataset", dataset, "-o", tmp_path / "s.jsonl", "--set", "prm.agg=avg")
    assert code == 1 and "--set:1:9: error: `self_verify` argument `agg` must be one of" in err


def test_optimize_takes_set_and_writes_it_into_the_program(capsys, tmp_path, scripted, dataset):
    program = tmp_path / "o.ttcl"
    argv = ["optimize", BON, "--dataset", dataset, "--budget", "4", "--probe", "2", "--bins", "2"]
    argv += ["--candidate", "majority(2)", "--runs", tmp_path / "runs.jsonl", "-o", program]
    code, _, err = cli(capsys, *argv, "--set", "policy.max_tokens=16", "--set", "prm.agg=min")
    assert code == 0, err
    assert scripted and all(decl["max_tokens"] == 16 for decl in scripted)
    written = program.read_text()
    assert 'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=16)' in written
    assert 'verifier prm = self_verify(policy, agg="min")' in written
    assert ttcl.load(program).ir.models["policy"]["max_tokens"] == 16
    code, _, err = cli(capsys, *argv, "--set", "policy.max_tokens=-1")
    assert code == 1 and "--set:1:19: error: `llama` argument `max_tokens` must be at least 1, got -1" in err


def repl_piped(text: str, *args):
    return subprocess.run(
        [sys.executable, "-m", "ttcl", "repl", *map(str, args)], input=text, capture_output=True, text=True, timeout=120
    )


def test_repl_takes_set():
    done = repl_piped("sample(2) |> vote\n", "--set", "policy.max_tokens=24")
    assert done.returncode == 0, done.stderr
    assert "max_tokens=24" in done.stdout
    later = repl_piped(
        'model m = llama("smollm2-135m")\nverifier prm = self_verify(m)\nsample(2) |> best(prm)\n',
        "--set",
        "prm.agg=min",
        "--set",
        "prm.zz=1",
    )
    assert "note: --set prm.agg=min waits for a declaration of what it names" in later.stderr
    assert "--set:2:5: error: `self_verify` has no parameter `zz`" in later.stderr  # its line kept: the 2nd --set
    loaded = repl_piped(":graph\n", BON, "--set", "prm.agg=prod")
    assert loaded.returncode == 0, loaded.stderr
    assert "agg=prod" in loaded.stdout


@pytest.mark.slow
def test_run_with_set_on_the_embedded_model(capsys):
    code, out, err = cli(capsys, "run", BON, "--set", "policy.max_tokens=32", "-q", "What is 2 + 3?", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["candidates"] and all(c["generated_tokens"] <= 32 for c in result["candidates"])
