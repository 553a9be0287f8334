"""llama-cpp-python's OpenAI-compatible server on the embedded SmolLM2, for the backend tests.

`python tests/llama_server.py --port 8000` is `python -m llama_cpp.server --model <SmolLM2>
--port 8000` with one change: weights stay in plain CPU buffers (`use_extra_bufts` off), as
the llama backend keeps them, because this llama.cpp build crashes in its AMX kernels on
batches of more than one token on CPUs that have AMX.

`Server` starts it in a subprocess on 127.0.0.1, waits until /v1/models answers, and can kill
and restart it on the same port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MODEL_ALIAS = "smol"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A llama.cpp server subprocess serving SmolLM2 as `smol` at `url`."""

    def __init__(self, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> Server:
        from ttcl.backends.models import resolve_model_path

        command = [
            sys.executable,
            __file__,
            "--model",
            resolve_model_path("smollm2-135m"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model_alias",
            MODEL_ALIAS,
            "--n_ctx",
            "4096",
            "--n_threads",
            "2",
        ]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as reply:
                    json.loads(reply.read())
                    return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"the llama.cpp server did not start in {timeout:.0f} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def completions_served(self) -> int:
        """POST /v1/completions requests the server has logged (over every start)."""
        return self.log.read_text(errors="replace").count("POST /v1/completions")


def _plain_cpu_buffers() -> None:
    import llama_cpp.llama as high
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = high.llama_cpp.llama_model_default_params = params


if __name__ == "__main__":
    _plain_cpu_buffers()
    from llama_cpp.server.__main__ import main

    sys.exit(main())
