"""Models: the registry of pinned demo models, GGUF conversion, spec resolution, loading, and the one
device/dtype policy every caller in persyn uses.

    cache.py     the on-disk cache: root, file digests, locks, atomic publishing
    registry.py  REGISTRY and fetch: pinned wheels, downloaded and verified by sha256
    gguf.py      GGUF files converted once to safetensors directories
    specs.py     resolve (spec -> loadable location) and model_identity (for fingerprints)
    device.py    resolve_device / resolve_dtype: where a model runs and in what precision
    loading.py   load_causal_lm / load_tokenizer: one shared copy per model, dtype and device
"""

from persyn.models.cache import cache_root, sha256_file
from persyn.models.device import (
    cpu_has_bf16,
    dtype_name,
    empty_gpu_cache,
    gpu_has_bf16,
    resolve_device,
    resolve_dtype,
    training_precision,
)
from persyn.models.gguf import CONVERTED_MARKER, convert_gguf
from persyn.models.loading import (
    causal_lm_key,
    is_loaded,
    load_causal_lm,
    load_tokenizer,
    unload,
    unload_all,
)
from persyn.models.registry import REGISTRY, RegistryModel, Wheel, fetch, registry_gguf_path, registry_names
from persyn.models.specs import model_identity, resolve

__all__ = [
    "CONVERTED_MARKER", "REGISTRY", "RegistryModel", "Wheel", "cache_root", "causal_lm_key", "convert_gguf",
    "cpu_has_bf16", "dtype_name", "empty_gpu_cache", "fetch", "gpu_has_bf16", "is_loaded", "load_causal_lm",
    "load_tokenizer", "model_identity", "registry_gguf_path", "registry_names", "resolve", "resolve_device",
    "resolve_dtype", "sha256_file", "training_precision", "unload", "unload_all",
]
