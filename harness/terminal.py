"""A command on a real pseudo-terminal, as a person runs it: the terminal is its controlling
terminal and its process group the foreground one, so a Ctrl-C typed into it (`interrupt`) is the
kernel's SIGINT to the whole group, children included, exactly as from a keyboard."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path


class Terminal:
    def __init__(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose controlling terminal is the pty
            if cwd:
                os.chdir(cwd)
            os.execvpe(command[0], command, env)
        self.output = b""
        self.status: int | None = None

    def read(self, seconds: float = 0.2) -> str:
        """What the command has written so far (waiting up to `seconds` for more)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the terminal closed: every process on it has exited
                break
            if not chunk:
                break
            self.output += chunk
        return self.text

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, needle: str, timeout: float) -> float:
        """Read until `needle` shows; the seconds that took."""
        started = time.monotonic()
        while needle not in self.text:
            if time.monotonic() - started > timeout or self.exited():
                raise TimeoutError(f"{needle!r} did not show in {timeout} s:\n{self.text[-3000:]}")
            self.read()
        return time.monotonic() - started

    def interrupt(self) -> None:
        """Ctrl-C, typed: the terminal's interrupt character."""
        os.write(self.fd, b"\x03")

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def wait(self, timeout: float) -> int:
        """The exit status (128 + N for a signal N, as a shell says it) within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout} s:\n{self.text[-3000:]}")
            self.read(0.1)
        self.read(0.5)
        assert self.status is not None
        return self.status if self.status >= 0 else 128 - self.status

    def kill(self) -> None:
        if not self.exited():
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)
