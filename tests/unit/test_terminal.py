"""A line written while the progress bars draw (a second Ctrl-C, the watchdog's) stands on a line of
its own, is the last thing written, and leaves the terminal as it was found. The bars here draw by
construction: a child on a real pseudo-terminal keeps updating them while the test signals it (the
pipeline's own runs are in tests/integration/test_interruptions.py)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from harness.terminal import DRAWING, Terminal, last_said, left_as_found, said

# The bars of a stage, updated without end; a first Ctrl-C only asks for a stop, which nothing
# here looks at, so the bars go on drawing until the second.
SIGNALLED = """
import time
from flows import stopping, terminal
with stopping.handled(), terminal.Bars() as bars:
    done = 0
    while True:
        bars.update("features", done % 40, 40)
        done += 1
        time.sleep(0.01)
"""

# The watchdog's way: a thread writes the line and ends the process while the bars draw.
THREAD = """
import os, threading, time
from flows import terminal
def watchdog():
    time.sleep(1.5)
    terminal.alone("the Prefect server has not answered: stopped during features")
    os._exit(75)
threading.Thread(target=watchdog, daemon=True).start()
with terminal.Bars() as bars:
    done = 0
    while True:
        bars.update("features", done % 40, 40)
        done += 1
        time.sleep(0.01)
"""


# The main thread held in a long call, as it is in ray.wait between a fit's polls: the kernel
# delivers the signals to another thread, and a Python handler would run only once the call
# returns, once for both.
HELD = """
import signal, time
from flows import stopping, terminal
with stopping.handled(), terminal.Bars() as bars:
    bars.update("train", 0, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # this thread only
    print("held", flush=True)
    while True:
        time.sleep(0.25)
"""


def drawing(script: str) -> Terminal:
    env = {**os.environ, "TERM": DRAWING, "PYTHONUNBUFFERED": "1"}
    terminal = Terminal([sys.executable, "-c", script], env)
    terminal.wait_for("/40", timeout=60)
    return terminal


def still_drawing(terminal: Terminal) -> None:
    before = len(terminal.output)
    terminal.read(0.5)
    assert not terminal.exited() and len(terminal.output) > before, terminal.text[-500:]


def test_a_second_ctrl_c_while_the_bars_draw_is_a_line_of_its_own() -> None:
    terminal = drawing(SIGNALLED)
    try:
        os.kill(terminal.pid, signal.SIGINT)
        still_drawing(terminal)  # the first asked for a stop; the bars are on the screen
        os.kill(terminal.pid, signal.SIGINT)
        code = terminal.wait(timeout=10)
    finally:
        terminal.kill()
    assert code == 130, code  # exited with 130, not killed by SIGINT (-2)
    assert said(terminal.text) == ["stockpipe: Ctrl-C again: stopping at once"], terminal.text[-500:]
    assert last_said(terminal.text) == "stockpipe: Ctrl-C again: stopping at once"
    left_as_found(terminal.text)


def test_two_signals_a_fiftieth_of_a_second_apart_are_two_while_the_main_thread_is_held() -> None:
    env = {**os.environ, "TERM": DRAWING, "PYTHONUNBUFFERED": "1"}
    terminal = Terminal([sys.executable, "-c", HELD], env)
    try:
        terminal.wait_for("held", timeout=60)
        os.kill(terminal.pid, signal.SIGINT)
        time.sleep(0.02)
        os.kill(terminal.pid, signal.SIGINT)
        code = terminal.wait(timeout=10)
    finally:
        terminal.kill()
    assert code == 130 and last_said(terminal.text) == "stockpipe: Ctrl-C again: stopping at once", code
    left_as_found(terminal.text)


def test_a_line_from_another_thread_while_the_bars_draw_is_a_line_of_its_own() -> None:
    terminal = drawing(THREAD)
    try:
        code = terminal.wait(timeout=10)
    finally:
        terminal.kill()
    line = "stockpipe: the Prefect server has not answered: stopped during features"
    assert code == 75 and said(terminal.text) == [line] and last_said(terminal.text) == line
    left_as_found(terminal.text)


@pytest.mark.parametrize("term", [DRAWING, "dumb"])
def test_without_a_live_bar_the_line_is_written_as_it_is(term: str) -> None:
    """No bar (a dumb terminal draws it only at the end): nothing but the line."""
    script = "from flows import terminal\nterminal.alone('done')"
    terminal = Terminal([sys.executable, "-c", script], {**os.environ, "TERM": term})
    try:
        assert terminal.wait(timeout=30) == 0
    finally:
        terminal.kill()
    assert terminal.text == "stockpipe: done\n"


def test_a_process_killed_by_a_signal_is_told_apart_from_one_that_exits_with_its_code() -> None:
    for script, expected in (("import os; os._exit(130)", 130), ("import os; os.kill(os.getpid(), 2)", -2)):
        terminal = Terminal([sys.executable, "-c", script], dict(os.environ))
        try:
            started = time.monotonic()
            assert terminal.wait(timeout=30) == expected, (script, time.monotonic() - started)
        finally:
            terminal.kill()
