"""The real BentoML service over HTTP: answers equal the booster's own, bad input is a clear 4xx."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bento.service import MAX_BATCH
from compute.settings import PROJECT_ROOT
from harness.procs import free_port, start_server, stop


def test_get_predict_matches_the_booster(served: str, expected: dict[str, np.ndarray]) -> None:
    for m, a, want in list(zip(expected["m"], expected["a"], expected["volume"], strict=True))[::10]:
        r = httpx.get(
            f"{served}/predict",
            params={"vol_moving_avg": repr(float(m)), "adj_close_rolling_med": repr(float(a))},
        )
        assert r.status_code == 200, r.text
        assert r.json() == want and isinstance(r.json(), int) and r.json() >= 0


def test_the_documented_example_call(served: str) -> None:
    r = httpx.get(f"{served}/predict?vol_moving_avg=51318&adj_close_rolling_med=216")
    assert r.status_code == 200 and isinstance(r.json(), int) and r.json() > 0


def test_post_predict_matches_get(served: str, expected: dict[str, np.ndarray]) -> None:
    for m, a, want in list(zip(expected["m"], expected["a"], expected["volume"], strict=True))[::10]:
        r = httpx.post(f"{served}/predict", json={"vol_moving_avg": m, "adj_close_rolling_med": a})
        assert r.status_code == 200, r.text
        assert r.json() == want


def batch(m: np.ndarray | list[float], a: np.ndarray | list[float]) -> dict[str, Any]:
    """A /predict_batch body: rows as objects."""
    return {
        "instances": [
            {"vol_moving_avg": x, "adj_close_rolling_med": y} for x, y in zip(list(m), list(a), strict=True)
        ]
    }


def test_predict_batch_matches_the_booster(served: str, expected: dict[str, np.ndarray]) -> None:
    r = httpx.post(f"{served}/predict_batch", json=batch(expected["m"].tolist(), expected["a"].tolist()))
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": expected["volume"].tolist()}


def test_predict_batch_takes_the_feature_matrix_as_one_tensor(
    served: str, expected: dict[str, np.ndarray]
) -> None:
    """TF Serving's columnar format: {"inputs": [[vol_moving_avg, adj_close_rolling_med], ...]},
    answered {"outputs": [...]}, the same volumes as the rows as objects."""
    rows = np.column_stack([expected["m"], expected["a"]]).tolist()
    r = httpx.post(f"{served}/predict_batch", json={"inputs": rows})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": expected["volume"].tolist()}


BAD_SINGLE = [
    ({"adj_close_rolling_med": 216}, "vol_moving_avg", "required"),
    ({"vol_moving_avg": 51318}, "adj_close_rolling_med", "required"),
    ({"vol_moving_avg": "lots", "adj_close_rolling_med": 216}, "vol_moving_avg", "valid number"),
    ({"vol_moving_avg": "nan", "adj_close_rolling_med": 216}, "vol_moving_avg", "finite"),
    ({"vol_moving_avg": 51318, "adj_close_rolling_med": "inf"}, "adj_close_rolling_med", "finite"),
    ({"vol_moving_avg": -1, "adj_close_rolling_med": 216}, "vol_moving_avg", "greater than or equal to 0"),
    (
        {"vol_moving_avg": 51318, "adj_close_rolling_med": -0.5},
        "adj_close_rolling_med",
        "greater than or equal",
    ),
    ({"vol_moving_avg": 1e300, "adj_close_rolling_med": 216}, "vol_moving_avg", "less than or equal"),
    ({"vol_moving_avg": 51318, "adj_close_rolling_med": 1e9}, "adj_close_rolling_med", "less than or equal"),
]


def assert_error_body(r: httpx.Response) -> dict[str, Any]:
    """The one error body every route answers: a message, and each problem with its field."""
    body = r.json()
    assert set(body) == {"error", "problems"} and isinstance(body["error"], str) and body["error"], body
    assert all(set(p) == {"field", "problem"} for p in body["problems"]), body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


def assert_clear_4xx(r: httpx.Response, field: str, problem: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    body = assert_error_body(r)
    assert field in r.text and problem in r.text, r.text
    assert any(field in p["field"] or field in p["problem"] for p in body["problems"]), body


@pytest.mark.parametrize(("params", "field", "problem"), BAD_SINGLE)
def test_bad_get_is_a_clear_4xx(served: str, params: dict, field: str, problem: str) -> None:
    assert_clear_4xx(httpx.get(f"{served}/predict", params=params), field, problem)


@pytest.mark.parametrize(("body", "field", "problem"), BAD_SINGLE)
def test_bad_post_is_a_clear_4xx(served: str, body: dict, field: str, problem: str) -> None:
    text = httpx.Request("POST", "/", json=body).content  # json= would refuse NaN; send it as text
    text = text.replace(b'"nan"', b"NaN").replace(b'"inf"', b"Infinity")
    r = httpx.post(f"{served}/predict", content=text, headers={"content-type": "application/json"})
    assert_clear_4xx(r, field, problem)


def test_body_that_is_not_json_is_a_clear_4xx(served: str) -> None:
    r = httpx.post(f"{served}/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert_clear_4xx(r, "body", "JSON")


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"instances": [{"vol_moving_avg": 1.0}]}, "instances[0].adj_close_rolling_med", "required"),
        (batch([1.0, -2.0], [3.0, 4.0]), "instances[1].vol_moving_avg", "greater than"),
        (batch([1.0, "x"], [3.0, 4.0]), "instances[1].vol_moving_avg", "valid number"),
        (batch([1.0], [1e9]), "instances[0].adj_close_rolling_med", "less than or equal"),
        ({"instances": []}, "instances", "at least 1"),
        ({"instances": [[1.0, 2.0]]}, "instances[0]", "should be an object"),
        ({"vol_moving_avg": [1.0], "adj_close_rolling_med": [1.0]}, "instances", "required"),
        ({"instances": 5}, "instances", "valid array"),
        # The feature matrix as one tensor, a pair per row.
        ({"inputs": [[1.0, 2.0], [3.0, -4.0]]}, "inputs[1][1]", "greater than or equal to 0"),
        ({"inputs": [[1.0, 2.0, 3.0]]}, "inputs[0]", "at most 2 items"),
        ({"inputs": [[1.0]]}, "inputs[0][1]", "required"),
        ({"inputs": [[True, 2.0]]}, "inputs[0][0]", "valid number"),
        ({"inputs": []}, "inputs", "at least 1"),
        (
            {"inputs": [[1.0, 2.0]], "instances": [{"vol_moving_avg": 1.0, "adj_close_rolling_med": 2.0}]},
            "inputs",
            "not permitted",
        ),
    ],
)
def test_bad_batch_is_a_clear_4xx(served: str, body: dict, field: str, problem: str) -> None:
    assert_clear_4xx(httpx.post(f"{served}/predict_batch", json=body), field, problem)


def test_batch_over_the_limit_is_refused(served: str) -> None:
    n = MAX_BATCH + 1
    r = httpx.post(f"{served}/predict_batch", json=batch([1.0] * n, [1.0] * n))
    assert_clear_4xx(r, "instances", f"at most {MAX_BATCH}")


def test_probes_and_openapi_list_every_route(served: str) -> None:
    # The probes docs/deploying.md gives to Kubernetes: BentoML's own routes, ready by the service.
    assert httpx.get(f"{served}/livez").status_code == 200
    assert httpx.get(f"{served}/readyz").status_code == 200
    document = httpx.get(f"{served}/docs.json").json()
    paths = document["paths"]
    assert set(paths["/predict"]) == {"get", "post"}
    assert set(paths["/predict_batch"]) == {"post"} and set(paths["/model"]) == {"get"}
    params = {p["name"] for p in paths["/predict"]["get"]["parameters"]}
    assert params == {"vol_moving_avg", "adj_close_rolling_med"}
    # Every prediction route documents what it really answers: 200, 400 with the error body, and
    # the same body for anything else; not FastAPI's 422, which it never sends.
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method in [("/predict", "get"), ("/predict", "post"), ("/predict_batch", "post")]:
        responses = paths[path][method]["responses"]
        assert set(responses) == {"200", "400", "default"}, (path, method, responses)
        for status in ("400", "default"):
            assert responses[status]["content"]["application/json"]["schema"] == error_body
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "problems"}


def test_a_second_server_on_a_taken_port_is_refused_in_one_line(
    served: str, sample_run: dict[str, Any]
) -> None:
    port = served.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "flows.cli", "serve", "--out", str(sample_run["out"]), "--port", port]
    r = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"stockpipe: error: cannot serve on 127.0.0.1:{port}: Address already in use; another server "
        f"holds it (`ss -ltnp | grep :{port}` shows which): stop it, or use --port"
    ]
    assert httpx.get(f"{served}/readyz").status_code == 200  # the first server still answers


def test_another_method_is_a_405_in_the_same_shape_with_the_methods_it_takes(served: str) -> None:
    r = httpx.put(f"{served}/predict", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert assert_error_body(r)["problems"] == []


def test_model_says_which_model_answers(sample_run: dict[str, Any], served: str) -> None:
    out = sample_run["out"]
    metadata = json.loads((out / "model" / "model.json").read_text())
    info = httpx.get(f"{served}/model").json()
    assert info["tag"] == sample_run["result"].package.model
    assert info["features"] == ["vol_moving_avg", "adj_close_rolling_med"]
    assert info["target_transform"] == metadata["target_transform"] == "ratio_to_vol_moving_avg"
    assert info["training_window"] == metadata["training_window"]
    assert info["holdout"] == {
        "cutoff": metadata["holdout_cutoff"],
        "model": metadata["metrics"]["time_split"],
        "baseline": metadata["metrics"]["baseline"],
    }
    assert info["trained"] == metadata["created"] and info["model_sha256"] == metadata["model_sha256"]


def test_the_bentoml_client_gets_what_curl_gets(served: str, expected: dict[str, np.ndarray]) -> None:
    """bentoml.SyncHTTPClient, as a Python user would call the service, against plain HTTP."""
    import bentoml

    body = batch(expected["m"].tolist(), expected["a"].tolist())
    one = {"vol_moving_avg": 51318.0, "adj_close_rolling_med": 216.0}
    with bentoml.SyncHTTPClient(served) as client:
        assert client.is_ready()
        answered = client.request("POST", "/predict_batch", json=body)
        single = client.request("POST", "/predict", json=one)
        bad = client.request("POST", "/predict", json={**one, "vol_moving_avg": -1})
        forecast = client.request("GET", "/forecast", params={"symbol": "AAPL"})
        many = client.request("POST", "/forecast", json={"symbols": ["AAPL", "DIA"]})
    assert (
        answered.json()["predictions"]
        == expected["volume"].tolist()
        == httpx.post(f"{served}/predict_batch", json=body).json()["predictions"]
    )
    assert (
        single.json()
        == httpx.post(f"{served}/predict", json=one).json()
        == httpx.get(f"{served}/predict", params=one).json()
    )
    assert (
        bad.status_code == 400
        and bad.json() == httpx.post(f"{served}/predict", json={**one, "vol_moving_avg": -1}).json()
    )
    assert forecast.json() == httpx.get(f"{served}/forecast", params={"symbol": "AAPL"}).json()
    assert many.json()["forecasts"][0] == forecast.json() and many.json()["not_found"] == []


# Seed 1 in the suite; STOCKPIPE_FUZZ_SEEDS=1,2,3 for the wider run (docs/testing.md).
FUZZ_SEEDS = tuple(int(s) for s in os.environ.get("STOCKPIPE_FUZZ_SEEDS", "1").split(","))


def schemathesis(url: str, log: Path, seeds: tuple[int, ...] = FUZZ_SEEDS, examples: int = 300) -> None:
    """The OpenAPI document is the contract: schemathesis fuzzes every route from it with every
    check it has, seeded and bounded; 0 failures."""
    # As any user runs it: no hooks, no configuration; in the test's folder, where schemathesis
    # keeps its cache, not in the project. One worker: with two, its threads' hypothesis calls
    # ast.parse at the same time, which CPython 3.11 can answer with "SystemError: AST constructor
    # recursion depth mismatch" (the parser's depth counter is not per thread; seen once here).
    for seed in seeds:
        command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/docs.json", "--checks",
                   "all", "--seed", str(seed), "--max-examples", str(examples), "--workers", "1"]  # fmt: skip
        result = subprocess.run(
            command, cwd=log.parent, capture_output=True, text=True, timeout=600, check=False
        )
        log.with_suffix(f".{seed}.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-5000:]
        assert "No issues found" in result.stdout, result.stdout[-3000:]


def test_the_openapi_contract_holds_under_schemathesis(served: str, tmp_path: Path) -> None:
    schemathesis(served, tmp_path / "schemathesis.log")


def predicted_count(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return float(next(ln for ln in lines if ln.startswith("stockpipe_predicted_volume_count")).split()[1])


def test_built_bento_serves_the_same_answers(
    served: str, sample_run: dict[str, Any], expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The built Bento, as a second server on the machine: it answers what the booster does, and
    `stockpipe serve`'s /metrics keeps counting (BentoML empties its one folder of metrics files
    when a server starts, and `stockpipe serve` once lost its own to the next server's start)."""
    bento = sample_run["result"].package.bento
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    url, process = start_server(command, port, tmp_path / "bento.log")
    try:
        body = batch(expected["m"].tolist(), expected["a"].tolist())
        assert httpx.post(f"{url}/predict_batch", json=body).json() == {
            "predictions": expected["volume"].tolist()
        }
        r = httpx.get(f"{url}/predict", params={"vol_moving_avg": 51318, "adj_close_rolling_med": 216})
        assert r.status_code == 200 and not math.isnan(r.json())
        # The Bento recorded the model it was built with, and holds to the same contract.
        assert httpx.get(f"{url}/model").json()["tag"] == sample_run["result"].package.model
        # And the forecast table, from the model store, as `stockpipe serve` answers it.
        forecast = httpx.get(f"{url}/forecast", params={"symbol": "AAPL"})
        assert forecast.json() == httpx.get(f"{served}/forecast", params={"symbol": "AAPL"}).json()
        info = httpx.get(f"{url}/model").json()["forecast"]
        assert info["source"] == sample_run["result"].package.forecast
        counted = predicted_count(served)
        assert httpx.get(
            f"{served}/predict", params={"vol_moving_avg": 1, "adj_close_rolling_med": 1}
        ).is_success
        deadline = time.monotonic() + 10  # the service adds one-row answers every half second
        while predicted_count(served) < counted + 1:
            assert time.monotonic() < deadline, "stockpipe serve's /metrics stopped counting"
            time.sleep(0.2)
        schemathesis(url, tmp_path / "schemathesis.log")
    finally:
        stop(process)


