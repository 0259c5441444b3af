"""Causal LMs and tokenizers loaded once per process, on the device and in the dtype of persyn.models.device."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

from persyn.errors import ConfigError
from persyn.models.device import empty_gpu_cache, resolve_device, resolve_dtype
from persyn.models.specs import model_identity, resolve

CacheKey = tuple[str, str, str, bool]  # (location, dtype, device, trust_remote_code)

_LOADED: dict[CacheKey, tuple[Any, Any]] = {}
_TOKENIZERS: dict[tuple[str, bool], Any] = {}
_IDENTITY: dict[str, str] = {}  # location -> model_identity when its cached model and tokenizer were loaded


def _drop_if_rewritten(spec: str, location: str) -> None:
    """Forget a cached model and tokenizer whose files changed since they were loaded (new weights at the same
    path), so a long-lived process never generates or scores with the old ones under the new identity."""
    identity = model_identity(spec)
    if _IDENTITY.get(location, identity) != identity:
        for key in [k for k in _LOADED if k[0] == location]:
            del _LOADED[key]
        for key in [k for k in _TOKENIZERS if k[0] == location]:
            del _TOKENIZERS[key]
    _IDENTITY[location] = identity


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    """The spec's tokenizer, left-padded (for batched generation) and with a pad token; cached in-process."""
    from transformers import AutoTokenizer

    location = resolve(spec, trust_remote_code=trust_remote_code)
    _drop_if_rewritten(spec, location)
    key = (location, trust_remote_code)
    if key not in _TOKENIZERS:
        try:
            tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the tokenizer of model {spec!r}: {exc}") from exc
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def load_causal_lm(spec: str, *, dtype: str | None = None, device: str | None = None,
                   trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer), in eval mode on `device`; one shared copy per (model, dtype, device) in this process,
    so teacher generation and student scoring of the same model reuse it."""
    from transformers import AutoModelForCausalLM

    key = causal_lm_key(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    location, _, device, _ = key
    _drop_if_rewritten(spec, location)
    if key not in _LOADED:
        torch_dtype = resolve_dtype(dtype, device)
        tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "use_safetensors": True,
                                  "trust_remote_code": trust_remote_code}
        try:
            try:
                model = AutoModelForCausalLM.from_pretrained(location, attn_implementation="sdpa", **kwargs)
            except ValueError as exc:  # an architecture without SDPA support
                if "sdpa" not in str(exc).lower():
                    raise
                model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load model {spec!r}: {exc}") from exc
        model.to(device).eval()
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        _LOADED[key] = (model, tokenizer)
    return _LOADED[key]


def causal_lm_key(spec: str, *, dtype: str | None = None, device: str | None = None,
                  trust_remote_code: bool = False) -> CacheKey:
    """The in-process cache key load_causal_lm gives these arguments: equal keys share one copy."""
    device = resolve_device(device)
    location = resolve(spec, trust_remote_code=trust_remote_code)
    return (location, str(resolve_dtype(dtype, device, warn=False)), device, trust_remote_code)


def is_loaded(key: CacheKey) -> bool:
    return key in _LOADED


def unload(key: CacheKey) -> bool:
    """Drop one cached model (see causal_lm_key); its memory is freed once no caller holds it. False if absent."""
    if _LOADED.pop(key, None) is None:
        return False
    _collect()
    return True


def unload_all() -> None:
    """Drop every cached model and tokenizer (and free the GPU memory they held)."""
    _LOADED.clear()
    _TOKENIZERS.clear()
    _IDENTITY.clear()
    _collect()


def _collect() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        empty_gpu_cache()
