"""The Bento as an OCI image, built for real with buildah (no Docker engine, no registry) and run
on a free loopback port. Skipped, with the reason, where buildah, debootstrap or root is missing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bento import image
from harness.procs import free_port, start_server, stop

pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def built(sample_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    reason = image.missing_tools()
    if reason:
        pytest.skip(f"cannot build images here: {reason}")
    name = f"localhost/stockpipe-test:{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    image.containerize(sample_run["result"].package.bento, name)
    print(f"image built in {time.perf_counter() - started:.0f} s")  # shown with pytest -s
    try:
        yield {"name": name}
    finally:
        image.remove_image(name)


def _run(container: str, *command: str) -> str:
    return image.buildah("run", container, "--", *command).stdout


@pytest.fixture(scope="module")
def container(built: dict[str, Any]) -> Iterator[str]:
    name = image.buildah("from", built["name"]).stdout.strip()
    try:
        yield name
    finally:
        image.buildah("rm", name, check=False)


def test_the_image_serves_the_models_answers(
    container: str, expected: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    # The image's own entrypoint, as `docker run IMAGE --port N` would call it.
    command = ["buildah", "run", "--network", "host", container, "--",
               "/home/bentoml/bento/env/docker/entrypoint.sh", "--port", str(port)]  # fmt: skip
    url, process = start_server(command, port, tmp_path / "container.log", env=image.buildah_env())
    try:
        for m, a, want in list(zip(expected["m"], expected["a"], expected["volume"], strict=True))[::10]:
            got = httpx.get(f"{url}/predict", params={"vol_moving_avg": repr(float(m)),
                                                      "adj_close_rolling_med": repr(float(a))})  # fmt: skip
            assert got.status_code == 200 and got.json() == want, got.text
            posted = httpx.post(f"{url}/predict", json={"vol_moving_avg": m, "adj_close_rolling_med": a})
            assert posted.status_code == 200 and posted.json() == want, posted.text
        bad = httpx.get(f"{url}/predict", params={"vol_moving_avg": "x", "adj_close_rolling_med": "1"})
        assert bad.status_code == 400 and "vol_moving_avg" in bad.text
    finally:
        stop(process)


def test_no_host_trust_or_index_settings_remain(built: dict[str, Any], container: str) -> None:
    base = image.buildah("from", image.BASE_IMAGE).stdout.strip()
    try:
        base_bundle = _run(base, "sha256sum", image.IMAGE_CA_BUNDLE).split()[0]
    finally:
        image.buildah("rm", base, check=False)
    # The host's bundle was mounted over this path while building; the image keeps Debian's own.
    assert _run(container, "sha256sum", image.IMAGE_CA_BUNDLE).split()[0] == base_bundle
    assert _run(container, "ls", "-A", image.BUILD_CONFIG_DIR).strip() == ""
    listing = _run(container, "sh", "-c", "ls /etc/pip.conf /etc/uv ~/.config/pip ~/.config/uv 2>&1 || true")
    assert listing.count("No such file") == 4, listing
    config = image.buildah("inspect", "--format", "{{.OCIv1.Config.Env}} {{.History}}", built["name"]).stdout
    for trace in ("PIP_", "UV_INDEX", "SSL_CERT", "REQUESTS_CA", image.BUILD_CONFIG_DIR, "stockpipe-build-"):
        assert trace not in config, trace
