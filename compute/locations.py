"""Locations as text: a local (or shared-mount) path, or a pyarrow filesystem URI. What settings
validate and what storage opens, without opening anything."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

SECRET_OPTIONS = {"access_key", "secret_key", "session_token"}  # pyarrow's S3 URI options


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def is_local(location: str) -> bool:
    return not is_uri(location)


def normalize(location: str | Path) -> str:
    """An absolute local path (Ray workers do not share the driver's directory) or the URI as given."""
    text = str(location)
    if text.startswith("file://"):
        text = urlsplit(text).path
    if is_uri(text):
        parts = urlsplit(text)
        secrets = SECRET_OPTIONS & {k.lower() for k, _ in parse_qsl(parts.query)}
        if parts.password or secrets:
            raise ValueError(
                "put credentials in the environment (e.g. AWS_ACCESS_KEY_ID), not in the URI: "
                "locations are written to reports and logs"
            )
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") or parts.path))
    return str(Path(text).expanduser().resolve())
