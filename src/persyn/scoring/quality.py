"""Quality scorers: how good a teacher's response is, one float per response.

Scorers are built from `QualityConfig.kind` through a registry (`register_quality`). Built in:

- `math_answer`: 1.0 when the response's final answer equals the reference answer (math-verify, with an exact
  numeric fallback), else 0.0. An empty response scores 0.0.
- `gym`: 1.0 when the reasoning-gym task's own verifier gives the response's final answer full marks, else 0.0.
  The reference is the `entry` of a `gym:` prompt (task, answer, metadata as JSON). The final answer is the
  last `<answer>...</answer>`, else what follows the last `####`, else the last `Answer:`, else the last
  `\\boxed{}`, else the last non-empty line: one candidate, so a response cannot collect credit by listing several.
- `reward_model`: the scalar logit of a sequence-classification reward model over the chat-formatted
  (user, assistant) conversation. An empty response scores the lowest reward in the same call (0.0 if every
  response is empty) so it is never preferred; the pipeline also marks empty responses as worst.

Kind `field` needs no scorer: the score stage reads a recorded teacher's per-response field from the store.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from persyn.config import QualityConfig
from persyn.errors import ConfigError, InputError
from persyn.plugins import Registry


class QualityScorer(Protocol):
    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]: ...


QualityFactory = Callable[[QualityConfig], QualityScorer]
QUALITY_SCORERS: Registry[QualityFactory] = Registry("quality scorer")
register_quality = QUALITY_SCORERS.register


def make_quality_scorer(cfg: QualityConfig) -> QualityScorer:
    factory = QUALITY_SCORERS.get(cfg.kind, key="quality.kind")
    return factory(cfg)


def _excerpt(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------- math_answer

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    at = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if at < 0:
        return None
    i = text.index("{", at) + 1
    depth, start = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
        i += 1
    return None


def _clean(answer: str) -> str:
    """Drop thousands separators, dollar signs, LaTeX math delimiters and a trailing full stop."""
    s = _THOUSANDS.sub("", answer).replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "").strip()
    return s.rstrip(".").strip()


def _leading_value(chunk: str) -> str:
    """'72 apples.' -> '72'; LaTeX or other expressions are kept whole for math-verify."""
    s = _clean(chunk)
    boxed = _last_boxed(s)
    if boxed is not None:
        return _clean(boxed)
    if "\\" not in s:
        m = _NUMBER.search(s)
        if m:
            return m.group(0)
    return s


def extract_answer(text: str) -> str | None:
    """A response's final answer: `#### n`, else the last \\boxed{}, else 'answer is X', else the last number."""
    hashes = _HASHES.findall(text)
    if hashes:
        return _leading_value(hashes[-1]) or None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    answer_is = _ANSWER_IS.findall(text)
    if answer_is:
        value = _leading_value(re.split(r"\.\s|\n", answer_is[-1])[0])
        if value:
            return value
    numbers = _NUMBER.findall(_THOUSANDS.sub("", text))
    return numbers[-1] if numbers else None


def reference_answer(reference: str) -> str:
    """A reference's answer: what follows GSM8K's `####`, else a \\boxed{} answer, else the whole string."""
    if "####" in reference:
        return _clean(reference.rsplit("####", 1)[1])
    boxed = _last_boxed(reference)
    return _clean(boxed if boxed is not None else reference)


def _exact_number(s: str) -> Decimal | None:
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def answers_match(pred: str | None, ref: str | None) -> bool:
    """Whether two extracted answers are equal: exactly as numbers, else by math-verify's symbolic check."""
    if not pred or not ref:
        return False
    pred, ref = _clean(pred), _clean(ref)
    a, b = _exact_number(pred), _exact_number(ref)
    if a is not None and b is not None and a.is_finite() and b.is_finite():
        return a == b
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(ref, parsing_timeout=timeout) or parse(f"${ref}$", parsing_timeout=timeout)
        guess = parse(pred, parsing_timeout=timeout) or parse(f"${pred}$", parsing_timeout=timeout)
        return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))
    except Exception:  # math-verify gives up on some inputs (timeouts, unparsable LaTeX): not a match
        return False


