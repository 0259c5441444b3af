"""Learnability (Eq. 1): the student's mean per-token log-probability of a teacher's response.

    L(x, y) = 1/|y| * sum_t log p_student(y_t | chat(x), y_<t)

computed with the student *before* fine-tuning, over exactly the tokens `persyn train` trains on: each pair is
tokenised as TRL's SFTTrainer tokenises the prompt-completion row that `persyn.experiments.train.to_prompt_completion`
makes of it, and the scored positions are SFT's completion mask.

- Chat models: prompt ids = `apply_chat_template([user], add_generation_prompt=True)`, full ids =
  `apply_chat_template([user, assistant])`, both tokenised together as the template renders them; the completion
  is what follows their common prefix. For ChatML that is `answer<|im_end|>\n`: how readily the student ends
  the answer where the teacher did is part of how learnable the response is.
- Base models (few-shot): prompt ids = `tokenizer(prompt)` (BOS included where the tokenizer adds one), full ids
  = `tokenizer(prompt + " " + answer + eos)`, as TRL appends the eos to a text completion.

Truncation: a pair longer than `max_length` keeps its start, as SFT's `keep_start` does. When the prompt alone
would leave fewer than `min_response_tokens` for the response, the prompt is cut instead (its head kept: BOS,
template, the start of the question) so that much response is still scored. Every cut pair is counted.

Speed: sequences are sorted by length and split into right-padded batches under a token budget where padding plus a
per-batch cost is least; the known decoder-only families run without an attention mask (causal attention never
sees the padding to the right of a token, and SDPA keeps its causal kernel); the decoder's hidden states are sliced
to the response positions before the lm_head, and log-probs come from a fused log_softmax + gather over chunks of
those positions, so no [batch, seq, vocab] tensor is ever built. Models outside those families fall back to the
model's own forward, with the padding mask, and `logits_to_keep` (or plain logits). On a CPU with several threads,
batches run in single-threaded streams, one per thread, rather than one stream with every op split across threads.
Packed (`pack`; the default on CUDA): each batch is one row with no padding at all, position ids restarting per
sequence and attention kept within each (persyn.scoring.packed); the head works as above.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from persyn.chat import format_prompt, format_response, uses_few_shot
from persyn.models.device import is_gpu
from persyn.scoring import packed

# Families whose causal-LM head is `lm_head(model(...).last_hidden_state)`, optionally with Gemma's final
# logit soft-capping. Others (e.g. Cohere's logit_scale, Granite's logits_scaling) take the fallback path.
_PLAIN_HEAD_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "olmo2", "smollm3",
})
_LOGIT_CHUNK_ELEMENTS = 1 << 25  # fp32 logits held at once in the head: 128 MiB
_BATCH_COST_TOKENS = 64  # what one more batch costs, in padded tokens, when choosing where batches split
_MAX_CPU_STREAMS = 8  # each stream holds one batch's activations


@dataclass
class LearnabilityResult:
    values: list[float | None]  # in input order; None for an empty response (and for a failed one)
    truncated: int  # responses cut to fit max_length
    tokens: int  # tokens run through the model (prompt + response, padding excluded)
    failed: list[int] = field(default_factory=list)  # indices not scored (a server gave up): not a score
    errors: list[str] = field(default_factory=list)  # why, the first few


@dataclass
class Encoded:
    ids: list[int]
    start: int  # index of the first scored response token (>= 1)
    truncated: bool


MIN_RESPONSE_TOKENS = 32  # response tokens kept when a long prompt is cut (at most half of max_length)


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """Leading tokens two sequences share; TRL's SFTTrainer starts the completion there."""
    n = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        n += 1
    return n


