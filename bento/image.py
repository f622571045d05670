"""An OCI image of the built Bento, made with buildah where there is no Docker engine and no
registry to pull a base image from.

`bentoml containerize` is the default wherever Docker and a registry exist. Here, the image is built
by BentoML's own buildah backend from the Bento's generated Dockerfile, with its `FROM python:3.11-slim`
replaced (buildah's --from) by a base image made locally from Debian packages with debootstrap.

The host's trust and index settings reach the build only as read-only mounts into the build's RUN
steps: the host's CA bundle over the image's own, and pip and uv configuration files pointing at it.
Nothing of them is committed: the image keeps Debian's own CA bundle and has no such files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"  # Debian 12, whose python3 is 3.11 as the Bento's Dockerfile expects
# groupadd/useradd (passwd) and pip are used by the Bento's Dockerfile; python3-venv by uv.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd")
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian's tools look
# System-wide configuration folder (XDG) that both pip and uv read; empty in the base image.
BUILD_CONFIG_DIR = "/etc/xdg"
# Tagged by its recipe, so a changed recipe builds a new base instead of reusing a stale one.
_RECIPE = hashlib.sha256(repr((SUITE, BASE_PACKAGES, BUILD_CONFIG_DIR, 1)).encode()).hexdigest()[:8]
BASE_IMAGE = f"localhost/stockpipe-base:{SUITE}-{_RECIPE}"


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why in one line."""


def missing_tools(need_base: bool = True) -> str | None:
    """Why an image cannot be built on this machine, or None if it can."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (Debian: apt-get install buildah)"
    if os.geteuid() != 0:
        return "building with buildah's vfs storage and chroot isolation needs root"
    if need_base and shutil.which("debootstrap") is None:
        return "debootstrap is not installed (Debian: apt-get install debootstrap)"
    return None


def require_tools(base: str = BASE_IMAGE) -> None:
    """Raise ImageError, saying why, unless an image can be built here (debootstrap only matters
    while the base image is missing)."""
    reason = missing_tools(need_base=False)  # buildah itself first: image_exists runs it
    if reason is None and not image_exists(base):
        reason = missing_tools(need_base=True)
    if reason:
        raise ImageError(reason)


def buildah_env() -> dict[str, str]:
    """vfs storage and chroot isolation work without kernel overlay support or user namespaces."""
    return {**os.environ, "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs"),
            "BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}  # fmt: skip


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["buildah", *args], env=buildah_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ImageError(f"buildah {args[0]} failed: {result.stderr.strip()[-2000:]}")
    return result


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (it may be the only one reachable)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for match in re.finditer(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", sources.read_text(), re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


def build_base(name: str = BASE_IMAGE, mirror: str | None = None) -> str:
    """A minimal Debian image with Python 3.11, from Debian packages (about a minute)."""
    reason = missing_tools()
    if reason:
        raise ImageError(reason)
    with tempfile.TemporaryDirectory(prefix="stockpipe-rootfs-") as tmp:
        root = Path(tmp) / "root"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                   SUITE, str(root), mirror or debian_mirror()]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"debootstrap failed: {(result.stdout + result.stderr).strip()[-2000:]}")
        # The Bento's Dockerfile pip-installs uv into the system Python, as it can in python:*-slim.
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        (root / BUILD_CONFIG_DIR.lstrip("/")).mkdir(exist_ok=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("copy", container, str(root), "/")
            buildah("config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", container)
            buildah("commit", "--quiet", container, name)
        finally:
            buildah("rm", container, check=False)
    return name


@contextmanager
def build_time_mounts() -> Iterator[list[str]]:
    """Read-only mounts for the build's RUN steps: the host's CA bundle over the image's own, and a
    configuration folder telling pip and uv to use it (and the host's index, if PIP_INDEX_URL names
    one). Both mount points exist in the base image, so no trace of them is committed."""
    bundle = os.environ.get("SSL_CERT_FILE") or next((p for p in HOST_CA_BUNDLES if Path(p).is_file()), None)
    index = os.environ.get("PIP_INDEX_URL")
    with tempfile.TemporaryDirectory(prefix="stockpipe-build-") as tmp:
        config = Path(tmp)
        (config / "uv").mkdir()
        (config / "uv" / "uv.toml").write_text(
            "system-certs = true\n" + (f'index-url = "{index}"\n' if index else "")
        )
        (config / "pip").mkdir()
        (config / "pip" / "pip.conf").write_text(
            f"[global]\ncert = {IMAGE_CA_BUNDLE}\n" + (f"index-url = {index}\n" if index else "")
        )
        config.chmod(0o755)
        mounts = [f"{config}:{BUILD_CONFIG_DIR}:ro"]
        if bundle:
            mounts.append(f"{bundle}:{IMAGE_CA_BUNDLE}:ro")
        yield mounts


def containerize(bento_tag: str, image: str | None = None, base: str = BASE_IMAGE) -> str:
    """Build an OCI image of a Bento in buildah's local storage; return the image name."""
    import bentoml

    require_tools(base)
    if not image_exists(base):
        build_base(base)
    image = image or f"localhost/{bento_tag}"
    os.environ.update(
        {k: v for k, v in buildah_env().items() if k in ("STORAGE_DRIVER", "BUILDAH_ISOLATION")}
    )
    with build_time_mounts() as mounts:
        # BentoML logs a failed build and returns None instead of raising: check the result.
        bentoml.container.build(bento_tag, backend="buildah", tag=(image,), volume=mounts, **{"from": base})
    if not image_exists(image):
        raise ImageError(f"buildah did not produce {image}; the build's output above says why")
    return image


def remove_image(image: str) -> None:
    buildah("rmi", "--force", image, check=False)
