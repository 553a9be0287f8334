"""Every code block of README.md and docs/*.md runs as written.

The blocks of one Markdown file run in order in a scratch directory holding copies of
programs/ and heads/, so a later block may use what an earlier one wrote. Its ```python
blocks share one namespace, so a later one builds on an earlier one (one that is not slow,
on none that is). A ```console block runs each `$ ttcl ...` or `$ python ...` command and compares what it
prints with the lines shown under it (`...` stands for any text; a line of its own, for any
lines). A ```repl block is a session: its first line `$ ttcl repl [FILE]` starts it, its
`ttcl> ` lines (and `  ... ` continuation lines) are what is typed, and the rest is compared
with what the session prints, as in a console block. A ```bash or ```sh block runs each of
its commands. A ```ttcl block is checked as `ttcl check` checks a file. Blocks shown, not run, are ```text, ```json or ```jsonl, and none
of them may show a command.

An HTML comment just before a block says what the test cannot see for itself:

    <!-- doc-test: skip (needs a GPU) -->   not run; reported as skipped, with the reason
    <!-- doc-test: slow -->                 runs a real model: under pytest's `slow` marker
    <!-- doc-test: exit 1 -->               the exit status its commands end with (else 0)
    <!-- doc-test: expect "answer:" -->     output that varies (a model's): only these
                                            fragments of what is shown, in order, are compared
    <!-- doc-test: file qs.jsonl -->        the block is a file later blocks use

Options combine with `;` (a reason may hold one). A ```ttcl block whose first line is `# file: NAME` is that file too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

from ttcl.errors import TTCLError
from ttcl.program import check_programs, check_source
from ttcl.runtime import answers, verifiers

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "console", "repl", "bash", "sh", "ttcl"}
SHOWN = {"text", "json", "jsonl"}
COMMANDS = {"ttcl", "python"}  # what a command block may run
COPIED = ("programs", "heads")  # what the blocks name, copied so that none can change the repository

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*doc-test:(?P<options>.*?)-->$")
FILE_LINE = re.compile(r"^#\s*file:\s*(\S+)\s*$")
# a line that shows a command: a prompt, or a command's name first
COMMAND_LINE = re.compile(r"^(\$ |(ttcl|python3?|pip|vllm|curl)( |$)|\S+\.sh( |$))")


@dataclass
class Block:
    """A fenced code block and what its marker says about it."""

    doc: str  # the Markdown file, relative to the repository
    line: int  # of the opening fence
    lang: str
    text: str
    skip: str | None = None
    slow: bool = False
    exit: int = 0
    expect: list[str] = field(default_factory=list)
    file: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def read_blocks(text: str, doc: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, with their markers applied, and the problems
    found: a marker that marks no block or says what the test does not know."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    marker: tuple[int, str] | None = None  # (line, options) of a marker waiting for its block
    i = 0
    while i < len(lines):
        stripped, opening = lines[i].strip(), FENCE.match(lines[i])
        if found := MARKER.match(stripped):
            if marker is not None:
                problems.append(f"{doc}:{marker[0]}: a doc-test marker must come just before a block")
            marker = (i + 1, found["options"])
            problems += [f"{doc}:{i + 1}: {p}" for p in apply_marker(Block(doc, i + 1, "", ""), marker[1])]
        elif opening:
            end = _closing(lines, i, opening["fence"])
            body = "\n".join(line[len(opening["indent"]) :] for line in lines[i + 1 : end])
            block = Block(doc, i + 1, (opening["info"].split() or [""])[0], body + "\n")
            if marker is not None:
                apply_marker(block, marker[1])  # its problems were found at the marker
            blocks.append(block)
            marker, i = None, end
        elif stripped and marker is not None:
            problems.append(f"{doc}:{marker[0]}: a doc-test marker must come just before a block")
            marker = None
        i += 1
    if marker is not None:
        problems.append(f"{doc}:{marker[0]}: a doc-test marker must come just before a block")
    return blocks, problems


def _closing(lines: list[str], start: int, fence: str) -> int:
    """The line that closes the fence opened at `start`: backticks alone, at least as many."""
    for j in range(start + 1, len(lines)):
        if lines[j].strip().startswith(fence) and not lines[j].strip(" `"):
            return j
    return len(lines)


def apply_marker(block: Block, options: str) -> list[str]:
    """Set on the block what a marker's options say; the options it does not understand."""
    problems = []
    # options are split at the semicolons outside a reason's parentheses and expect's quotes
    for option in filter(None, (o.strip() for o in re.findall(r'(?:\([^)]*\)|"[^"]*"|[^;])+', options))):
        if m := re.fullmatch(r"skip \((.+)\)", option):
            block.skip = m[1]
        elif option == "slow":
            block.slow = True
        elif m := re.fullmatch(r"exit (\d+)", option):
            block.exit = int(m[1])
        elif re.fullmatch(r'expect( "[^"]+")+', option):
            block.expect = re.findall(r'"([^"]+)"', option)
        elif m := re.fullmatch(r"file ([\w.-]+)", option):
            block.file = m[1]
        else:
            problems.append(f"unknown doc-test option {option!r} (skip (REASON), slow, exit N, expect, file NAME)")
    return problems


