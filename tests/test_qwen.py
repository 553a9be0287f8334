"""The optional Qwen2.5-Coder-0.5B-Instruct model (`llama("qwen2.5-coder-0.5b")`, the `qwen`
extra): its file assembled from six packaged parts into the cache directory, checked against
its sha256; every failure a clear error that leaves no file behind (on small fake parts, so
these run without the extra); and a real run that answers an easy question (slow)."""

import hashlib
import importlib
import importlib.util
import os
import uuid

import pytest

from ttcl.backends import models
from ttcl.backends.base import BackendError
from ttcl.backends.models import QWEN, AssembledModel, Part, assembled_file, resolve_model_path
from ttcl.cli.app import main


def has_extra() -> bool:
    return all(importlib.util.find_spec(part.package) is not None for part in QWEN.parts)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache directory: what TTCL writes under it, and nothing else."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ttcl" / "models"


def files_in(directory) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def fake_model(tmp_path, monkeypatch, sizes=(1000, 2000, 500), wrong: dict | None = None) -> AssembledModel:
    """Three small parts in three packages on sys.path, and the model they make. `wrong`:
    part index -> bytes to write instead (a wrong part) after the checksum is taken."""
    root = tmp_path / "packages"
    tag = uuid.uuid4().hex[:8]  # a fresh package name per test: find_spec caches nothing stale
    parts, whole = [], b""
    for i, size in enumerate(sizes, 1):
        package = f"fake_qwen_{tag}_part{i}"
        data = bytes((i * 7 + j) % 251 for j in range(size))
        (root / package / "data").mkdir(parents=True)
        (root / package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (root / package / "data" / f"part{i:02d}.bin").write_bytes((wrong or {}).get(i, data))
        parts.append(Part(package, f"data/part{i:02d}.bin", size))
        whole += data
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return AssembledModel(
        name="fake-0.1b",
        file="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        extra="qwen",
        parts=tuple(parts),
    )


# --------------------------------------------------------------------------- fake parts


def test_parts_are_assembled_once_checked_and_stamped(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch)
    path = assembled_file(fake)
    assert path == cache / "fake.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake.sha256 and path.stat().st_size == fake.size
    assert files_in(cache) == ["fake.gguf", "fake.gguf.verified"]  # no temporary file left

    def never(*args):
        raise AssertionError("hashed or assembled again")

    monkeypatch.setattr(models, "_sha256_of", never)  # a later use trusts the stamp
    monkeypatch.setattr(models, "_append", never)
    assert assembled_file(fake) == path


def test_a_changed_file_is_hashed_again_and_reassembled(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch)
    path = assembled_file(fake)
    path.write_bytes(b"\0" * fake.size)  # same size, other bytes, a new modification time
    os.utime(path, ns=(1, 1))
    assert hashlib.sha256(assembled_file(fake).read_bytes()).hexdigest() == fake.sha256


def test_a_missing_part_names_the_extra_and_writes_nothing(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch)
    missing = AssembledModel(**{**fake.__dict__, "parts": (*fake.parts[:2], Part("no_such_part_pkg", "x.bin", 1))})
    with pytest.raises(BackendError, match=r"needs the extra qwen \(pip install 'ttcl\[qwen\]'\): no-such-part-pkg"):
        assembled_file(missing)
    assert files_in(cache) == []


def test_a_part_of_the_wrong_size_is_refused_before_anything_is_written(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch, wrong={2: b"short"})
    with pytest.raises(BackendError, match=r"part02.bin is 5 bytes, not 2000; reinstall the extra qwen"):
        assembled_file(fake)
    assert files_in(cache) == []


def test_a_wrong_part_fails_the_checksum_and_leaves_no_file(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch, wrong={3: b"x" * 500})  # the right size, wrong bytes
    with pytest.raises(BackendError, match=f"not {fake.size} bytes with sha256 {fake.sha256}; reinstall"):
        assembled_file(fake)
    assert files_in(cache) == []


def test_an_interrupted_assembly_leaves_no_file(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch)
    real, calls = models._append, []

    def interrupted(part, out, digest):
        calls.append(part)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(part, out, digest)

    monkeypatch.setattr(models, "_append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assembled_file(fake)
    assert files_in(cache) == []
    monkeypatch.setattr(models, "_append", real)
    assert hashlib.sha256(assembled_file(fake).read_bytes()).hexdigest() == fake.sha256


def test_a_cache_directory_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    fake = fake_model(tmp_path, monkeypatch)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(BackendError, match=r"cannot write its file to the cache directory .*set XDG_CACHE_HOME"):
        assembled_file(fake)


def test_a_full_disk_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch, cache):
    fake = fake_model(tmp_path, monkeypatch)

    def full(part, out, digest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "_append", full)
    with pytest.raises(BackendError, match=r"No space left on device\); it needs 0 MB there"):
        assembled_file(fake)
    assert files_in(cache) == []


def test_the_command_line_reports_a_missing_extra_without_a_traceback(tmp_path, monkeypatch, cache, capsys):
    fake = fake_model(tmp_path, monkeypatch)
    missing = AssembledModel(**{**QWEN.__dict__, "parts": (*fake.parts, Part("no_such_part_pkg", "x.bin", 1))})
    monkeypatch.setitem(models.ASSEMBLED, QWEN.name, missing)
    program = tmp_path / "p.ttcl"
    program.write_text('model policy = llama("qwen2.5-coder-0.5b", temperature=0)\nprogram main = sample(1) |> vote\n')
    code = main(["cost", str(program)])
    err = capsys.readouterr().err
    assert code != 0 and "pip install 'ttcl[qwen]'" in err and "Traceback" not in err
    code = main(["run", str(program), "-q", "What is 3 + 4?"])
    err = capsys.readouterr().err
    assert code != 0 and "pip install 'ttcl[qwen]'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def qwen_path():
    if not has_extra():
        pytest.skip("the qwen extra is not installed (pip install 'ttcl[qwen]')")
    return resolve_model_path("qwen2.5-coder-0.5b")


def test_the_assembled_file_has_the_published_size_and_sha256(qwen_path):
    digest = hashlib.sha256()
    with open(qwen_path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert os.path.getsize(qwen_path) == 491_400_064
    assert digest.hexdigest() == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert models.facts_from_path("qwen2.5-coder-0.5b").architecture == "qwen2"


@pytest.mark.slow
def test_ttcl_run_on_qwen_answers_an_easy_sum(qwen_path, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    program = tmp_path / "qwen.ttcl"
    program.write_text(
        'model policy = llama("qwen2.5-coder-0.5b", temperature=0, max_tokens=64)\nprogram main = sample(1) |> vote\n'
    )
    code = main(["run", str(program), "-q", "What is 3 + 4?"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].strip() == "answer: 7"


@pytest.mark.slow
def test_qwen_gives_a_request_alone_what_it_gives_in_a_batch(qwen_path):
    # its K-quant matmuls round differently from some number of rows on (8 on the development
    # machine): the backend measures that and keeps every decode call below it
    pytest.importorskip("llama_cpp")
    from ttcl.backends.base import GenerationRequest, Message, SamplingParams
    from ttcl.backends.llama import LlamaBackend

    def request(content, prefix="", **params):
        return GenerationRequest(
            messages=(Message(role="user", content=content),), prefix=prefix, params=SamplingParams(**params)
        )

    backend = LlamaBackend(qwen_path, n_ctx=512, n_seq_max=16)
    requests = [
        request("What is 7 + 5?", prefix=prefix, temperature=t, seed=i, max_tokens=10, logprobs=True)
        for i, (prefix, t) in enumerate([("", 0.8), ("7 + 5", 0.8), ("The answer is", 0.0), ("", 0.0)])
    ] + [request("Name a fruit.", temperature=0.8, seed=s, max_tokens=10, logprobs=True) for s in range(6)]
    batched = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.logprobs for g in batched] == [g.logprobs for g in alone]  # bit for bit
