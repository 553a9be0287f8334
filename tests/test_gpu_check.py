"""bench/gpu_check.py, the GPU check, run the way it runs where there is no GPU: `--device cpu
--quick`, every stage with tiny shapes on the CPU. Checks the report it writes has every
stage, counts for the CUDA-marked tests, positive tokens/s for each dtype and batch size,
and the batched-against-alone comparison (on the CPU in float32, identical by construction),
so the script is known to work before a GPU runs it. Then its error capture: a stage that
fails records its error, one that hangs is ended at its limit."""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

STAGES = ["environment", "pytest-cuda", "torch-smollm2-135m", "torch-qwen2.5-0.5b", "llama-cuda"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick run's report and printed output (one run for every test here)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout + done.stderr, out


def stage(report, name):
    return next(s for s in report["stages"] if s["name"] == name)


def test_the_report_has_every_stage_and_says_where_it_is(quick_run):
    report, printed, out = quick_run
    assert report["format"] == "ttcl-gpu-check" and report["quick"] and report["device"] == "cpu"
    assert [s["name"] for s in report["stages"]] == STAGES
    assert 0 < report["seconds"] < report["budget_s"]
    assert f"wrote {out}" in printed and "Traceback" not in printed
    assert "| stage | status | seconds | notes |" in report["markdown"]
    assert report["markdown"] in printed


def test_the_environment_and_the_cuda_tests_are_recorded(quick_run):
    report, _, _ = quick_run
    env = stage(report, "environment")
    assert env["status"] == "ok" and env["result"]["torch"] and env["result"]["cuda_available"] is False
    tests = stage(report, "pytest-cuda")
    assert tests["status"] == "ok", tests
    counts = tests["result"]["tests"]
    assert set(counts) == {"passed", "failed", "skipped", "errors"}
    assert counts["failed"] == counts["errors"] == 0 and sum(counts.values()) >= 1
    assert "-m cuda" in tests["result"]["command"]


@pytest.mark.parametrize("name", ["torch-smollm2-135m", "torch-qwen2.5-0.5b"])
def test_the_torch_stages_measure_every_dtype_and_batch(quick_run, name):
    report, _, _ = quick_run
    entry = stage(report, name)
    assert entry["status"] == "ok", entry
    result = entry["result"]
    assert result["params"] > 0 and result["tokens"] == 8
    assert set(result["tok_s"]) == {"float32", "bfloat16"}
    for figures in result["tok_s"].values():
        assert set(figures) == {"n=1", "n=4"}
        for key, figure in figures.items():
            assert figure["n"] == int(key[2:]) and figure["generated"] == figure["n"] * 8
            assert figure["tok_s"] > 0 and figure["seconds"] > 0 and figure["prompt_tokens"] > 0
    check = result["batched_vs_alone"]
    assert check["requests"] == check["identical_requests"] == 4 and check["identical"]
    assert check["max_logprob_diff"] == 0.0 and check["diverges_at"] == [None] * 4
    assert f"{name} (" in report["markdown"]


def test_the_llama_cuda_build_is_skipped_with_its_reason(quick_run):
    report, _, _ = quick_run
    llama = stage(report, "llama-cuda")
    assert llama["status"] == "skipped" and "quick" in llama["reason"]


@pytest.fixture(scope="module")
def gpu_check():
    """bench/gpu_check.py as a module (it imports bench/timing.py as `timing`)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_a_failing_stage_records_its_error_in_one_line(gpu_check, tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("hello, not a model")
    args = gpu_check.parse_args(["--device", "cpu", "--quick", "--gguf", str(notes)])
    result = gpu_check.run_child("llama-run", args, 60)
    assert gpu_check.status_of(result) == "error"
    assert result["error"].startswith("BackendError: ") and "not a GGUF model file" in result["error"]
    assert "Traceback" not in json.dumps(result)


def test_a_command_that_hangs_is_ended_at_its_limit(gpu_check):
    start = time.monotonic()
    status, _ = gpu_check.run_limited([sys.executable, "-c", "import time; time.sleep(60)"], 1)
    assert status is None and time.monotonic() - start < 20


def test_stage_statuses(gpu_check):
    status = gpu_check.status_of
    assert status({"tok_s": {}}) == "ok"
    assert status({"skipped": "no nvcc"}) == "skipped"
    assert status({"error": "RuntimeError: boom"}) == "error"
    assert status({"exit_status": None}) == "timeout" and status({"exit_status": -11}) == "error"
    assert status({"tests": {"passed": 1, "failed": 1, "skipped": 0, "errors": 0}}) == "failed"
    args = argparse.Namespace(only=None, quick=False, device="cuda")
    llama = next(s for s in gpu_check.PLAN if s.name == "llama-cuda")
    assert gpu_check.plan_skip(llama, args, 120).startswith("time: 120 s left")
    assert gpu_check.plan_skip(llama, args, 400) is None
