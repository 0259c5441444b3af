"""What several test modules share: tiny models with a real tokenizer, a recorded three-teacher pool and its
config, a finished run made through the CLI, and small readers. Test modules import from here, never from each
other."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Write a short poem about the sea. The sea is wide and blue and deep.",
    "Explain why the sky is blue in one sentence. Light scatters off the air.",
    "What is 12 times 7? 12 * 7 = 84. #### 84",
    "The quick brown fox jumps over the lazy dog 0123456789 + - * / = $ % .",
]


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def build_tiny_lm(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


# Prompts and responses for scoring tests: short and long, one truncated at max_length=160, one empty.
PROMPTS = [
    "What is 12 times 7?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue in one sentence.",
    "Natalia sold clips to 48 of her friends in April. " * 3,
    "How many clips did Natalia sell?",
    "Say nothing.",
]
RESPONSES = [
    "12 * 7 = 84. #### 84",
    "The sea is wide and blue and deep. " * 12,  # long: truncated at max_length=160
    "Light scatters off the air.",
    "She sold 72.",
    "x",
    "",  # empty: no value
]


TOPICS = {
    "math": "Compute {a} plus {b} and explain the steps.",
    "poem": "Write a short poem about the {a} rivers of {b}.",
    "code": "Write a Python function that returns {a} times {b}.",
}
BEST = {"math": "alpha", "poem": "beta", "code": "gamma"}


def recorded_pool(tmp_path, n=90, seed=0):
    """Three recorded teachers; which one is best depends on the prompt's topic (noisy judge scores)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        prompts.append((topic, TOPICS[topic].format(a=i, b=rng.randint(2, 99))))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for _, p in prompts))
    for teacher in BEST.values():
        rows = []
        for topic, p in prompts:
            q = (0.8 if BEST[topic] == teacher else 0.3) + rng.uniform(-0.15, 0.15)
            rows.append({"instruction": p, "output": f"{teacher} answers: {p[::-1]}", "quality": q})
        (tmp_path / f"{teacher}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts


def recorded_config(tmp_path, **over):
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "prompts.jsonl"), "field": "instruction"},
        "teachers": [{"name": t, "backend": "recorded", "model": str(tmp_path / f"{t}.jsonl")} for t in BEST.values()],
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.0},
        "probe": {"size": 45, "seed": 0},
        "router": {"bt": {"epochs": 100}, "seed": 0},
    }
    cfg.update(over)
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


LICENSES = {"alpha": "Apache-2.0", "gamma": "CC-BY-4.0"}  # beta gives none: "unknown"


def make_run(root: Path, n: int = 30, probe: int = 15) -> tuple[Path, dict]:
    """Three recorded teachers over `n` prompts (no model generates), run end to end by `persyn run`."""
    recorded_pool(root, n=n)
    cfg = recorded_config(root, probe={"size": probe, "seed": 0}, router={"bt": {"epochs": 30}, "seed": 0})
    for t in cfg["teachers"]:
        if t["name"] in LICENSES:
            t["license"] = LICENSES[t["name"]]
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from persyn.cli import main

    main(["run", str(path)])
    return path, cfg