def problems_of(block: Block) -> list[str]:
    """What is wrong with a block as the test reads it: a language it neither runs nor shows,
    or a command in a block that is only shown."""
    if block.lang not in RUN | SHOWN:
        return [
            f"{block.id}: a block of language {block.lang or 'none'!r}: a block that runs is "
            f"{', '.join(sorted(RUN))}; one only shown is {', '.join(sorted(SHOWN))}"
        ]
    if block.lang in SHOWN and not block.file and any(COMMAND_LINE.match(line) for line in block.text.splitlines()):
        return [f"{block.id}: a {block.lang} block shows a command: make it console (or bash) so that it runs"]
    applies = {"expect": {"console"}, "exit": {"console", "repl", "bash", "sh", "ttcl"}, "slow": RUN, "skip": RUN}
    return [
        f"{block.id}: `{option}` does not apply to a {block.lang} block"
        for option, languages in applies.items()
        if getattr(block, option) and block.lang not in languages
    ]


def file_name(block: Block) -> str | None:
    """The file a block is: named by its marker, or by a ```ttcl block's first line."""
    first = FILE_LINE.match(block.text.split("\n", 1)[0]) if block.lang == "ttcl" else None
    return block.file or (first[1] if first else None)


ALL = [read_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) for path in DOCS]
BLOCKS = [block for blocks, _ in ALL for block in blocks]
RUNNABLE = [block for block in BLOCKS if block.lang in RUN]


def test_every_block_runs_or_says_why_not():
    problems = [p for _, found in ALL for p in found] + [p for block in BLOCKS for p in problems_of(block)]
    for doc in {block.doc for block in BLOCKS}:
        names = [name for block in BLOCKS if block.doc == doc and (name := file_name(block))]
        problems += [f"{doc}: two blocks are the file {name}" for name in sorted(set(names)) if names.count(name) > 1]
    assert not problems, "\n".join(problems)
    assert sum(b.lang == "python" for b in BLOCKS) >= 5 and sum(b.lang == "console" for b in BLOCKS) >= 5


def test_a_marker_says_what_the_test_cannot_see_and_nothing_else():
    text = (
        '<!-- doc-test: slow; exit 1; expect "a" "b c" -->\n```console\n$ ttcl x\n```\n\n'
        "<!-- doc-test: skip (needs a GPU; or hours) -->\n\n```bash\nttcl y\n```\n"
        "<!-- doc-test: sloow -->\ntext\n```\n$ ttcl z\n```\n"
    )
    (first, second, third), problems = read_blocks(text, "x.md")
    assert (first.slow, first.exit, first.expect, first.skip) == (True, 1, ["a", "b c"], None)
    assert second.skip == "needs a GPU; or hours" and not second.slow and second.text == "ttcl y\n"
    assert problems == [
        "x.md:11: unknown doc-test option 'sloow' (skip (REASON), slow, exit N, expect, file NAME)",
        "x.md:11: a doc-test marker must come just before a block",
    ]
    assert problems_of(third) == [
        "x.md:13: a block of language 'none': a block that runs is bash, console, python, repl, sh, ttcl; "
        "one only shown is json, jsonl, text"
    ]
    assert problems_of(Block("x.md", 1, "text", "$ ttcl run p.ttcl\n")) != []
    assert problems_of(Block("x.md", 1, "text", "ttcl> bon(4, prm)\n")) == []  # a session, not a command
    assert problems_of(Block("x.md", 1, "python", "x = 1\n", expect=["1"])) == [
        "x.md:1: `expect` does not apply to a python block"
    ]
    assert read_blocks("```text\nx\n```\n<!-- doc-test: slow -->\n", "y.md")[1] == [
        "y.md:4: a doc-test marker must come just before a block"
    ]


