"""`ttcl serve FILE`: a program as an OpenAI-compatible model (`ttcl/serve.py` is the server).

It listens first (so a port in use is one line at once), loads the program's models (so the
first request does not pay for it, and a missing model file is an error before serving), then
answers until Ctrl-C, which stops it with "stopped" and exit status 130.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from ttcl.cli.present import err, params_of


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` command; its FILE, --program, --param and --set are the caller's to add."""
    from ttcl.serve import API_KEY_ENV, DEFAULT_HOST, MAX_BODY

    s = subparsers.add_parser(
        "serve",
        help="serve a program as an OpenAI-compatible model (/v1/chat/completions)",
        description="Serve a program as an OpenAI-compatible model: each request's last user message is "
        f"the question, and concurrent requests share batches. Clients must send the key in ${API_KEY_ENV} "
        "as `Authorization: Bearer KEY` when it is set.",
    )
    s.add_argument("--host", default=DEFAULT_HOST, help=f"the address to listen on (default {DEFAULT_HOST})")
    s.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free port)")
    s.add_argument("--name", metavar="MODEL", help="the model name clients send (default: the file's stem)")
    s.add_argument("--seed", type=int, default=0, help="the seed of requests without one (default 0)")
    s.add_argument("--time-limit", type=float, metavar="SECONDS", help="per request, from its arrival")
    s.add_argument("--max-batch", type=int, default=8, metavar="N", help="questions run together at most (default 8)")
    s.add_argument(
        "--batch-window",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="how long a batch waits for more questions to join it when the server is idle (default 0.01)",
    )
    s.add_argument(
        "--max-queue", type=int, default=64, metavar="N", help="questions waiting at most; more get 503 (default 64)"
    )
    s.add_argument(
        "--max-body", type=int, default=MAX_BODY, metavar="BYTES", help=f"a request's size at most (default {MAX_BODY})"
    )
    s.set_defaults(run=serve_command)
    return s


def serve_command(args) -> int:
    """Serve until Ctrl-C; returns 130 then."""
    from ttcl.program import load
    from ttcl.serve import API_KEY_ENV, Server

    program = load(args.file, args.program, params_of(args), args.set)
    server = Server(
        program,
        args.name or Path(args.file).stem,
        args.host,
        args.port,
        seed=args.seed,
        time_limit=args.time_limit,
        max_batch=args.max_batch,
        window=args.batch_window,
        max_queue=args.max_queue,
        max_body=args.max_body,
        api_key=os.environ.get(API_KEY_ENV),
        log=lambda line: err.print(line, markup=False),
    )
    try:
        with err.status(f"loading the models of {program.name}"):
            lookup = program.backend_lookup(None)
            for name in program.ir.models:
                lookup(name)
        if server.api_key is None and not _loopback(args.host):
            err.print(f"warning: listening on {args.host} with no API key; set ${API_KEY_ENV} to require one")
        err.print(
            f"serving {program.name} ({program.ir.generations} generations) as model `{server.name}` "
            f"at {server.url}  (Ctrl-C stops it)",
            markup=False,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close(timeout=5)  # a batch still running on the model is abandoned after that
    err.print("stopped")
    return 130


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
