"""What schemathesis cannot read from an OpenAPI document: /predict_batch's two lists must have the
same length (JSON Schema has no keyword for that). Before a generated request is sent, the shorter
list is padded with copies of its own first item. That keeps a valid request valid and an invalid
one invalid (an invalid item stays, an empty list stays empty), so that a 400 for lists of
different lengths is not taken for a valid request refused. That rule has its own tests in
test_serving.py."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    body = case.body
    if case.operation.path != "/predict_batch" or not isinstance(body, dict):
        return
    columns = [body.get("vol_moving_avg"), body.get("adj_close_rolling_med")]
    if not all(isinstance(c, list) and c for c in columns):
        return
    longest = max(len(c) for c in columns)
    for column in columns:
        column.extend(column[:1] * (longest - len(column)))