# --- abuse: whatever arrives, the answer is a 200 or a 4xx with a message, never a 5xx ---------------

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
FEATURE = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20) | ANY_JSON


def assert_answer_or_clear_4xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code == 200:
        assert isinstance(r.json(), int) or isinstance(r.json()["predictions"], list)
    else:
        assert r.status_code == 400, r.text[:500]
        assert_error_body(r)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(["vol_moving_avg", "adj_close_rolling_med", "x"]), FEATURE))
def test_post_predict_never_fails_on_any_json(served: str, body: dict) -> None:
    text = json.dumps(body, allow_nan=True)
    r = httpx.post(f"{served}/predict", content=text, headers={"content-type": "application/json"})
    assert_answer_or_clear_4xx(r)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=st.dictionaries(st.sampled_from(["vol_moving_avg", "adj_close_rolling_med"]), st.text(max_size=30))
)
def test_get_predict_never_fails_on_any_query(served: str, params: dict) -> None:
    assert_answer_or_clear_4xx(httpx.get(f"{served}/predict", params=params))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.fixed_dictionaries(
        {
            "instances": st.lists(
                st.dictionaries(st.sampled_from(["vol_moving_avg", "adj_close_rolling_med", "x"]), FEATURE)
                | ANY_JSON,
                max_size=20,
            )
        }
    )
    | st.dictionaries(st.text(max_size=25), ANY_JSON, max_size=3)
)
def test_predict_batch_never_fails_on_any_json(served: str, body: dict) -> None:
    text = json.dumps(body, allow_nan=True)
    r = httpx.post(f"{served}/predict_batch", content=text, headers={"content-type": "application/json"})
    assert_answer_or_clear_4xx(r)


