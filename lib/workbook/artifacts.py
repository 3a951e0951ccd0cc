"""Compiled-artifact cache: compile once, load on every later run with the same inputs to
compilation.

A traced Neuron model (``.pt``) is not in the Neuron compile cache, and torch.compile's caches live
in a temporary folder by default: both are kept here instead, in a folder per key. The key hashes
everything that changes the artifact — model name, a digest of the weights, input shapes, dtype,
backend options and library versions — so a changed input compiles afresh and an unchanged one is
loaded. ``meta.json`` records what the key was made of, so a reader can see why two runs did or did
not share an artifact.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from workbook.paths import repo_root
from workbook.record import write_json_atomic


def default_dir() -> Path:
    return repo_root() / "artifacts"


def weights_digest(module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and values)."""
    import torch

    h = hashlib.sha256()
    for name, t in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        t = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def make_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Entry:
    """One cache folder: ``dir`` holds the artifact files and ``meta.json``."""

    key: str
    dir: Path
    parts: dict

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def exists(self) -> bool:
        """True once :meth:`commit` ran for this key (a half-written folder does not count)."""
        return self.meta_path.exists()

    def commit(self, **extra) -> None:
        write_json_atomic(self.meta_path,
                          {"key": self.key, "parts": self.parts, "created": time.time(), **extra})

    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text())


def entry(root: Path | str | None, backend: str, parts: dict) -> Entry:
    """The cache folder for ``parts`` under ``root/backend`` (made; exists() says if complete)."""
    root = Path(root) if root else default_dir()
    key = make_key({"backend": backend, **parts})
    d = root / backend / key
    d.mkdir(parents=True, exist_ok=True)
    return Entry(key, d, {"backend": backend, **parts})
