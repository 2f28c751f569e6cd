"""ONNX Runtime's TensorRT engine cache, loaded only if this service wrote it: files are checked against an index.

The TensorRT execution provider writes serialised engines into its cache folder and loads whatever
it finds there on the next start. Files in the folder that are not in ``index.json`` with their
sha256 (dropped in by something else, or corrupted) are removed before a session opens, so the
provider rebuilds them instead of deserialising them; after warm-up the index is rewritten. This
catches foreign and damaged files; whoever can write the volume can also write the index, so the
cache volume must be writable by the service alone (docs/deploy.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mapex_serve.atomic import atomic_path

__all__ = ["INDEX_NAME", "record_cache", "verify_cache"]

INDEX_NAME = "index.json"
log = logging.getLogger("mapex_serve.engine_cache")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != INDEX_NAME and not p.name.startswith("."))


def verify_cache(folder: Path) -> list[str]:
    """Remove cache files the index does not list with their hash; returns the names removed, with why."""
    index_path = folder / INDEX_NAME
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except (OSError, ValueError):
        index = {}
    removed = []
    for path in _files(folder):
        expected = index.get(path.name) if isinstance(index, dict) else None
        why = "not in the cache index" if expected is None else "sha256 differs from the index"
        if path.is_symlink() or expected != _sha256(path):
            why = "a link" if path.is_symlink() else why
            path.unlink()
            removed.append(f"{path.name} ({why})")
    for item in removed:
        log.warning("engine cache %s: removed %s; TensorRT rebuilds it", folder, item)
    return removed


def record_cache(folder: Path) -> dict[str, str]:
    """Write the index of the cache files as they are now (after the provider has built or loaded them)."""
    index = {p.name: _sha256(p) for p in _files(folder) if not p.is_symlink()}
    with atomic_path(folder / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    return index