@dataclass
class Encoder:
    tokenizer: Any
    chat_template: str | None
    few_shot: bool | None
    max_length: int
    min_response_tokens: int = MIN_RESPONSE_TOKENS

    def __post_init__(self) -> None:
        from persyn.chat import template_text

        self.is_few_shot = uses_few_shot(self.tokenizer, self.few_shot, self.chat_template)
        template = None if self.chat_template in (None, "few-shot") else self.chat_template
        self.template = template_text(template, key="student.chat_template")

    def sft_ids(self, prompts: list[str], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, prompt + completion ids) per pair, as TRL's SFTTrainer tokenises persyn train's rows."""
        tok = self.tokenizer
        if not prompts:
            return []
        if self.is_few_shot:
            texts = [format_prompt(tok, p, few_shot=True) for p in prompts]
            eos = tok.eos_token or ""
            completions = [format_response(t, r, few_shot=True) for t, r in zip(texts, responses, strict=True)]
            completions = [c if c.endswith(eos) else c + eos for c in completions]
            prompt_ids = tok(texts)["input_ids"]
            full_ids = tok([t + c for t, c in zip(texts, completions, strict=True)])["input_ids"]
        else:
            users = [[{"role": "user", "content": p}] for p in prompts]
            prompt_ids = tok.apply_chat_template(users, tokenize=True, add_generation_prompt=True,
                                                 chat_template=self.template, return_dict=True)["input_ids"]
            convs = [[*u, {"role": "assistant", "content": r}] for u, r in zip(users, responses, strict=True)]
            full_ids = tok.apply_chat_template(convs, tokenize=True, chat_template=self.template,
                                               return_dict=True)["input_ids"]
        return [(list(p), list(f)) for p, f in zip(prompt_ids, full_ids, strict=True)]

    def __call__(self, prompts: list[str], responses: list[str]) -> list[Encoded | None]:
        todo = [i for i, r in enumerate(responses) if r.strip()]
        pairs = self.sft_ids([prompts[i] for i in todo], [responses[i] for i in todo])
        out: list[Encoded | None] = [None] * len(responses)
        for i, (p, full) in zip(todo, pairs, strict=True):
            out[i] = self._fit(common_prefix_length(p, full), full)
        return out

    def _fit(self, start: int, full: list[int]) -> Encoded | None:
        """SFT's keep_start truncation, except that a long prompt is cut to leave a minimum response budget."""
        completion = full[start:]
        if not completion:
            return None
        truncated = len(full) > self.max_length
        if truncated:
            budget = min(len(completion), max(1, min(self.min_response_tokens, self.max_length // 2)))
            head = min(start, self.max_length - budget)
            full, start = full[:head] + completion[: self.max_length - head], head
        if start == 0:  # nothing to condition the first token on: it cannot be scored
            start = 1
        if start >= len(full):
            return None
        return Encoded(ids=full, start=start, truncated=truncated)


def _batches(encoded: list[tuple[int, Encoded]], batch_tokens: int) -> Iterator[list[tuple[int, Encoded]]]:
    """Length-sorted batches, each within the budget (rows * longest row; a lone long row may exceed it), split where
    the padded tokens plus a per-batch cost are least (an exact dynamic programme over the sorted lengths)."""
    order = sorted(encoded, key=lambda item: len(item[1].ids))
    lengths = [len(e.ids) for _, e in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of batching the j shortest rows
    cut = [0] * (n + 1)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    for j in range(1, n + 1):
        width = lengths[j - 1]  # the longest row of any batch that ends at row j
        for i in range(j - 1, -1, -1):
            rows = j - i
            if rows > 1 and rows * width > batch_tokens:
                break
            cost = best[i] + _BATCH_COST_TOKENS + rows * width - (prefix[j] - prefix[i])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds = []
    j = n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    for i, j in bounds:  # the longest batch first: memory peaks at once, not at the end
        yield order[i:j]


def _head_parts(model: Any) -> tuple[Any, Any, float | None] | None:
    """(decoder, lm_head, softcap) when the model's logits are lm_head(decoder hidden states) [soft-capped]."""
    from transformers import PreTrainedModel

    config = model.config
    if not isinstance(model, PreTrainedModel) or config.model_type not in _PLAIN_HEAD_TYPES:  # e.g. PEFT wrappers
        return None
    decoder, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if decoder is None or head is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return decoder, head, getattr(text_config, "final_logit_softcapping", None)


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = logits.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    # log_softmax + gather in one fused kernel (torch.logsumexp is several passes over the chunk)
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def _logprobs_from_hidden(head: Any, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                          chunk_logprobs: Any = _chunk_logprobs) -> torch.Tensor:
    """log p(target) for rows of `hidden` [N, H], projecting through the head a chunk at a time."""
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    vocab = head.out_features if hasattr(head, "out_features") else head.weight.shape[0]
    elements = _LOGIT_CHUNK_ELEMENTS * (4 if hidden.is_cuda else 1)  # a GPU wants longer products, and has room
    chunk = max(1, elements // vocab)
    for s in range(0, targets.shape[0], chunk):
        out[s:s + chunk] = chunk_logprobs(head(hidden[s:s + chunk]), targets[s:s + chunk], softcap)
    return out


def _logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _score_batch(model: Any, batch: list[Encoded], pad_id: int, device: torch.device) -> list[float]:
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols = [], []
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        rows.extend([i] * (len(e.ids) - e.start))
        cols.extend(range(e.start, len(e.ids)))
    ids, mask = ids.to(device), mask.to(device)
    row_t = torch.tensor(rows, device=device)
    col_t = torch.tensor(cols, device=device)
    targets = ids[row_t, col_t]
    parts = _head_parts(model)
    if parts is not None:
        decoder, head, softcap = parts
        # No attention mask: rows are right-padded and attention is causal, so a real token only ever attends to
        # real tokens before it, and padding changes nothing that is scored. Without a mask SDPA runs its causal
        # kernel, which skips the blocks above the diagonal (half the attention) and needs no [b, 1, s, s] mask.
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        logp = _logprobs_from_hidden(head, hidden[row_t, col_t - 1], targets, softcap)
    elif "logits_to_keep" in inspect.signature(model.forward).parameters:
        first = int(col_t.min()) - 1
        keep = torch.arange(first, width - 1, device=device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        logp = torch.cat([_logprobs_from_logits(logits[r, col_t[row_t == r] - 1 - first], targets[row_t == r])
                          for r in range(len(batch))])
    else:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logp = torch.cat([_logprobs_from_logits(logits[r, col_t[row_t == r] - 1], targets[row_t == r])
                          for r in range(len(batch))])
    sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_t, logp.double())
    counts = torch.tensor([len(e.ids) - e.start for e in batch], dtype=torch.float64, device=device)
    return (sums / counts).tolist()


def _cpu_streams(device: torch.device) -> int:
    """On a CPU with several threads, one single-threaded stream of batches per thread instead of one stream whose
    every op is split across the threads: a small model's matrices are too small for the split to pay for its
    synchronisation (and a busy core stalls every op of a split stream). Values are the same: each batch is
    computed alone, as before."""
    return 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), _MAX_CPU_STREAMS))


@contextmanager
def _stream_pool(streams: int) -> Iterator[ThreadPoolExecutor | None]:
    if streams < 2:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // streams))  # what each stream's ops use (read when a thread starts)
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="persyn-score") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


class _EvalMode:
    def __init__(self, model: Any) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _use_packing(pack: bool | str, model: Any, device: torch.device) -> bool:
    """`auto`: packed on CUDA only (on a CPU the padded path was measured as fast; docs/performance.md)."""
    if pack not in (True, False, "auto"):
        raise ValueError(f"pack must be true, false or auto, not {pack!r}")
    if pack is False or _head_parts(model) is None or not packed.packable(model):
        return False
    return pack is True or is_gpu(device)


def learnability_scores(model: Any, tokenizer: Any, prompts: list[str], responses: list[str], *,
                        chat_template: str | None = None, few_shot: bool | None = None, max_length: int = 1024,
                        batch_tokens: int = 4096, pack: bool | str = "auto",
                        compile: bool = False) -> LearnabilityResult:
    """Eq. 1 for every (prompt, response) pair, batched; see the module docstring for the exact tokens scored.

    `pack`: run each batch as one row without padding (persyn.scoring.packed) where the model allows; `compile`:
    torch.compile the decoder for the packed path (cached on the model)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if max_length < 2:
        raise ValueError("max_length must leave room for one prompt and one response token")
    encode = Encoder(tokenizer, chat_template, few_shot, max_length)
    present = [(i, e) for i, e in enumerate(encode(prompts, responses)) if e is not None]
    values: list[float | None] = [None] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    use_pack = _use_packing(pack, model, device)
    streams = 1 if use_pack and compile else _cpu_streams(device)  # one thread compiles, and runs, the graph
    # Each stream's batches get its share of the token budget: the same memory in all, and enough batches for the
    # streams to stay busy to the end.
    split = packed.pack_batches if use_pack else _batches
    batches = list(split(present, max(1, batch_tokens // streams)))
    streams = min(streams, len(batches))
    if use_pack:
        decoder, head, softcap = _head_parts(model)  # type: ignore[misc]
        to_logprobs = _logprobs_from_hidden
        if compile:
            decoder = packed.compiled_decoder(decoder)
            to_logprobs = partial(_logprobs_from_hidden, chunk_logprobs=packed.compiled_function(_chunk_logprobs))

    def score_batch(batch: list[Encoded]) -> list[float]:
        if use_pack:
            return packed.score_packed(decoder, head, softcap, batch, device, to_logprobs)
        return _score_batch(model, batch, pad_id, device)

    def score(batch: list[tuple[int, Encoded]]) -> None:
        with torch.inference_mode():  # thread-local, so entered in every stream
            for (i, _), value in zip(batch, score_batch([e for _, e in batch]), strict=True):
                values[i] = value

    attention = packed.packed_attention_mode(model) if use_pack else nullcontext()
    with _EvalMode(model), attention, _stream_pool(streams) as pool:
        if pool is None:
            for batch in batches:
                score(batch)
        else:  # batches are taken longest first, by whichever stream is free
            futures = [pool.submit(score, batch) for batch in batches]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return LearnabilityResult(values=values, truncated=sum(e.truncated for _, e in present),
                              tokens=sum(len(e.ids) for _, e in present))


def naive_learnability(model: Any, tokenizer: Any, prompt: str, response: str, *, chat_template: str | None = None,
                       few_shot: bool | None = None, max_length: int = 1024) -> float:
    """Reference: one unpadded forward pass, full logits, log_softmax, mean over the response tokens."""
    e = Encoder(tokenizer, chat_template, few_shot, max_length)([prompt], [response])[0]
    if e is None:
        raise ValueError("empty response: learnability is undefined")
    ids = torch.tensor([e.ids], device=_device(model))
    with _EvalMode(model), torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    targets = ids[0, e.start:]
    return logprobs[e.start - 1:-1].gather(-1, targets[:, None]).mean().item()
