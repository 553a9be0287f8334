"""Hostile inputs, tried as an attacker would, and what became of each.

    python bench/hostile.py [--family NAME] [--timeout 60] [--verbose]

Feeds bad inputs in seven families (program source, compiled artifacts, dataset and results
lines, command-line options and output paths, the Python API, model files, model configs and
chat templates, PRM heads) to the `ttcl` command or the Python API, each in its own process
with a time limit, and sorts what happened (hostile servers have their own tests:
tests/test_hostile_served.py):

- clean: a clear error (exit 1 or 2, or a TTCLError from the API) with no Python traceback,
  or the graceful result the case expects;
- traceback: a Python traceback reached the user;
- hang: still running at the time limit;
- crash: killed by a signal (e.g. out of memory);
- wrong: it "succeeded" where it should have refused, or gave a result the case knows is wrong.

Prints one line per case and a table per family. Asserts nothing: a measurement, rerun it
after any change. Uses the embedded SmolLM2-135M for the few cases that must run a model
(max_tokens 8); run it alone on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = 'model m = llama("smollm2-135m", temperature=0.8, max_tokens=8)\nprogram main = sample(2) |> vote\n'


@dataclass
class Case:
    family: str
    name: str
    argv: list[str]  # after `python -m ttcl`, or ["-c", CODE] for the Python API
    expect: str = "error"  # "error": must refuse cleanly; "ok": must succeed; "either": no traceback
    api: bool = False
    must_say: str = ""  # the output must contain this (e.g. the right reason)


def exponential(depth: int) -> str:
    lines = ["strategy s0(n: int) = sample(n)"]
    lines += [f"strategy s{i}(n: int) = s{i - 1}(n) + s{i - 1}(n)" for i in range(1, depth + 1)]
    return "\n".join(lines) + f"\nprogram main = s{depth}(1) |> vote\n"


def source_cases(d: Path) -> list[Case]:
    files = {
        "syntax": "program main = sample(4 |> vote\n",
        "unknown_name": "program main = smaple(4) |> vote\n",
        "huge_int": f"program main = sample({'9' * 5000}) |> vote\n",
        "huge_float": f"program main = sample(4, temperature={'9' * 400}.0) |> vote\n",
        "deep_parens": "program main = " + "(" * 100_000 + "sample(2)" + ")" * 100_000 + " |> vote\n",
        "deep_lists": "program main = sample(2) |> vote(" + "[" * 50_000 + "]" * 50_000 + ")\n",
        "exponential": exponential(40),
        "control_chars": 'program main = sample(2) |> vote("\x1b[2J\x1b[31m")\n',
        "cr_only": 'model m = llama("smollm2-135m")\r\rprogram main = sample(0) |> vote\r',
        "negative_budget": "budget -5 generations\nprogram main = sample(4) |> vote\n",
        "nul_bytes": "program main = sample(2)\x00 |> vote\n",
        "binary": "\xff\xfe\x00garbage",
        "repeat_huge": "program main = revise(1) * 9000 |> vote\n",
        "empty": "",
    }
    cases = []
    for name, text in files.items():
        path = d / f"{name}.ttcl"
        path.write_bytes(text.encode("utf-8", "surrogateescape") if name != "binary" else b"\xff\xfe\x00garbage")
        expect = "either" if name in ("deep_parens", "cr_only", "repeat_huge") else "error"
        must_say = "positive" if name == "negative_budget" else ""
        cases.append(Case("source", name, ["check", str(path)], expect, must_say=must_say))
        if name in ("huge_int", "deep_parens", "control_chars"):
            cases.append(Case("source", f"fmt {name}", ["fmt", str(path)], "either"))
        if name == "repeat_huge":
            cases.append(Case("source", "graph repeat_huge", ["graph", str(path)], "either"))
    (d / "loop_a.ttcl").unlink(missing_ok=True)
    (d / "loop_b.ttcl").unlink(missing_ok=True)
    os.symlink(d / "loop_b.ttcl", d / "loop_a.ttcl")
    os.symlink(d / "loop_a.ttcl", d / "loop_b.ttcl")
    (d / "imports_loop.ttcl").write_text('import "./loop_a.ttcl"\nprogram main = sample(2) |> vote\n')
    cases.append(Case("source", "symlink_loop_import", ["check", str(d / "imports_loop.ttcl")]))
    (d / "imports_system.ttcl").write_text('import "/etc/passwd"\nprogram main = sample(2) |> vote\n')
    cases.append(Case("source", "import_system_file", ["check", str(d / "imports_system.ttcl")]))
    cases.append(Case("source", "device_file", ["check", "/dev/zero"]))
    fifo = d / "fifo.ttcl"
    os.mkfifo(fifo)
    cases.append(Case("source", "fifo", ["check", str(fifo)]))
    cases.append(Case("source", "directory", ["check", str(d)]))
    cases.append(Case("source", "missing_file", ["check", str(d / "nope.ttcl")]))
    return cases


def artifact_cases(d: Path) -> list[Case]:
    good = d / "good.ttcl"
    good.write_text("program main = sample(4) |> vote\n")
    art = d / "good.json"
    subprocess.run(
        [sys.executable, "-m", "ttcl", "compile", str(good), "-o", str(art)], check=True, capture_output=True
    )
    doc = json.loads(art.read_text())

    def tampered(name: str, change) -> Case:
        data = json.loads(json.dumps(doc))
        change(data)
        path = d / f"artifact_{name}.json"
        path.write_text(json.dumps(data))
        code = textwrap.dedent(f"""
            import json, sys
            sys.path.insert(0, {str(ROOT)!r})
            from ttcl import ir
            data = json.load(open({str(path)!r}))
            data.pop("checksum", None)
            data["checksum"] = ir.checksum(data)
            json.dump(data, open({str(path)!r}, "w"))
        """)
        subprocess.run([sys.executable, "-c", code], capture_output=True)
        return Case("artifact", name, ["graph", str(path)])

    def nodes(data):
        return data.get("nodes", [])

    cases = [
        tampered("unknown_op", lambda x: nodes(x)[1].update(op="launch_missiles")),
        tampered("negative_n", lambda x: [n["params"].update(n=-3) for n in nodes(x) if "n" in n.get("params", {})]),
        tampered("huge_n", lambda x: [n["params"].update(n=10**30) for n in nodes(x) if "n" in n.get("params", {})]),
        tampered("string_n", lambda x: [n["params"].update(n="four") for n in nodes(x) if "n" in n.get("params", {})]),
        tampered("dangling_edge", lambda x: x.get("edges", []).append({"source": 0, "target": 999})),
        tampered("no_nodes", lambda x: x.update(nodes=[])),
        tampered("cycle", lambda x: x.get("edges", []).append({"source": len(nodes(x)) - 1, "target": 0})),
    ]
    deep = d / "artifact_deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cases.append(Case("artifact", "deep_json", ["graph", str(deep)]))
    junk = d / "artifact_junk.json"
    junk.write_text('{"format": "ttcl-ir"')
    cases.append(Case("artifact", "truncated", ["cost", str(junk)]))
    return cases


def dataset_cases(d: Path) -> list[Case]:
    prog = d / "prog.ttcl"
    prog.write_text(PROGRAM)
    lines = {
        "deep_json_line": "[" * 100_000 + "]" * 100_000 + "\n",
        "not_json": "question: what?\n",
        "no_question": '{"answer": "3"}\n',
        "inf_answer": '{"question": "What is 1 + 1?", "answer": "inf"}\n',
        "huge_answer": '{"question": "What is 1 + 1?", "answer": "1e400"}\n',
        "number_question": '{"question": 12, "answer": "3"}\n',
    }
    cases = []
    for name, line in lines.items():
        path = d / f"{name}.jsonl"
        path.write_text(line)
        expect = "either" if name in ("inf_answer", "huge_answer") else "error"
        cases.append(
            Case(
                "dataset",
                name,
                ["eval", str(prog), "--dataset", str(path), "--strict", "-o", str(d / f"{name}.out.jsonl")],
                expect,
            )
        )
    garbage = d / "garbage_results.jsonl"
    garbage.write_text('{"not": "a record"}\n{{{{\n')
    cases.append(
        Case(
            "dataset",
            "garbage_results_resume",
            ["eval", str(prog), "--dataset", "arith:1", "--limit", "1", "-o", str(garbage), "--resume"],
            "either",
        )
    )
    cases.append(
        Case("dataset", "dev_zero_dataset", ["eval", str(prog), "--dataset", "/dev/zero", "-o", str(d / "z.jsonl")])
    )
    cases.append(
        Case("dataset", "dev_zero_questions", ["run", str(prog), "--questions", "/dev/zero", "-o", str(d / "q.jsonl")])
    )
    cases.append(
        Case(
            "dataset",
            "huge_limit",
            ["eval", str(prog), "--dataset", "arith:1", "--limit", "1000000000", "-o", str(d / "l.jsonl")],
        )
    )
    return cases


def option_cases(d: Path) -> list[Case]:
    prog = d / "opt.ttcl"
    prog.write_text(PROGRAM.replace("program main", "verifier v = self_verify(m)\nprogram main(t: float = 0.5)"))
    p = str(prog)
    (d / "q.txt").write_text("What is 1 + 1?\n")
    return [
        Case(
            "options",
            "bins_99",
            ["optimize", p, "--dataset", "arith:1", "--limit", "2", "--bins", "99", "-o", str(d / "o.ttcl")],
        ),
        Case(
            "options",
            "probe_0",
            ["optimize", p, "--dataset", "arith:1", "--limit", "2", "--probe", "0", "-o", str(d / "o.ttcl")],
        ),
        Case("options", "empty_question", ["run", p, "-q", " "]),
        Case("options", "time_limit_nan", ["run", p, "-q", "hi", "--time-limit", "nan"]),
        Case("options", "time_limit_zero", ["run", p, "-q", "hi", "--time-limit", "0"]),
        Case("options", "time_limit_negative", ["run", p, "-q", "hi", "--time-limit", "-1"]),
        Case("options", "param_nan", ["run", p, "-q", "hi", "--param", "t=nan"]),
        Case("options", "trace_missing_dir", ["run", p, "-q", "hi", "--trace", str(d / "missing" / "t.json")]),
        Case(
            "options",
            "output_missing_dir",
            ["eval", p, "--dataset", "arith:1", "--limit", "1", "-o", str(d / "missing" / "r.jsonl")],
        ),
        Case("options", "output_is_directory", ["run", p, "--questions", str(d / "q.txt"), "-o", str(d)]),
        Case("options", "unknown_program", ["run", p, "-q", "hi", "--program", "nope"]),
        Case("options", "budget_unit", ["cost", p, "--budget", "12 parsecs"]),
    ]


API = [
    ("compile_none", "ttcl.compile(None)"),
    ("compile_int", "ttcl.compile(123)"),
    ("run_list", 'ttcl.compile("program main = sample(2) |> vote").run(["q"], backend=fake)'),
    ("run_none", 'ttcl.compile("program main = sample(2) |> vote").run(None, backend=fake)'),
    ("seed_text", 'ttcl.compile("program main = sample(2) |> vote").run("q", seed="x", backend=fake)'),
    ("time_limit_text", 'ttcl.compile("program main = sample(2) |> vote").run("q", time_limit="x", backend=fake)'),
    (
        "time_limit_nan",
        'ttcl.compile("program main = sample(2) |> vote").run("q", time_limit=float("nan"), backend=fake)',
    ),
    ("backend_int", 'ttcl.compile("program main = sample(2) |> vote").run("q", backend=42)'),
    ("run_many_bad_dict", 'ttcl.compile("program main = sample(2) |> vote").run_many([{"q": 1}], backend=fake)'),
    ("run_many_string", 'ttcl.compile("program main = sample(2) |> vote").run_many("abc", backend=fake)'),
    ("run_empty_question", 'ttcl.compile("program main = sample(2) |> vote").run("  ", backend=fake)'),
    (
        "verifier_wrong_count",
        'ttcl.register_verifier("bad", lambda q, cs: []); ttcl.compile("verifier v = registered(\\"bad\\")\\nprogram main = sample(3) |> best(v)").run("q", backend=fake)',
    ),
    (
        "verifier_nan",
        'ttcl.register_verifier("bad", lambda q, cs: [float("nan")] * len(cs)); ttcl.compile("verifier v = registered(\\"bad\\")\\nprogram main = sample(3) |> best(v)").run("q", backend=fake)',
    ),
    (
        "verifier_out_of_range",
        'ttcl.register_verifier("bad", lambda q, cs: [7.0] * len(cs)); ttcl.compile("verifier v = registered(\\"bad\\")\\nprogram main = sample(3) |> best(v)").run("q", backend=fake)',
    ),
    (
        "bind_nan",
        'ttcl.compile("program main(t: float = 0.5) = sample(2, temperature=t) |> vote").bind(t=float("nan"))',
    ),
]


def api_cases() -> list[Case]:
    prelude = (
        "import sys, ttcl\n"
        "from ttcl.backends.fake import ScriptedBackend\n"
        "fake = ScriptedBackend(lambda request: 'The answer is 4.')\n"
        "try:\n    {}\nexcept ttcl.TTCLError as e:\n    print('error:', e); sys.exit(1)\n"
    )
    return [Case("api", name, ["-c", prelude.format(code)], api=True) for name, code in API]


def model_file_cases(d: Path) -> list[Case]:
    cases = []
    for name, data in {
        "empty_gguf": b"",
        "not_gguf": b"PK\x03\x04zip",
        "truncated_gguf": b"GGUF\x03\x00\x00\x00",
    }.items():
        path = d / f"{name}.gguf"
        path.write_bytes(data)
        prog = d / f"{name}.ttcl"
        prog.write_text(f'model m = llama("{path}", max_tokens=8)\nprogram main = sample(2) |> vote\n')
        cases.append(Case("model", name, ["run", str(prog), "-q", "hi"]))
    # a transformers directory whose config files are hostile: the cost of a torch model reads
    # config.json; a served model's config= directory reads tokenizer_config.json too
    for name, text in {"config_deep": "[" * 100_000 + "]" * 100_000, "config_list": "[1, 2]"}.items():
        directory = d / name
        directory.mkdir()
        (directory / "config.json").write_text(text)
        (directory / "tokenizer_config.json").write_text(text)
        prog = d / f"{name}.ttcl"
        prog.write_text(f'model m = torch("{directory}")\nprogram main = sample(2) |> vote\n')
        cases.append(Case("model", name, ["cost", str(prog)], "either", must_say=str(directory)))
        served = d / f"{name}_served.ttcl"
        served.write_text(
            f'model m = openai("http://127.0.0.1:9/v1", model="x", config="{directory}")\nprogram main = sample(2) |> vote\n'
        )
        cases.append(Case("model", f"{name}_served", ["cost", str(served)], "either"))
    prog = d / "missing_model.ttcl"
    prog.write_text(f'model m = llama("{d / "nope.gguf"}")\nprogram main = sample(2) |> vote\n')
    cases.append(Case("model", "missing_model_file", ["run", str(prog), "-q", "hi"]))
    for name, template in {
        "template_loop": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "template_alloc": "{{ 'x' * 9999999999 }}",
        "template_code": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    }.items():
        code = (
            "import sys\nfrom ttcl.backends.chat import render_chat\nfrom ttcl.backends.base import GenerationRequest, Message\n"
            "from ttcl.errors import TTCLError\n"
            "r = GenerationRequest(messages=(Message(role='user', content='hi'),))\n"
            f"try:\n    render_chat({template!r}, r, 'model.gguf', '', '')\nexcept TTCLError as e:\n    print('error:', e); sys.exit(1)\n"
        )
        cases.append(Case("model", name, ["-c", code], api=True))
    return cases


def head_cases(d: Path) -> list[Case]:
    code = textwrap.dedent("""
        import sys, numpy as np
        from safetensors.numpy import save_file
        from ttcl.errors import TTCLError
        try:
            from ttcl.runtime import prm
        except ImportError:  # before the runtime subpackage
            from ttcl import prm
        kind = sys.argv[1]
        path = sys.argv[2]
        w = {"w1": np.ones((16, 576), np.float32), "b1": np.zeros(16, np.float32), "w2": np.ones((1, 16), np.float32),
             "b2": np.zeros(1, np.float32), "mean": np.zeros(576, np.float32), "std": np.ones(576, np.float32)}
        if kind == "shapes": w["w2"] = np.ones((3, 7), np.float32)
        if kind == "nan": w["w1"][0, 0] = np.nan
        if kind == "zero_std": w["std"][:] = 0
        save_file(w, path)
        try:
            head = prm.load_head(path)
            s = head.score(np.ones((2, 576), np.float32))
            if not np.all(np.isfinite(s)): print("NaN scores"); sys.exit(3)
        except TTCLError as e:
            print("error:", e); sys.exit(1)
    """)
    return [
        Case("prm_head", kind, ["-c", code, kind, str(d / f"{kind}.safetensors")], api=True)
        for kind in ("shapes", "nan", "zero_std")
    ]


def classify(case: Case, run: subprocess.CompletedProcess | None) -> str:
    if run is None:
        return "hang"
    text = run.stdout + run.stderr
    if run.returncode < 0:
        return "crash"
    if "Traceback" in text or "MemoryError" in text:
        return "traceback"
    if run.returncode == 3 or "\x1b" in text or len(text) > 10_000_000:  # NaN scores, raw escapes, a flood
        return "wrong"
    if case.must_say and case.must_say not in text:
        return "wrong"
    if case.expect == "error":
        return "clean" if run.returncode in (1, 2) else "wrong"
    if case.expect == "ok":
        return "clean" if run.returncode == 0 else "wrong"
    return "clean"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", help="only this family")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--verbose", action="store_true", help="print each case's last output line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cases = (
            source_cases(d)
            + artifact_cases(d)
            + dataset_cases(d)
            + option_cases(d)
            + api_cases()
            + model_file_cases(d)
            + head_cases(d)
        )
        if args.family:
            cases = [c for c in cases if c.family == args.family]
        tally: dict[str, Counter] = defaultdict(Counter)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
        for case in cases:
            argv_ = [sys.executable, *case.argv] if case.api else [sys.executable, "-m", "ttcl", *case.argv]
            try:
                run = subprocess.run(
                    argv_,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    cwd=d,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                run = None
            outcome = classify(case, run)
            tally[case.family][outcome] += 1
            last = "" if run is None else ((run.stderr or run.stdout).strip().splitlines() or [""])[-1][:100]
            print(f"{case.family:9} {case.name:24} {outcome:9} {last if args.verbose else ''}", flush=True)
    kinds = ("clean", "traceback", "hang", "crash", "wrong")
    print(f"\n{'family':10}" + "".join(f"{k:>10}" for k in kinds) + f"{'tried':>8}")
    for family, counts in tally.items():
        print(f"{family:10}" + "".join(f"{counts[k]:>10}" for k in kinds) + f"{sum(counts.values()):>8}")
    total = sum(tally.values(), Counter())
    print(f"{'all':10}" + "".join(f"{total[k]:>10}" for k in kinds) + f"{sum(total.values()):>8}")


if __name__ == "__main__":
    main()