def test_body_that_is_not_json_at_all(served: str) -> None:
    for body in [b"\xff\xfe\x00", b"[]", b"null", b'"x"', b"1e999", b"{" * 1000]:
        for route in ("/predict", "/predict_batch"):
            r = httpx.post(f"{served}{route}", content=body, headers={"content-type": "application/json"})
            assert_answer_or_clear_4xx(r)


# --- what Prometheus sees ---------------------------------------------------------------------------


def prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Prometheus is not installed (apt-get install prometheus)"
)
def test_prometheus_scrapes_the_version_the_inputs_the_answers_and_the_refusals(
    served: str, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """A real Prometheus (Debian's) with the shipped configuration (deploy/prometheus.yml, its
    alert rules loaded) scraping /metrics every second, asked through its query API."""
    import yaml

    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["scrape_configs"][0]["static_configs"] = [{"targets": [served.removeprefix("http://")]}]
    config["rule_files"] = [str(PROJECT_ROOT / "deploy" / name) for name in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    config, tsdb = tmp_path / "prometheus.yml", tmp_path / "tsdb"
    command = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
               f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    url, prometheus = start_server(command, port, tmp_path / "prometheus.log", ready_path="/-/ready")
    # What this test's requests add to each series (the service is shared with the module's other
    # tests: the counts start where they left them).
    expected = {
        "sum(stockpipe_input_vol_moving_avg_count)": 70,  # 20 one-row answers, a 50-row batch
        "sum(stockpipe_input_adj_close_rolling_med_count)": 70,
        "sum(stockpipe_predicted_volume_count)": 70,
        "sum(stockpipe_batch_rows_count)": 1,
        'sum(stockpipe_rejected_inputs_total{field="vol_moving_avg",problem="greater_than_equal"})': 1,
        # One for each item, as one series.
        "sum(stockpipe_rejected_inputs_total"
        '{field="instances[].adj_close_rolling_med",problem="missing"})': 2,
    }

    def value(query: str) -> float:
        found = prometheus_query(url, query)
        return float(found[0]["value"][1]) if found else 0.0

    try:
        deadline = time.monotonic() + 60
        while not prometheus_query(url, 'up{job="stockpipe"} == 1'):  # a first scrape to start from
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        before = {query: value(query) for query in expected}
        rows = httpx.get(f"{served}/model").json()
        for m in range(20):
            assert (
                httpx.get(
                    f"{served}/predict", params={"vol_moving_avg": 1000 * m, "adj_close_rolling_med": 20}
                ).status_code
                == 200
            )
        assert httpx.post(f"{served}/predict_batch", json=batch([5e4] * 50, [30.0] * 50)).status_code == 200
        assert (
            httpx.get(
                f"{served}/predict", params={"vol_moving_avg": -1, "adj_close_rolling_med": 1}
            ).status_code
            == 400
        )
        bad = httpx.post(
            f"{served}/predict_batch", json={"instances": [{"vol_moving_avg": 1}, {"vol_moving_avg": 2}]}
        )
        assert bad.status_code == 400
        # The service adds one-row answers to its series every half second, and Prometheus scrapes
        # every second: wait until both have happened for everything sent.
        deadline = time.monotonic() + 60
        while any(value(q) - before[q] < n for q, n in expected.items()):
            assert time.monotonic() < deadline, {q: value(q) - before[q] for q in expected}
            time.sleep(0.5)
        version = rows["version"]
        info = prometheus_query(url, "stockpipe_model_info == 1")
        assert [s["metric"]["version"] for s in info] == [version]
        buckets = prometheus_query(url, "stockpipe_input_vol_moving_avg_bucket")
        card = json.loads((sample_run["out"] / "model" / "model.json").read_text())
        edges = sorted(float(b["metric"]["le"]) for b in buckets if b["metric"]["le"] != "+Inf")
        assert edges == pytest.approx(card["feature_bins"]["vol_moving_avg"]["edges"]), "training quantiles"
        assert prometheus_query(
            url, "histogram_quantile(0.5, sum by (le) (stockpipe_predicted_volume_bucket))"
        )
        deadline = time.monotonic() + 30
        while True:  # the rules are loaded and evaluated: the service is up, nothing fires
            groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
            rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
            assert {"StockpipeInputDrift", "StockpipeDown"} <= set(rules), list(rules)
            if all(rule["health"] == "ok" for rule in rules.values()):
                break
            assert time.monotonic() < deadline, rules
            time.sleep(0.5)
        assert rules["StockpipeDown"]["state"] == "inactive"
    finally:
        stop(prometheus)


def test_the_shipped_alert_rules_fire_when_they_should() -> None:
    """deploy/stockpipe-alerts.yml under Prometheus's own rule tests: live drift above 0.2 for 15
    minutes, and a service that stops answering, fire; drift below it, or shorter, does not."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    deploy = PROJECT_ROOT / "deploy"
    for command in (["check", "config", "prometheus.yml"], ["test", "rules", "stockpipe-alerts.test.yml"]):
        done = subprocess.run(["promtool", *command], cwd=deploy, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
