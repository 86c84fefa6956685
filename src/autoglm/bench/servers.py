"""Start a server process on a free port, wait until it is healthy, stop it.

Used by the comparison harness and the end-to-end tests to run ``autoglm serve`` and
``transformers serve`` in turn. It knows command lines and a health URL, nothing about what the
server does. The process gets its own session so that stopping it also stops its children.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from autoglm.errors import AutoGLMError

__all__ = ["free_port", "ServerProcess", "ServerStartError", "transformers_serve_command", "autoglm_serve_command"]


class ServerStartError(AutoGLMError):
    """A server process exited or never became healthy; the message ends with its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def transformers_serve_command(model_dir: str | Path, port: int, host: str = "127.0.0.1", dtype: str = "float32",
                               continuous_batching: bool = True, device: str = "cpu",
                               extra: list[str] | None = None) -> list[str]:
    """``transformers serve`` preloading a local model directory (it then answers to that path as model name).

    It needs ``accelerate`` (it always loads with a device map).
    """
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe) if exe.exists() else "transformers", "serve", str(model_dir), "--host", host, "--port", str(port),
           "--dtype", dtype, "--device", device, "--log-level", "warning"]
    cmd.append("--continuous-batching" if continuous_batching else "--no-continuous-batching")
    return cmd + list(extra or [])


def autoglm_serve_command(model: str, port: int, host: str = "127.0.0.1", extra: list[str] | None = None) -> list[str]:
    """``python -m autoglm serve`` with our flags (``--quantize``, ``--max-num-seqs``... go in ``extra``)."""
    return [sys.executable, "-m", "autoglm", "serve", "--model", str(model), "--host", host, "--port", str(port),
            *(extra or [])]


class ServerProcess:
    """``with ServerProcess(cmd, port) as srv:`` — started and healthy inside, stopped after.

    ``srv.base_url`` is ``http://host:port/v1``. The server's stdout/stderr go to ``log_path`` (a temp
    file by default) and the tail of it is quoted when the server fails to start.
    """

    def __init__(self, cmd: list[str], port: int, host: str = "127.0.0.1", health_path: str = "/health",
                 startup_timeout: float = 300.0, log_path: str | Path | None = None,
                 env: dict[str, str] | None = None, name: str | None = None):
        self.cmd = cmd
        self.host = host
        self.port = port
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.env = env
        self.name = name or Path(cmd[0]).name
        if log_path is None:
            import tempfile

            fd, log_path = tempfile.mkstemp(prefix=f"autoglm-bench-{port}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> ServerProcess:
        import httpx

        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        url = f"http://{self.host}:{self.port}{self.health_path}"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.name} exited with code {self.proc.returncode} before it was healthy; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(f"{self.name} was not healthy at {url} after {self.startup_timeout:.0f}s; "
                               f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: the server and its children only
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