# ---- running them -------------------------------------------------------------------------------

ENV = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"} | {
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this environment's ttcl
    "NO_COLOR": "1",
    "COLUMNS": "80",  # rich's width where no terminal says
    "PYTHONUNBUFFERED": "1",  # stdout and stderr in the order they were written
    "OMP_WAIT_POLICY": "PASSIVE",  # a model loaded there while this process holds one: no spinning
}


@dataclass
class Workdir:
    """Where one Markdown file's blocks run, and the namespace its Python blocks share."""

    path: Path
    namespace: dict = field(default_factory=dict)
    ran: set[int] = field(default_factory=set)  # the lines of the Python blocks run so far


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """A scratch directory per Markdown file, holding copies of what its blocks name and the
    files its blocks are. What the blocks register (verifiers, answer kinds) is dropped after."""
    made: dict[str, Workdir] = {}
    saved = dict(verifiers.REGISTERED), dict(answers.REGISTERED)

    def workdir(doc: str) -> Workdir:
        if doc not in made:
            path = tmp_path_factory.mktemp(Path(doc).stem)
            for name in COPIED:
                shutil.copytree(ROOT / name, path / name)
            for block in BLOCKS:
                if block.doc == doc and (name := file_name(block)):
                    (path / name).write_text(block.text, encoding="utf-8")
            made[doc] = Workdir(path)
        return made[doc]

    yield workdir
    for registry, before in zip((verifiers.REGISTERED, answers.REGISTERED), saved):
        registry.clear()
        registry.update(before)


def marked(block: Block):
    marks = [pytest.mark.skip(reason=block.skip)] if block.skip else []
    return pytest.param(block, id=block.id, marks=marks + [pytest.mark.slow] * block.slow)


@pytest.mark.parametrize("block", [marked(block) for block in RUNNABLE])
def test_the_block_runs_as_written(block, workdirs, monkeypatch):
    work = workdirs(block.doc)
    monkeypatch.chdir(work.path)
    run = {
        "python": run_python,
        "console": run_console,
        "repl": run_repl,
        "bash": run_lines,
        "sh": run_lines,
        "ttcl": check_ttcl,
    }
    run[block.lang](block, work)


def run_python(block: Block, work: Workdir) -> None:
    """Run the block in the namespace of the file's earlier Python blocks, running first those
    that have not run (a test chosen alone); a block that is not slow builds on none that is."""
    for earlier in RUNNABLE:
        if earlier.doc == block.doc and earlier.lang == "python" and earlier.line < block.line:
            if earlier.line not in work.ran and not earlier.skip and block.slow >= earlier.slow:
                execute(earlier, work)
    execute(block, work)


def execute(block: Block, work: Workdir) -> None:
    work.ran.add(block.line)
    code = "\n" * block.line + block.text  # a traceback then names the Markdown file's own lines
    exec(compile(code, block.doc, "exec"), work.namespace)


def run_console(block: Block, work: Workdir) -> None:
    """Run each `$ ` command; compare its output with the lines shown under it."""
    commands = console_commands(block)
    outputs = [shell(command, block, work) for command, _ in commands]
    if block.expect:
        expect(block, "".join(shown for _, shown in commands), "".join(outputs))
        return
    for (command, shown), output in zip(commands, outputs):
        if shown.strip():
            assert reads_as(shown, output), f"{block.id}: `{command}` shows\n{shown}\nbut printed\n{output}"


