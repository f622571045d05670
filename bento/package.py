"""Put a trained model into the BentoML model store and build the Bento that serves it. A model's
tag is its version in the registry (<out>/models/), which its card records, so the same model
files always get the same tag; a Bento is content-addressed: the same model with the same service
files gets the same Bento version."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import bentoml
import yaml

from bento import forecasts
from compute import locations, publish, storage
from compute import model as contract
from compute.settings import PROJECT_ROOT

BENTOFILE = PROJECT_ROOT / "bento" / "bentofile.yaml"


def model_tag(model_dir: str) -> str:
    """The tag the published model in `model_dir` has (or will have) in the model store."""
    model, card = contract.read_published(model_dir)
    return _tag(model, card)


def _tag(model: bytes, card: contract.ModelCard) -> str:
    """stock-volume:<its version in the registry>; a model from before the registry is named by
    its content."""
    if card.version:
        return f"{contract.MODEL_NAME}:{card.version}"
    digest = hashlib.sha256(model)
    digest.update(json.dumps(card.to_json(), sort_keys=True).encode())
    return f"{contract.MODEL_NAME}:{digest.hexdigest()[:16]}"


def register_model(model_dir: str | Path) -> str:
    """Copy the published model (local or from an object store) into the model store, once per
    content; return its tag. The files are checked whole and loadable before they are stored."""
    model, card = contract.read_published(locations.normalize(model_dir))
    tag = _tag(model, card)
    if find_model(tag):
        return tag
    contract.booster(model)  # refuse to register files that do not load
    with bentoml.models.create(tag, labels={"project": "stockpipe"}, metadata=_flat(card)) as stored:
        contract.write(stored.path, model, card)
    return tag


def forecast_tag(out: str) -> str | None:
    """The tag the forecast published in output `out` has (or will have) in the model store:
    stock-forecast:<its version>; None when there is none."""
    version = forecasts.version_of(out)
    return f"{forecasts.FORECAST_MODEL_NAME}:{version}" if version else None


def register_forecast(out: str) -> str | None:
    """Copy the forecast published in output `out` into the model store, once per version; its tag."""
    tag = forecast_tag(out)
    if tag is None or find_model(tag):
        return tag
    data = publish.data_dir(storage.join(out, "forecast"))
    with bentoml.models.create(tag, labels={"project": "stockpipe"}) as stored:
        forecasts.write_files(data, Path(stored.path))
    return tag


def _in_store(get: Callable[[str], object], tag: str) -> bool:
    try:
        get(tag)
        return True
    except bentoml.exceptions.NotFound:
        return False


def find_model(tag: str) -> bool:
    return _in_store(bentoml.models.get, tag)


def _flat(card: contract.ModelCard) -> dict:
    """BentoML's model metadata takes scalars, lists and dicts of those; keep the useful parts."""
    return card.model_dump(include={"features", "target_transform", "holdout_cutoff", "data_hash"})


def _bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def bento_tag(model: str, forecast: str | None = None) -> str:
    """The Bento's tag, content-addressed: the model and forecast, the build file and every file it
    includes."""
    config = _bentofile()
    digest = hashlib.sha256(model.encode())
    if forecast:
        digest.update(forecast.encode())
    digest.update(BENTOFILE.read_bytes())
    for path in _included(config):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    return f"{config['name']}:{digest.hexdigest()[:16]}"


def find_bento(tag: str) -> bool:
    return _in_store(bentoml.bentos.get, tag)


def build_bento(model: str, forecast: str | None = None) -> str:
    """`bentoml build` with bento/bentofile.yaml, the service handed this model (and forecast) as its
    Bento arguments (bento/service.py); return the Bento's tag. A Bento already built from the same
    model, forecast and files is reused.

    The models are also named in the build's `models:`, so that the Bento (and an image of it)
    holds exactly them: BentoML otherwise takes them from the service class's attributes, which a
    process that imported bento.service before the build made with its own arguments (no forecast,
    the latest model), and an image then lacked the forecast its arguments name."""
    tag = bento_tag(model, forecast)
    if find_bento(tag):
        return tag
    version = tag.split(":", 1)[1]
    args = {"model_tag": model, **({"forecast_tag": forecast} if forecast else {})}
    config = {**_bentofile(), "models": [model, *([forecast] if forecast else [])]}
    with tempfile.TemporaryDirectory(prefix="stockpipe-bentofile-") as folder:
        bentofile = Path(folder) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        # The build context holds only the files the Bento includes: BentoML walks the whole
        # context for ignore files, and the project's (a virtual environment, outputs) took 0.4 s.
        context = Path(folder) / "context"
        for path in _included(config):
            target = context / path.relative_to(PROJECT_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        bento = bentoml.bentos.build_bentofile(
            str(bentofile), version=version, build_ctx=str(context), args=args
        )
    return str(bento.tag)


def _included(config: dict) -> list[Path]:
    """The project's files that the build file's `include:` patterns name."""
    return sorted({path for pattern in config.get("include", []) for path in PROJECT_ROOT.glob(pattern)})
