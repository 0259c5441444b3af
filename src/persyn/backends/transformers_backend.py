"""A local teacher: batched generation with a transformers causal LM (shared through persyn.models' cache)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from persyn.backends.base import GenParams, GenRequest, GenResult, register_backend
from persyn.chat import FEW_SHOT_STOP, format_prompt, template_text, uses_few_shot
from persyn.errors import ConfigError


class SeededSampler:
    """A logits processor that samples each row with its own generator and then forces that token.

    Seeding per request (not per batch) makes a sampled output depend only on its prompt and seed, not on which
    other requests share its batch. Greedy decoding over the forced scores picks the sampled token.
    """

    def __init__(self, generators: list[Any], temperature: float, top_p: float) -> None:
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p  # keep the smallest set above top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        rows = zip(probs, self.generators, strict=True)
        chosen = torch.stack([torch.multinomial(row, 1, generator=g) for row, g in rows])
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter(-1, chosen, 0.0)


def _request_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16)


@register_backend("transformers")
class TransformersBackend:
    """Generates with a local model: a registry name, a local HF directory, a .gguf file or an HF id."""

    def __init__(self, teacher: Any, **context: Any) -> None:
        self.name = teacher.name
        self.teacher = teacher
        if not teacher.model:
            raise ConfigError("the transformers backend needs `model` (registry name, directory, .gguf or HF id)",
                              key=f"teachers.{teacher.name}.model")
        self.batch_size = int(teacher.batch_size or context.get("batch_size", 8))
        self.dtype: str | None = getattr(teacher, "dtype", None) or context.get("dtype")
        self.device: str | None = context.get("device")
        self.chat_template = template_text(teacher.chat_template, key=f"teachers.{teacher.name}.chat_template")
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from persyn.models import model_identity

            template = self.chat_template
            if template and template != "few-shot":
                template = "sha256:" + hashlib.sha256(template.encode()).hexdigest()[:16]
            self._fingerprint = json.dumps({"backend": "transformers", "model": model_identity(self.teacher.model),
                                            "few_shot": self.teacher.few_shot, "chat_template": template},
                                           sort_keys=True)
        return self._fingerprint

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from persyn.models import load_causal_lm

            self._model, self._tokenizer = load_causal_lm(self.teacher.model, dtype=self.dtype, device=self.device,
                                                          trust_remote_code=self.teacher.trust_remote_code)
            self.few_shot = uses_few_shot(self._tokenizer, self.teacher.few_shot, self.chat_template)
            self._bos = _bos_text(self._tokenizer)
        return self._model, self._tokenizer

    def generate(self, requests: list[GenRequest]) -> Iterator[GenResult]:
        if not requests:
            return
        model, tokenizer = self._load()
        texts = {r.key: self._prompt_text(r.prompt) for r in requests}
        lengths = {k: len(tokenizer(t, add_special_tokens=False).input_ids) for k, t in texts.items()}
        groups: dict[GenParams, list[GenRequest]] = {}
        for r in requests:
            groups.setdefault(r.params, []).append(r)
        for params, group in groups.items():
            group.sort(key=lambda r: lengths[r.key])  # similar lengths together: less padding
            for start in range(0, len(group), self.batch_size):
                yield from self._run_batch(group[start:start + self.batch_size], texts, params)

    def _prompt_text(self, prompt: str) -> str:
        text = format_prompt(self._tokenizer, prompt, chat_template=self.chat_template, few_shot=self.few_shot)
        # Models trained with a BOS (Gemma) need it; chat templates usually write it, few-shot text never does.
        if self._bos and not text.startswith(self._bos):
            text = self._bos + text
        return text

    def _run_batch(self, batch: list[GenRequest], texts: dict[str, str], params: GenParams) -> list[GenResult]:
        import torch

        model, tokenizer = self._model, self._tokenizer
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                rows, new_tokens = self._generate_ids(batch, texts, params)
            seconds = (time.perf_counter() - start) / len(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            from persyn.models import empty_gpu_cache

            empty_gpu_cache()
            half = len(batch) // 2
            return self._run_batch(batch[:half], texts, params) + self._run_batch(batch[half:], texts, params)
        eos = _eos_ids(model, tokenizer)
        results = []
        for req, prompt_tokens, generated in zip(batch, rows, new_tokens, strict=True):
            ids = generated.tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
            kept = ids[:end] if end is not None else [t for t in ids if t != tokenizer.pad_token_id]
            text = tokenizer.decode(kept, skip_special_tokens=True)
            finish = "stop" if end is not None else "length"
            if self.few_shot and FEW_SHOT_STOP in text:
                text, finish = text[:text.index(FEW_SHOT_STOP)], "stop"
            results.append(GenResult(key=req.key, text=text.strip(), prompt_tokens=prompt_tokens,
                                     completion_tokens=len(kept), seconds=seconds,
                                     cost=self.teacher.cost(prompt_tokens, len(kept)),
                                     extra={"finish_reason": finish}))
        return results

    def _generate_ids(self, batch: list[GenRequest], texts: dict[str, str], params: GenParams
                      ) -> tuple[list[int], Any]:
        model, tokenizer = self._model, self._tokenizer
        enc = tokenizer([texts[r.key] for r in batch], return_tensors="pt", padding=True,
                        add_special_tokens=False, padding_side="left").to(model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": False,
                                  "pad_token_id": tokenizer.pad_token_id}
        if self.few_shot:
            kwargs.update(stop_strings=[FEW_SHOT_STOP], tokenizer=tokenizer)
        if params.temperature > 0:
            import torch

            generators = [torch.Generator(device=model.device).manual_seed(_request_seed(params.seed, r.key))
                          for r in batch]
            kwargs["logits_processor"] = [SeededSampler(generators, params.temperature, params.top_p)]
        out = model.generate(**enc, **kwargs)
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        return prompt_tokens, out[:, enc["input_ids"].shape[1]:]

    def close(self) -> None:
        # The model stays in persyn.models' cache, where the student may reuse it; unload_all() frees it.
        self._model = self._tokenizer = None


def _bos_text(tokenizer: Any) -> str | None:
    """The BOS token's text when the tokenizer is set to add one (checked by tokenizing), else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos else None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
