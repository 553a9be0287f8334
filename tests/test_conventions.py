"""What every command shares: each option says what it does, NO_COLOR means no escape
sequences at all, and the shell completes commands and options."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttcl.cli.app import SHELLS, _parser

ROOT = Path(__file__).resolve().parent.parent


def every_argument(parser: argparse.ArgumentParser, command: str = "ttcl"):
    """(command, argument, help) for every option and positional of `parser` and of each of
    its subcommands, and (command, subcommand, help) for each subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield command, name, helps.get(name)
                yield from every_argument(sub, f"{command} {name}")
        elif action.help is not argparse.SUPPRESS:  # a hidden alias, such as train-prm's --out
            yield command, "/".join(action.option_strings) or action.dest, action.help


def test_every_option_of_every_command_has_help():
    arguments = list(every_argument(_parser()))
    assert len(arguments) > 100  # the walk reached the subcommands' options
    missing = [f"{command} {name}" for command, name, help in arguments if not (help or "").strip()]
    assert missing == []


def ttcl(*argv: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "ttcl", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environ, **env},
        timeout=120,
    )


COLOURED = [
    ("check", "tests/golden/errors/unknown_name.ttcl"),  # an error: bold red
    ("doc", "sample"),  # bold cyan names, a table
    ("cost", "programs/bon.ttcl", "--budget", "64"),
]


@pytest.mark.parametrize("argv", COLOURED)
def test_no_color_means_no_escape_sequences(argv):
    forced = ttcl(*argv, FORCE_COLOR="1")  # colour as at a terminal, though piped
    assert "\x1b[" in forced.stdout + forced.stderr  # so the test below can fail
    plain = ttcl(*argv, FORCE_COLOR="1", NO_COLOR="1")
    assert plain.returncode == forced.returncode and plain.stdout + plain.stderr
    assert "\x1b" not in plain.stdout + plain.stderr


def test_every_console_is_made_by_present():
    """Only `present.console` makes consoles, so NO_COLOR reaches every one of them."""
    makers = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "ttcl").rglob("*.py"))
        if path.name != "present.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bConsole\(", line)
    ]
    assert makers == []


def completions(line: str, tmp_path: Path) -> list[str]:
    """What the shell is offered for `line` with the cursor at its end, asked the way the
    hook that `ttcl completion` prints asks (argcomplete's environment protocol)."""
    answer = tmp_path / "completions"
    done = ttcl(
        _ARGCOMPLETE="1",
        COMP_LINE=line,
        COMP_POINT=str(len(line)),
        _ARGCOMPLETE_STDOUT_FILENAME=str(answer),
    )
    assert done.returncode == 0, done.stderr
    return sorted(word.strip() for word in answer.read_text().split("\v"))


def test_the_shell_completes_commands_and_options(tmp_path):
    assert completions("ttcl co", tmp_path) == ["compile", "completion", "cost"]
    assert completions("ttcl train-prm --ou", tmp_path) == ["--output"]  # not the hidden --out
    assert completions("ttcl fmt --d", tmp_path) == ["--diff"]
    assert [w for w in completions("ttcl completion ", tmp_path) if not w.startswith("-")] == sorted(SHELLS)


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_prints_the_shell_hook(shell):
    done = ttcl("completion", shell)
    assert done.returncode == 0 and "_ARGCOMPLETE" in done.stdout and "ttcl" in done.stdout
