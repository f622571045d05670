"""A command on a real pseudo-terminal, as a person runs it: the terminal is its controlling
terminal and its process group the foreground one, so a Ctrl-C typed into it (`interrupt`) is the
kernel's SIGINT to the whole group, children included, exactly as from a keyboard."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import time
from pathlib import Path

# A terminal on which rich draws progress bars live, in colour (on a dumb one it draws them once, at
# the end): what a person's terminal is.
DRAWING = "xterm-256color"


class Terminal:
    def __init__(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose controlling terminal is the pty
            if cwd:
                os.chdir(cwd)
            # As a shell starts a foreground command: every signal's default action. An ignored
            # signal stays ignored across exec (a job started in the background by a
            # non-interactive shell ignores SIGINT; Python ignores SIGPIPE), and Python keeps an
            # ignored SIGINT ignored, so a Ctrl-C would not end the command as it ends a person's.
            for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(number, signal.SIG_DFL)
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
        """The exit status within `timeout`; -N where signal N killed the process (as subprocess
        says it), so that exiting with 130 and dying of SIGINT are told apart."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout} s:\n{self.text[-3000:]}")
            self.read(0.1)
        self.read(0.5)
        assert self.status is not None
        return self.status

    def kill(self) -> None:
        if not self.exited():
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def plain(text: str) -> str:
    """What a terminal shows, without its escapes (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def said(text: str) -> list[str]:
    """The command's own lines: those that start with `stockpipe:` (one run into a progress bar
    does not)."""
    return [line for line in plain(text).splitlines() if line.startswith("stockpipe:")]


def left_as_found(text: str) -> None:
    """The terminal as the command found it: the cursor shown after the bars hid it, every colour
    and style turned off after the last was turned on."""
    assert text.rfind("\x1b[?25l") < text.rfind("\x1b[?25h") or "\x1b[?25l" not in text, text[-500:]
    styles = re.findall(r"\x1b\[([0-9;]*)m", text)
    assert not styles or styles[-1] in ("", "0"), styles[-5:]


def last_said(text: str) -> str:
    """The command's last line, which must be the last thing it wrote."""
    lines = [line for line in plain(text).splitlines() if line.strip()]
    assert lines and lines[-1].startswith("stockpipe:"), text[-1000:]
    return lines[-1]
