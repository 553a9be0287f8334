"""Compile-time figures (issue 2's targets): parse + check + lower of every stdlib and example
program after the grammar is loaded (target < 20 ms), and the wall time of a whole
`ttcl check FILE` process (target < 0.5 s).

    python bench/compile.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from timing import repeat

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 30


def compile_times() -> list[tuple[str, float]]:
    from ttcl.parser import grammar_parser
    from ttcl.program import check_programs, check_source

    def compile_file(text: str, path: str) -> None:
        check_programs(check_source(text, path))

    grammar_parser()  # the grammar is loaded once per process; the target excludes it
    rows = []
    for path in sorted((ROOT / "stdlib").glob("*.ttcl")) + sorted((ROOT / "programs").glob("*.ttcl")):
        text = path.read_text()
        # one warm-up call: imported stdlib modules are cached
        samples = repeat(compile_file, text, str(path), times=REPEATS, warmup=1)
        rows.append((str(path.relative_to(ROOT)), statistics.median(samples)))
    return rows


def startup_times(runs: int = 5) -> list[float]:
    return repeat(
        subprocess.run,
        [sys.executable, "-m", "ttcl", "check", str(ROOT / "programs/per_difficulty.ttcl")],
        check=True,
        capture_output=True,
        times=runs,
    )


def main() -> None:
    print(f"parse + check + lower, median of {REPEATS} (target < 20 ms):")
    rows = compile_times()
    for name, seconds in rows:
        print(f"  {name:<34} {seconds * 1000:6.2f} ms")
    print(f"  {'slowest':<34} {max(s for _, s in rows) * 1000:6.2f} ms")
    times = startup_times()
    print(
        f"`ttcl check programs/per_difficulty.ttcl`, whole process (target < 0.5 s): "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} runs"
    )


if __name__ == "__main__":
    main()
