"""Questions in parallel threads, for models behind a server.

The executor runs many questions in lockstep: each batch waits for its slowest request, which
is right for a local model (one batch is one llama.cpp call) and wasteful for a server, which
batches requests from many clients as they come (vLLM's and SGLang's continuous batching).
So where every model a program uses is served, each question gets an executor of its own in
a thread, and sends its next requests as soon as its last ones are answered; the backend
keeps at most `concurrency` HTTP requests in flight over all of them.

Each thread reads its models through a session of the shared backend (`session()`), so the
cost of a batch, read as the change in the session's counters, is that question's alone.
Ctrl-C stops every thread at once, abandoning the requests in flight. A failure in one
question's thread (a server's error, or any other exception) stops the others more gently:
the requests they have in flight are let finish, since the server is already computing them
and a question they complete is kept, but no thread starts another. Finished questions are
reported as they finish, and unfinished ones as interrupted. Then a failure is raised as
itself (the first one, if several threads failed), so only a real Ctrl-C reads as an
interruption; results already reported stay reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import networkx as nx

from ttcl.backends.base import Backend, as_backend
from ttcl.results import Result
from ttcl.runtime.executor import Executor, Limits


def concurrent_backends(backends: list) -> bool:
    """Whether questions may run in threads: every backend is `concurrent` (a server's)."""
    return bool(backends) and all(as_backend(b).concurrent for b in backends)


def run_concurrently(
    graph: nx.DiGraph,
    backends: Callable[[str], object],
    questions: list[tuple[str, str | None]],
    seed: int,
    limits: Limits,
    workers: int,
    thresholds: list[float] | None = None,
    on_result: Callable[[int, Result], None] | None = None,
) -> list[Result]:
    """Run each question through its own `Executor`, `workers` at a time; results in order,
    each reported to `on_result` (from one thread at a time) as it finishes."""
    cancel = threading.Event()  # Ctrl-C: sessions abandon what is in flight
    lock = threading.Lock()
    results: list[Result | None] = [None] * len(questions)
    failures: list[BaseException] = []  # the errors that stopped question threads, first first

    def report(index: int, result: Result) -> None:
        with lock:
            results[index] = result
            if on_result is not None:
                on_result(index, result)

    def one(index: int) -> None:
        if cancel.is_set() or failures:
            return
        sessions: dict[str, Backend] = {}

        def session(name: str) -> Backend:  # the executor looks its model up before each batch
            if failures:  # another question failed: start no request (in-flight ones finish)
                raise KeyboardInterrupt
            if name not in sessions:
                sessions[name] = as_backend(backends(name)).session(cancel)
            return sessions[name]

        try:
            Executor(graph, session, thresholds, lambda _, r: report(index, r)).run([questions[index]], seed, limits)
        except KeyboardInterrupt:  # a late Ctrl-C, or the stop after another question's failure
            if not failures:
                cancel.set()
        except BaseException as e:  # a TTCLError or not: raised below as itself, not as "interrupted"
            with lock:
                failures.append(e)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ttcl-question")
    futures = [pool.submit(one, i) for i in range(len(questions))]
    try:
        pending = set(futures)
        while pending:  # short waits, so Ctrl-C reaches this thread
            _, pending = wait(pending, timeout=0.2)
    except KeyboardInterrupt:
        cancel.set()
        wait(futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise failures[0]
    for i, (question, _) in enumerate(questions):
        if results[i] is None:  # never started: Ctrl-C came first
            report(i, Result(question=question, answer=None, stopped="interrupted", seed=seed))
    return results  # type: ignore[return-value]
