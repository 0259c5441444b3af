"""GGUF files dequantised once into safetensors HF directories under CACHE/converted/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from persyn.errors import PersynError
from persyn.models.cache import cache_root, locked, publish_dir, remove_stale_tmp, sha256_memo, tmp_sibling

CONVERTED_MARKER = "persyn_source.json"  # written into every converted directory: where it came from


def convert_gguf(gguf: Path, target: Path, *, source: dict[str, Any] | None = None) -> Path:
    """Dequantise a GGUF into a safetensors HF directory (model + tokenizer), published atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    tmp = tmp_sibling(target)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf missing, unsupported architecture or a corrupt file
        raise PersynError(f"cannot convert GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
    # A GGUF-loaded model carries a quantisation config and won't save: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise PersynError(f"cannot convert GGUF {gguf}: weights do not match the architecture "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {"gguf": str(gguf), "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(source or {})}
    (tmp / CONVERTED_MARKER).write_text(json.dumps(info, indent=1))
    publish_dir(tmp, target)
    return target


def converted_gguf(gguf: Path) -> Path:
    """The converted directory of any GGUF file, cached by the file's sha256."""
    digest = sha256_memo(gguf)
    target = cache_root() / "converted" / f"gguf-{digest[:24]}"
    if target.is_dir():
        return target
    with locked(cache_root() / "locks" / f"gguf-{digest[:24]}.lock"):
        return convert_gguf(gguf.resolve(), target, source={"gguf_sha256": digest})
