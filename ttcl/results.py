"""What a run returns: candidates, the chosen answer, measured cost and the trace (pydantic);
and the files results are kept in (`ttcl run -o`, `ttcl eval`'s results file): what identifies a
result (a hash of its question and of its program), a torn last line cut off with a backup, an
output path checked before any work is done, and `ttcl run`'s results read back (`load_results`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttcl.errors import UsageError
from ttcl.source import NotJSON, parse_json


class Candidate(BaseModel):
    """One attempt at the question: its text split into steps, its answer and its scores."""

    model_config = ConfigDict(extra="forbid")

    id: int
    node: int  # the IR node that produced it
    text: str
    steps: list[str]
    answer: str | None
    scores: dict[str, list[float]] = Field(default_factory=dict)  # verifier -> per-step scores
    score: float | None = None  # the aggregated score of the verifier that last ranked it
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int | None = None
    # the mean log-probability of its generated tokens, where the program asked for them (it
    # scores with the `confidence` verifier); None otherwise, and in records written before
    mean_logprob: float | None = None
    cut: bool = False  # Ctrl-C came while it was being generated: its text is what it had by then


class NodeCost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str
    generations: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    verifier_prompt_tokens: int = 0
    flops: float | None = None  # measured (see `Cost.flops`)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens + self.verifier_prompt_tokens


class Cost(BaseModel):
    """Measured cost, in total and per IR node."""

    model_config = ConfigDict(extra="forbid")

    generations: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    verifier_prompt_tokens: int = 0
    # FLOPs of the tokens processed: counted by position where the backend can
    # (`ttcl.facts.counted_flops`), else 2·N per token, else unknown (None)
    flops: float | None = None
    per_node: dict[int, NodeCost] = Field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens + self.verifier_prompt_tokens


class TraceEvent(BaseModel):
    """One thing that happened: a node finishing, a batch sent, a verifier pass, an
    `adaptive` stage stopping (how many it drew and why)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["node", "batch", "score", "difficulty", "stop", "adaptive"]
    node: int | None = None
    op: str | None = None
    detail: dict = Field(default_factory=dict)


class Result(BaseModel):
    """The outcome of running a program on one question."""

    model_config = ConfigDict(extra="forbid")

    question: str
    answer: str | None
    text: str | None = None  # the chosen candidate's full text
    candidates: list[Candidate] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    stopped: Literal["budget", "time", "interrupted"] | None = None  # why it ended early
    bin: int | None = None  # the difficulty bin, for programs with a match
    seed: int = 0
    elapsed_s: float = 0.0
    trace: list[TraceEvent] = Field(default_factory=list)


# ---- results files -----------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def question_hash(question: str) -> str:
    """What identifies a question in a results file: a hash of its text."""
    return _digest(question)


def program_hash(doc: BaseModel) -> str:
    """What identifies a program in a results file: a hash of its compiled IR document
    (`Program.ir`, with its parameters bound) in canonical JSON, less what does not change
    what it runs: source positions (spans, and the line:col of each `origin`), the source text
    itself (a comment) and the version of TTCL that compiled it. Another model, prompt,
    parameter or strategy is another hash."""
    data = doc.model_dump(mode="json", exclude={"ttcl_version", "sources"})
    for node in data.get("nodes", []):
        node.pop("span", None)
        node["origin"] = [re.sub(r"@\d+:\d+$", "", o) for o in node.get("origin", [])]
    return _digest(json.dumps(data, sort_keys=True, separators=(",", ":")))


def read_lines(path: str | Path) -> tuple[list[tuple[int, str]], int | None]:
    """The nonblank lines of a JSONL results file, numbered from 1, and where its torn last line
    starts (a byte offset; None if there is none). The last line is torn when it is not valid
    JSON (or not UTF-8): what a process killed in the middle of a write leaves; it is not among
    the lines. A missing file has no lines."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    raw: list[tuple[int, int, bytes]] = []
    offset = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            raw.append((number, offset, line))
        offset += len(line) + 1
    torn = None
    if raw and not _is_json(raw[-1][2]):
        torn = raw.pop()[1]
    lines = []
    for number, _, line in raw:
        try:
            lines.append((number, line.decode("utf-8")))
        except UnicodeDecodeError:
            raise UsageError(f"{path}:{number}: not UTF-8; is this a results file?") from None
    return lines, torn


def _is_json(line: bytes) -> bool:
    try:
        parse_json(line)
    except NotJSON:
        return False
    return True


def load_results(path: str | Path) -> dict[int, Result]:
    """The results in a file that `ttcl run --questions` wrote (`-o PATH`, or its standard
    output), by question index in question order. Each line holds a result without its
    candidates and trace, which the file does not keep. A question that failed (its line's
    "error" says why) has no result; a question run again by `--resume` has its last line's.
    A torn last line (a write cut short) is left out, as `--resume` leaves it."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such results file")
    lines, _ = read_lines(path)
    results: dict[int, Result] = {}
    for number, text in lines:
        try:
            line = parse_json(text)
        except NotJSON:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("index"), int) or "answer_expected" not in line:
            raise UsageError(f"{path}:{number}: not a line of `ttcl run --questions` results")
        if line.get("error") is None:
            results[line["index"]] = _result_of(line, f"{path}:{number}")
    return dict(sorted(results.items()))


def _result_of(line: dict, where: str) -> Result:
    """The `Result` in a results line, less what says what it is a result of (its index, hashes
    and expected answer)."""
    try:
        return Result.model_validate({k: v for k, v in line.items() if k in Result.model_fields})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise UsageError(f"{where}: not a result: {field}: {first['msg']}") from None


def cut_torn_line(path: str | Path, at: int) -> Path:
    """Cut the file's torn last line (from byte `at`), first copying all of its bytes to
    PATH.torn (or PATH.torn.1, ...) so nothing is lost; returns the copy's path."""
    path = Path(path)
    backup, n = path.with_name(path.name + ".torn"), 0
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.torn.{n}")
    try:
        shutil.copyfile(path, backup)
        with open(path, "r+b") as f:
            f.truncate(at)
    except OSError as e:
        raise UsageError(f"{path}: cannot cut its torn last line: {e.strerror or e}") from None
    return backup


def end_line(path: str | Path) -> None:
    """End the file's last line, if it has one that is not ended, so appends start a line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
        with open(path, "ab") as f:
            f.write(b"\n")
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None


def check_writable(outputs: dict[str, str | Path | None]) -> None:
    """Refuse, before any work is done, an output that cannot be written: its directory missing
    or not a directory, the path a directory, a file that cannot be opened for writing, or two
    options naming one file. `outputs` maps each option (say "--trace") to its path or None.
    An existing file is opened for appending and left as it was; a new one is created and
    removed again."""
    seen: dict[str, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} both name {value}; give each its own file")
        seen[key] = option
        where = f"{option} {value}: cannot write"
        parent = path.parent
        if path.is_dir():
            raise UsageError(f"{where}: it is a directory")
        if not parent.exists():
            raise UsageError(f"{where}: the directory {parent} does not exist")
        if not parent.is_dir():
            raise UsageError(f"{where}: {parent} is not a directory")
        try:
            if path.exists():
                if path.is_file():
                    open(path, "ab").close()
                elif not os.access(path, os.W_OK):  # a device or a pipe: opening could block
                    raise PermissionError(13, "Permission denied")
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.unlink(path)
        except FileExistsError:
            pass  # made meanwhile: whoever made it can say
        except OSError as e:
            raise UsageError(f"{where}: {e.strerror or e}") from None