class MathAnswerScorer:
    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        for i, ref in enumerate(references):
            if ref is None or not str(ref).strip():
                raise InputError(f"prompt {i + 1} ({_excerpt(prompts[i])!r}) has no reference answer; math_answer "
                                 "quality needs one (set prompts.reference_field)", field="reference")
        return [
            1.0 if resp.strip() and answers_match(extract_answer(resp), reference_answer(str(ref))) else 0.0
            for resp, ref in zip(responses, references, strict=True)
        ]


@register_quality("math_answer")
def _math_answer(cfg: QualityConfig) -> QualityScorer:
    return MathAnswerScorer()


# ---------------------------------------------------------------- gym

_ANSWER_LINE = re.compile(r"answer\s*:\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def gym_final_answer(text: str) -> str | None:
    """The one candidate a gym verifier sees (see the module docstring), or None for an empty response."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    at = text.lower().rfind("answer:")
    if at >= 0:
        tail = text[at + len("answer:"):].strip()
        # The answer runs to the end, unless the model goes on after a blank line.
        return tail.split("\n\n")[0].strip().strip("*").strip() or None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    lines = [ln.strip().strip("*").strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


class GymScorer:
    """Each task's own `score_answer`, one dataset object per task (the verifiers read only the entry)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def task(self, name: str) -> Any:
        with self._lock:
            if name not in self._tasks:
                import reasoning_gym

                self._tasks[name] = reasoning_gym.create_dataset(name, size=1, seed=0)
            return self._tasks[name]

    def verify(self, response: str, entry: dict[str, Any]) -> float:
        answer = gym_final_answer(response)
        if answer is None:
            return 0.0
        try:
            score = self.task(entry["task"]).score_answer(answer, entry)
        except Exception:  # a verifier that chokes on a malformed answer: not correct
            return 0.0
        return 1.0 if score is not None and float(score) >= 1.0 - 1e-9 else 0.0

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        out = []
        for i, (resp, ref) in enumerate(zip(responses, references, strict=True)):
            try:
                entry = json.loads(ref or "")
                entry["task"]
            except (ValueError, TypeError, KeyError):
                raise InputError(f"prompt {i + 1} ({_excerpt(prompts[i])!r}) has no gym entry as its reference; "
                                 "quality kind gym needs gym: prompts with prompts.reference_field: entry",
                                 field="reference") from None
            out.append(self.verify(resp, entry) if resp.strip() else 0.0)
        return out


@register_quality("gym")
def _gym(cfg: QualityConfig) -> QualityScorer:
    return GymScorer()


# ---------------------------------------------------------------- reward_model

class RewardModelScorer:
    """A sequence-classification reward model (num_labels=1); its logit for the conversation is the quality."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int = 2048) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # the model pools at the last non-pad token
            model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_config(cls, cfg: QualityConfig) -> RewardModelScorer:
        if not cfg.model:
            raise ConfigError("the reward_model quality scorer needs a model", key="quality.model")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from persyn.models import resolve, resolve_device, resolve_dtype

        try:  # registry names and .gguf files too
            location = resolve(cfg.model, trust_remote_code=cfg.trust_remote_code)
        except ConfigError as exc:
            raise ConfigError(str(exc), key="quality.model") from None
        device = resolve_device()
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=cfg.trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                location, trust_remote_code=cfg.trust_remote_code, dtype=resolve_dtype("auto", device),
                use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load reward model {cfg.model!r}: {exc}".splitlines()[0],
                              key="quality.model") from None
        return cls(model.to(device).eval(), tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)

    def conversation(self, prompt: str, response: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        import torch

        todo = [i for i, r in enumerate(responses) if r.strip()]
        texts = {i: self.conversation(prompts[i], responses[i]) for i in todo}
        todo.sort(key=lambda i: len(texts[i]), reverse=True)  # similar lengths share a batch: less padding
        scores: dict[int, float] = {}
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for s in range(0, len(todo), self.batch_size):
                batch = todo[s:s + self.batch_size]
                enc = self.tokenizer([texts[i] for i in batch], add_special_tokens=False, padding=True,
                                     truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                scores.update(zip(batch, logits[:, 0].float().tolist(), strict=True))
        worst = min(scores.values(), default=0.0)
        return [scores.get(i, worst) for i in range(len(responses))]


@register_quality("reward_model")
def _reward_model(cfg: QualityConfig) -> QualityScorer:
    return RewardModelScorer.from_config(cfg)
