"""Wall-time measurement shared by the benchmarks, all of it on `time.perf_counter`.

    from timing import Stopwatch, repeat

    with Stopwatch() as clock:      # one block
        work()
    clock.seconds

    repeat(work, arg, times=30, warmup=1)  # work(arg) once untimed, then the seconds of 30 calls

A script in bench/ imports it as `timing`: Python puts the script's own directory first on
sys.path. Warm-up that is not the timed call itself (a short generation before a long one, a
reset after it) stays in the script, before its `with Stopwatch()` block.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Stopwatch:
    """The wall time of a `with` block: `seconds` is set when the block ends (also when it
    raises; the exception goes on)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.seconds: float | None = None

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def repeat(fn: Callable[..., object], *args, times: int, warmup: int = 0, **kwargs) -> list[float]:
    """Call `fn(*args, **kwargs)` `warmup` times untimed, then `times` times: the wall time of
    each timed call."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    samples = []
    for _ in range(times):
        with Stopwatch() as clock:
            fn(*args, **kwargs)
        samples.append(clock.seconds)
    return samples