def console_commands(block: Block) -> list[tuple[str, str]]:
    """(command, the output shown under it) for each `$ ` line of a console block; a line
    ending in a backslash goes on on the next."""
    commands: list[list[str]] = []
    for line in block.text.splitlines():
        if commands and commands[-1][0].endswith("\\") and not commands[-1][1]:
            commands[-1][0] += "\n" + line
        elif line.startswith("$ "):
            commands.append([line[2:], ""])
        else:
            assert commands, f"{block.id}: a console block starts with a `$ ` command"
            commands[-1][1] += line + "\n"
    return [(command, shown) for command, shown in commands]


def run_repl(block: Block, work: Workdir) -> None:
    """Type the session's `ttcl> ` and `  ... ` lines into the command on its first line;
    compare what it prints with the other lines."""
    lines = block.text.splitlines()
    assert lines and lines[0].startswith("$ ttcl repl"), f"{block.id}: a repl block starts with `$ ttcl repl`"
    typed = [line[len("ttcl> ") :] for line in lines if line.startswith(("ttcl> ", "  ... "))]
    shown = [line for line in lines[1:] if not line.startswith(("ttcl> ", "  ... "))]
    output = shell(lines[0][2:], block, work, typed="".join(line + "\n" for line in typed))
    assert reads_as("\n".join(shown), output), f"{block.id}: the session shows\n{block.text}\nbut printed\n{output}"


def run_lines(block: Block, work: Workdir) -> None:
    """Run each command of a bash block (comments and blank lines aside)."""
    for command in re.sub(r"\\\n", " ", block.text).splitlines():
        if command.strip() and not command.lstrip().startswith("#"):
            shell(command, block, work)


def shell(command: str, block: Block, work: Workdir, typed: str = "") -> str:
    """What a command prints (stdout and stderr, as a terminal shows them, with the repository's
    own paths relative, as from its root), given `typed` as its input; it must end with the
    block's exit status."""
    name = next((word for word in command.split() if not re.match(r"\w+=", word)), "")
    assert name in COMMANDS, f"{block.id}: runs {name!r}; only ttcl and python run here: mark it skip (REASON)"
    done = subprocess.run(
        command,
        shell=True,
        cwd=work.path,
        env=ENV,
        input=typed,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800 if block.slow else 300,
    )
    output = done.stdout.replace(f"{ROOT}{os.sep}", "")
    assert done.returncode == block.exit, f"{block.id}: `{command}` exited {done.returncode}:\n{output[-4000:]}"
    return output


def expect(block: Block, shown: str, output: str) -> None:
    """Each fragment the marker names is shown in the block, and printed, in that order."""
    at = 0
    for fragment in block.expect:
        assert fragment in shown, f"{block.id}: expects {fragment!r}, which the block does not show"
        found = output.find(fragment, at)
        assert found >= 0, f"{block.id}: {fragment!r} was not printed (after the fragments before it):\n{output}"
        at = found + len(fragment)


def reads_as(shown: str, output: str) -> bool:
    """Whether the output reads as the block shows it, line by line (trailing spaces aside),
    `...` standing for any text and a line of `...` for any lines."""
    pattern = "".join(
        r"(?:.*\n)*?" if line == "..." else ".*".join(map(re.escape, line.split("..."))) + r"\n"
        for line in _lines(shown)
    )
    return re.fullmatch(pattern, "".join(line + "\n" for line in _lines(output))) is not None


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def check_ttcl(block: Block, work: Workdir) -> None:
    """Check the block as `ttcl check` checks a file: its exit status is the block's."""
    status, message = 0, ""
    try:
        check_programs(check_source(block.text, file_name(block)))
    except TTCLError as e:
        status, message = e.exit_code, e.render()
    assert status == block.exit, f"{block.id}: checking it ends with {status}:\n{message}"


def test_output_reads_as_shown_with_ellipses():
    assert reads_as("answer: ...\n...\ntotal 3\n", "answer: 5\nrow\nrow\ntotal 3   \n\n")
    assert reads_as("a\n...\nb\n", "a\nb\n")
    assert not reads_as("answer: 5\n", "answer: 3\n")
    assert not reads_as("a\nb\n", "a\nb\nc\n")
