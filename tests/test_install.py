"""The built package carries the grammar, the stdlib and the shipped PRM head, so an installed `ttcl` needs no
source tree: build a wheel, unpack it elsewhere, and compile a program that imports the stdlib."""

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_grammar_and_stdlib(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("ttcl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ttcl/grammar/ttcl.lark" in names
    assert {"ttcl/stdlib/parallel.ttcl", "ttcl/stdlib/search.ttcl", "ttcl/stdlib/revision.ttcl"} <= set(names)
    assert {"ttcl/heads/arith.safetensors", "ttcl/heads/arith.json"} <= set(names)  # the default prm
    assert "ttcl/cost/priors.json" in names  # the priors of the known models

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import ttcl, ttcl.parser as p\n"
        f"assert str(p.resource_dir('stdlib')).startswith({str(site)!r}), p.resource_dir('stdlib')\n"
        'prog = ttcl.compile(\'import "search"\\nmodel policy = llama("smollm2-135m")\\n'
        "verifier prm = self_verify(policy)\\nprogram main = beam_search(8, prm)')\n"
        "print(len(prog.graph), prog.cost(flops=False).priors['policy'].source)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4 shipped"
