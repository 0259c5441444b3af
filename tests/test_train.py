"""Student fine-tuning on tiny real models: masking, saving, LoRA merging, resume and determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from persyn.errors import ConfigError, InputError
from persyn.experiments.train import TrainConfig, build_trainer, train_student


def _rows(n: int = 12) -> list[dict]:
    return [{"id": f"p{i}", "teacher": "t1", "source": "test",
             "messages": [{"role": "user", "content": f"What is {i} times 7?"},
                          {"role": "assistant", "content": f"{i} * 7 = {i * 7}. #### {i * 7}"}]}
            for i in range(n)]


@pytest.fixture
def sft_dataset(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_labels_cover_only_the_response(tiny_lm_dir, sft_dataset, tmp_path):
    trainer = build_trainer(TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / "o")), sft_dataset)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    rows = _rows()
    assert len(trainer.train_dataset) == len(rows)
    for example, row in zip(trainer.train_dataset, rows, strict=True):
        user, answer = row["messages"]
        prompt_ids = tok.apply_chat_template([user], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
        ids, labels = example["input_ids"], example["labels"]
        assert ids[:len(prompt_ids)] == prompt_ids
        assert all(label == -100 for label in labels[:len(prompt_ids)])
        response = labels[len(prompt_ids):]
        assert response == ids[len(prompt_ids):] and -100 not in response
        assert tok.decode(response) == answer["content"] + "<|im_end|>\n"


def test_few_shot_format_for_base_models(tiny_lm_dir, sft_dataset, tmp_path):
    cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / "o"), chat_template="few-shot")
    with pytest.raises(ConfigError, match="train.max_length"):  # the few-shot prefix alone fills 256 tokens
        build_trainer(cfg, sft_dataset)
    cfg = cfg.model_copy(update={"max_length": 1024})
    example = build_trainer(cfg, sft_dataset).train_dataset[0]
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    text = tok.decode(example["input_ids"])
    assert text.startswith("Question: ") and text.endswith("Question: What is 0 times 7?\nAnswer: 0 * 7 = 0. "
                                                           "#### 0<|im_end|>")
    trained = tok.decode([t for t in example["labels"] if t != -100])
    assert trained == " 0 * 7 = 0. #### 0<|im_end|>"


def test_full_finetune_saves_a_loadable_checkpoint_and_resumes(tiny_lm_dir, sft_dataset, tmp_path):
    out = tmp_path / "student"
    cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(out), max_steps=3, learning_rate=1e-3)
    result = train_student(cfg, sft_dataset)
    assert result.steps == 3 and math.isfinite(result.train_loss) and result.train_loss > 0
    record = json.loads((out / "train_result.json").read_text())
    assert record["steps"] == 3 and len([h for h in record["log_history"] if "loss" in h]) == 3

    before, after = _weights(tiny_lm_dir), _weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 3 times 7?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.isfinite(model(ids).logits).all()

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train_student(cfg, sft_dataset)
    assert again == result and (out / "model.safetensors").stat().st_mtime_ns == stamp
    changed = cfg.model_copy(update={"learning_rate": 2e-3})
    assert train_student(changed, sft_dataset).train_loss != result.train_loss


def test_lora_is_merged_into_a_plain_checkpoint(tiny_lm_dir, sft_dataset, tmp_path):
    out = tmp_path / "lora"
    cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(out), max_steps=3, lora=True, lora_r=4,
                      learning_rate=1e-2)
    assert train_student(cfg, sft_dataset).steps == 3
    assert not (out / "adapter_config.json").exists()
    before, after = _weights(tiny_lm_dir), _weights(out)
    assert before.keys() == after.keys()  # no lora_A/lora_B tensors left
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"],
                           after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.norm.weight"], after["model.norm.weight"])  # LoRA touches linear layers only
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_same_seed_gives_identical_weights(tiny_lm_dir, sft_dataset, tmp_path):
    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / name), max_steps=3, seed=seed,
                          learning_rate=1e-3)
        train_student(cfg, sft_dataset)
        return _weights(tmp_path / name)

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed shuffles the data differently


def test_bad_rows_name_file_and_line(tiny_lm_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_rows(1)[0])
    path.write_text(good + "\n" + json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi"},
                                                                        {"role": "user", "content": "?"}]}))
    cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / "o"), max_steps=1)
    with pytest.raises(InputError, match=r"bad.jsonl:2 \[messages\]: the last message must be the assistant"):
        train_student(cfg, path)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: malformed JSON"):
        train_student(cfg, path)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(model="m", output_dir="o", epochz=2)


def test_warmup_ratio_is_a_ratio_of_the_total_steps(tiny_lm_dir, sft_dataset, tmp_path):
    """warmup_ratio=0.5 over 4 steps warms up for 2 steps, on transformers 4 (warmup_ratio) and 5 (warmup_steps)."""
    cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / "o"), max_steps=4, warmup_ratio=0.5,
                      learning_rate=1e-3)
    trainer = build_trainer(cfg, sft_dataset)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])


def test_bf16_true_trains_under_cpu_autocast_with_fp32_master_weights(tiny_lm_dir, sft_dataset, tmp_path):
    """`train.bf16: true` on a CPU: the matmuls run in bfloat16 (autocast), the weights AdamW updates stay float32;
    the default (None) stays float32 there. bench_train.py measures what this buys."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")

    def matmul_dtypes(bf16: bool | None) -> set[torch.dtype]:
        cfg = TrainConfig(model=str(tiny_lm_dir), output_dir=str(tmp_path / str(bf16)), max_steps=1, bf16=bf16)
        trainer = build_trainer(cfg, sft_dataset)
        dtypes: set[torch.dtype] = set()
        trainer.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
        trainer.train()
        assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
        return dtypes

    assert matmul_dtypes(True) == {torch.bfloat16}
    assert matmul_dtypes(None) == {torch.float32}
