"""Prompt embeddings for the router: an HF encoder or causal LM, pooled, L2-normalised, cached in SQLite."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Literal

import numpy as np

from persyn.errors import ConfigError
from persyn.models import resolve, resolve_device, resolve_dtype

Pooling = Literal["mean", "last"]

# Files that decide what a backbone computes (weights are fingerprinted by sampling, see _file_digest).
_IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "merges.txt",
                   "special_tokens_map.json", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_SAMPLE_BYTES = 4 << 20
EMBED_CHUNK = 512  # texts encoded, then committed to the cache, per step


def resolve_backbone(spec: str, *, trust_remote_code: bool = False) -> str:
    """Turn a backbone spec (registry name, local dir, .gguf, HF id) into what from_pretrained loads."""
    return resolve(spec, trust_remote_code=trust_remote_code)


def _file_digest(path: Path, h: Any) -> None:
    """Feed a file into h: whole if small, else its size plus head and tail (weights can be many GB)."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with path.open("rb") as f:
        if size <= 2 * _SAMPLE_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(_SAMPLE_BYTES))
            f.seek(size - _SAMPLE_BYTES)
            h.update(f.read(_SAMPLE_BYTES))


def backbone_fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a local model directory, independent of where it is installed."""
    root = Path(model_dir)
    if not root.is_dir():
        return f"spec:{model_dir}"
    h = hashlib.sha256()
    for name in _IDENTITY_FILES:
        if (root / name).is_file():
            _file_digest(root / name, h)
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)):
        _file_digest(path, h)
    return h.hexdigest()


class EmbeddingCache:
    """SQLite table key -> float32 vector; ':memory:' when no path is given."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO embeddings (key, vec) VALUES (?, ?)",
                                 [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class Embedder:
    """Embeds texts with `backbone`; hidden states of `layers` are averaged, then pooled over tokens.

    Only texts missing from the cache are encoded, so re-training or re-routing never re-encodes a prompt.
    The model is loaded on the first cache miss.
    """

    def __init__(self, backbone: str = "all-minilm-l6-v2", *, pooling: Pooling = "mean",
                 layers: list[int] | None = None, max_length: int = 256, batch_size: int = 32,
                 trust_remote_code: bool = False, cache_path: Path | None = None,
                 device: str | None = None, model: Any = None) -> None:
        if pooling not in ("mean", "last"):
            raise ConfigError(f"pooling must be 'mean' or 'last', got {pooling!r}", key="router.pooling")
        self.layers = list(layers) if layers is not None else [-1]
        if not self.layers:
            raise ConfigError("layers must name at least one layer", key="router.layers")
        if max_length <= 0 or batch_size <= 0:
            raise ConfigError("max_length and batch_size must be positive", key="router")
        self.backbone, self.pooling = backbone, pooling
        self.max_length, self.batch_size = max_length, batch_size
        self.trust_remote_code = trust_remote_code
        self.model_dir = resolve_backbone(backbone, trust_remote_code=trust_remote_code)
        self.device = device
        self.cache = EmbeddingCache(cache_path)
        self.encoded_texts = 0  # texts actually run through the model (cache misses)
        self._model: Any = None
        self._tokenizer: Any = None
        # An already loaded causal LM of this backbone (the student), or a callable giving it on the first cache
        # miss: its decoder is used, not loaded a second time.
        self._loaded_lm = model
        self._key_prefix = json.dumps(
            {"backbone": backbone_fingerprint(self.model_dir), "pooling": pooling, "layers": self.layers,
             "max_length": max_length}, sort_keys=True)

    def cache_key(self, text: str) -> str:
        return hashlib.sha256(f"{self._key_prefix}\0{text}".encode()).hexdigest()

    def embed(self, texts: list[str], label: str = "embedding") -> np.ndarray:
        """float32 [n, d], each row L2-normalised.

        Texts missing from the cache are encoded EMBED_CHUNK at a time, and each chunk is committed to the cache as
        soon as it is made (a kill loses at most the chunk in flight), under a progress bar with texts/s and ETA.
        """
        from persyn.progress import progress

        keys = [self.cache_key(t) for t in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        chunk = EMBED_CHUNK
        with progress(f"{label} ({self.backbone})", len(missing), unit="texts") as advance:
            for start in range(0, len(missing), chunk):
                part = missing[start:start + chunk]
                new = list(zip([k for k, _ in part], self._encode([t for _, t in part]), strict=True))
                self.cache.put_many(new)
                found.update(new)
                advance(len(part))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = resolve_device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code)
            if self._loaded_lm is not None:  # its decoder is what AutoModel would load from the same weights
                lm = self._loaded_lm if isinstance(self._loaded_lm, torch.nn.Module) else self._loaded_lm()
                model = lm.base_model
                device = str(next(model.parameters()).device)
            else:
                model = AutoModel.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code,
                                                  use_safetensors=True,  # never unpickle a checkpoint
                                                  dtype=resolve_dtype("auto", device))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load embedding backbone {self.backbone!r} from {self.model_dir}: {exc}",
                              key="router.backbone") from exc
        if tokenizer.pad_token is None:  # causal LMs often ship without one; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        n_states = model.config.num_hidden_layers + 1  # hidden_states includes the embedding output
        bad = [layer for layer in self.layers if not -n_states <= layer < n_states]
        if bad:
            raise ConfigError(f"layers {bad} out of range for a model with {n_states} hidden states",
                              key="router.layers")
        self._model, self._tokenizer, self.device = model.to(device).eval(), tokenizer, device

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        self._load()
        ids = self._tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self._tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self._model(**batch, output_hidden_states=True).hidden_states
                states = torch.stack([hidden[layer] for layer in self.layers]).mean(0).float()
                pooled = pool(states, batch["attention_mask"], self.pooling)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)
                for row, i in enumerate(idx):
                    out[i] = pooled[row]
        self.encoded_texts += len(texts)
        return out

    def release(self) -> None:
        """Let go of the model (it is loaded again on the next cache miss); the cache stays open."""
        self._model = self._tokenizer = None

    def close(self) -> None:
        self.release()
        self.cache.close()


def embedder_for(router: Any, student: Any, cache_path: Path, *, backbone: str | None = None,
                 model: Any = None, key: str = "router.backbone") -> Embedder:
    """The embedder of a config's router section (`backbone` overrides router.backbone); `student` means the
    student's model, which `model` (a loaded model or a callable giving it) provides when it is already loaded."""
    spec = router.backbone if backbone is None else backbone
    if spec == "student":
        if student is None:
            raise ConfigError("backbone 'student' needs a student", key=key)
        spec = student.model
    return Embedder(spec, pooling=router.pooling, layers=router.layers, max_length=router.max_length,
                    batch_size=router.embed_batch_size, trust_remote_code=router.trust_remote_code,
                    cache_path=cache_path, model=model)


def pool(states: Any, mask: Any, pooling: Pooling) -> Any:
    """[b, t, d] states -> [b, d]: masked mean, or the last attended token (works for left or right padding)."""
    import torch

    mask = mask.to(states.dtype)
    if pooling == "mean":
        return (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=states.dtype)
    last = (mask * (positions + 1)).argmax(1)  # the highest attended position
    return states[torch.arange(states.shape[0], device=states.device), last]
