"""Put a trained model into the BentoML model store and build the Bento that serves it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import bentoml
import yaml

from compute import model as contract
from compute import storage
from compute.settings import PROJECT_ROOT

MODEL_NAME = "stock-volume"
BENTOFILE = PROJECT_ROOT / "bento" / "bentofile.yaml"


def model_version(model_dir: str) -> str:
    """Content-addressed: the same model files always get the same version."""
    digest = hashlib.sha256()
    for name in (contract.MODEL_FILE, contract.METADATA_FILE):
        digest.update(storage.read_bytes(storage.join(model_dir, name)))
    return digest.hexdigest()[:16]


def register_model(model_dir: str | Path) -> str:
    """Copy model.bin + model.json (local or from an object store) into the model store, once
    per content; return the tag."""
    model_dir = storage.normalize(model_dir)
    for name in (contract.MODEL_FILE, contract.METADATA_FILE):
        if not storage.is_file(storage.join(model_dir, name)):
            raise FileNotFoundError(f"no {name} in {model_dir}: run `stockpipe train` first")
    tag = f"{MODEL_NAME}:{model_version(model_dir)}"
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    booster, metadata = contract.load(model_dir)  # refuse to register files that do not load
    with bentoml.models.create(tag, labels={"project": "stockpipe"}, metadata=_flat(metadata)) as stored:
        contract.save(booster, metadata, stored.path)
    return tag


def _flat(metadata: dict) -> dict:
    """BentoML metadata takes scalars, lists and dicts of those; keep the useful parts."""
    return {
        "features": metadata["features"],
        "target_transform": metadata["target_transform"],
        "holdout_cutoff": metadata["holdout_cutoff"],
        "data_hash": metadata["data_hash"],
    }


def _bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def bento_version(model_tag: str) -> str:
    """Content-addressed: the model plus the build file and every file it includes."""
    config = _bentofile()
    digest = hashlib.sha256(model_tag.encode())
    digest.update(BENTOFILE.read_bytes())
    for name in sorted(config.get("include", [])):
        digest.update(name.encode() + (PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def build_bento(model_tag: str) -> str:
    """`bentoml build` with bento/bentofile.yaml, pinned to this model; return the Bento's tag.
    A Bento already built from the same model and files is reused."""
    name, version = _bentofile()["name"], bento_version(model_tag)
    try:
        return str(bentoml.bentos.get(f"{name}:{version}").tag)
    except bentoml.exceptions.NotFound:
        pass
    previous = os.environ.get("STOCKPIPE_MODEL_TAG")
    os.environ["STOCKPIPE_MODEL_TAG"] = model_tag  # read by the service when the build imports it
    try:
        bento = bentoml.bentos.build_bentofile(str(BENTOFILE), version=version, build_ctx=str(PROJECT_ROOT))
    finally:
        if previous is None:
            os.environ.pop("STOCKPIPE_MODEL_TAG", None)
        else:
            os.environ["STOCKPIPE_MODEL_TAG"] = previous
    return str(bento.tag)
