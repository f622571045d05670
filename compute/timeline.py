"""When each phase of a command ended, for bench/etl.py to say where a cold command's seconds go:
one JSON line per phase (`{"phase": ..., "at": <Unix time>}`), appended to the file that the
`timeline` setting names. Unset (the default), nothing is written and a mark costs a dict lookup.

The phases, in the order a `stockpipe run` passes them: `imports` (the command's own modules,
its arguments checked), `prefect` (Prefect's temporary server answers; a configured server is not
waited for), `ray` (Ray started or joined), `flow` (the flow's first line: Prefect has recorded
the run), `first-task` (the first Ray task's result is back), `flow-end`, `shutdown` (Ray and
Prefect's server stopped, about to exit).
"""

from __future__ import annotations

import json
import os
import time

from compute.settings import environment_variables

_marked: set[str] = set()


def mark(phase: str) -> None:
    """Record that `phase` ended now; only its first end counts."""
    path = os.environ.get(environment_variables("timeline")[0])
    if not path or phase in _marked:
        return
    _marked.add(phase)
    with open(path, "a") as file:
        file.write(json.dumps({"phase": phase, "at": time.time()}) + "\n")
