"""What the weights identity in every key costs: model_identity of a local model directory, the first time (the
weights are hashed) and in a later process (the digest comes from CACHE/digests.sqlite).

    python benchmarks/bench_identity.py [MODEL_DIR]

MODEL_DIR defaults to the converted qwen2.5-coder-0.5b-instruct (about 1 GB of safetensors) in the persyn cache;
it is linked into a scratch directory without persyn's conversion marker, so it is treated as a user's directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from persyn.models import model_identity; "
         "t = time.perf_counter(); ident = model_identity(sys.argv[1]); print(time.perf_counter() - t, ident)")


def identity_seconds(model_dir: Path, env: dict[str, str]) -> tuple[float, str]:
    """model_identity in a fresh process (nothing memoised in memory): (seconds, identity)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(ROOT / "src")], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    cache = Path(os.environ.get("PERSYN_CACHE") or Path.home() / ".cache" / "persyn")
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else cache / "converted" / "qwen2.5-coder-0.5b-instruct"
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model"
        model.mkdir()
        for f in source.iterdir():
            if f.is_file() and f.name != "persyn_source.json":
                (model / f.name).symlink_to(f.resolve())
        size = sum(f.stat().st_size for f in model.iterdir() if f.suffix == ".safetensors")
        env = {**os.environ, "PERSYN_CACHE": str(Path(scratch) / "cache")}
        t0 = time.perf_counter()
        cold, ident = identity_seconds(model, env)
        warm, again = identity_seconds(model, env)
        assert ident == again
        print(f"{source.name}: {size / 1e9:.2f} GB of safetensors")
        print(f"model_identity, first process (hashes the weights): {cold:.3f} s")
        print(f"model_identity, next process (digest cache):        {warm * 1000:.1f} ms")
        print(f"total with interpreter starts: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
