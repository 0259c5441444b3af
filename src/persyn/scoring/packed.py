"""Packed learnability scoring: the sequences of a batch concatenated into one row, with no padding at all.

Each pack is one row of `sum(len(seq))` tokens (batch dim 1); position ids restart at 0 for every sequence (so RoPE
sees what it sees in a row of its own) and attention is restricted to each sequence by its cumulative boundaries
(`cu_seq_lens_q`, the kwargs transformers' flash-attention path reads):

- CUDA, half precision: one varlen flash-attention kernel over the whole pack (`torch.nn.attention.varlen`, built
  into torch; or flash-attn itself when the model was loaded with `flash_attention_2/3/4`);
- elsewhere (a CPU, fp32): causal SDPA over each sequence in turn, so no [T, T] mask is ever built and no attention
  is computed across sequences.

The decoder's hidden states are sliced to the response positions before the lm_head, with the same chunked fused
log_softmax + gather as the padded path. `torch.compile` of the decoder (opt-in) is cached on the model, with
dynamic shapes so packs of any length share one graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F

from persyn.models.device import is_gpu, is_half

ATTENTION = "persyn_packed"
_FLASH = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
_COMPILED = "_persyn_compiled_decoder"


try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9: per-sequence SDPA on CUDA too
    varlen_attn = None


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, softcap: float | None = None,
                     cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence; q, k, v are [1, heads, T, head_dim], the output [1, T, heads,
    head_dim] as transformers' attention functions return it."""
    if cu_seq_lens_q is None or attention_mask is not None or softcap is not None or query.shape[0] != 1:
        raise ValueError("persyn_packed attention takes one packed row, its cu_seq_lens_q, no mask and no softcap")
    gqa = query.shape[1] != key.shape[1]
    if is_gpu(query.device) and is_half(query.dtype) and varlen_attn is not None:
        window = (sliding_window - 1 if sliding_window else -1, 0)  # (-1, 0): plain causal
        out = varlen_attn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu_seq_lens_q,
                     cu_seq_lens_q, max_length_q, max_length_q, scale=scaling, window_size=window, enable_gqa=gqa)
        return out.unsqueeze(0), None
    return _per_sequence_attention(query, key, value, cu_seq_lens_q, scaling, sliding_window, gqa), None


@torch.compiler.disable  # its loop follows the pack's layout: compiled, each new layout would be a new graph
def _per_sequence_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
                            scaling: float | None, sliding_window: int | None, gqa: bool) -> torch.Tensor:
    bounds = cu_seq_lens.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        mask = None
        if sliding_window is not None and e - s > sliding_window:  # q - kv < window, as transformers' overlay
            i = torch.arange(e - s, device=query.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < sliding_window)
        outs.append(F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                   attn_mask=mask, is_causal=mask is None, scale=scaling,
                                                   enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)


def packable(model: Any) -> bool:
    """Whether a plain-head model's attention is what `packed_attention` computes: causal, no logit soft-capping."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (getattr(text, "attn_logit_softcapping", None) is None
            and not getattr(text, "use_bidirectional_attention", False) and getattr(text, "is_causal", True))


@contextmanager
def packed_attention_mode(model: Any) -> Iterator[None]:
    """The model's attention set to the packed kernel for the duration (a flash-attn model keeps its own, which reads
    the same cu_seq_lens kwargs); no mask is built, as transformers builds none for an unregistered mask kind."""
    config = model.config
    before = config._attn_implementation
    if before in _FLASH:
        yield
        return
    _register()
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def compiled_decoder(decoder: Any) -> Any:
    """The decoder compiled with dynamic shapes, cached on it: compiled once per process, on its first call."""
    cached = decoder.__dict__.get(_COMPILED)
    if cached is None:
        cached = decoder.__dict__[_COMPILED] = torch.compile(decoder, dynamic=True)  # not a registered submodule
    return cached


@cache
def compiled_function(fn: Any) -> Any:
    """`fn` compiled with dynamic shapes: for the head, the up-cast, soft-cap and log_softmax + gather of a chunk of
    logits in one pass over them."""
    return torch.compile(fn, dynamic=True)


def pack_batches(items: list[tuple[int, Any]], budget: int) -> Iterator[list[tuple[int, Any]]]:
    """Packs of at most `budget` tokens (a longer sequence alone), first fit over lengths in decreasing order: with
    no padding, only the number of packs matters, and this keeps it near total / budget. The largest pack first."""
    packs: list[list[tuple[int, Any]]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda it: -len(it[1].ids)):
        n = len(item[1].ids)
        for k, free in enumerate(room):
            if n <= free:
                packs[k].append(item)
                room[k] -= n
                break
        else:
            packs.append([item])
            room.append(budget - n)
    yield from packs


def score_packed(decoder: Any, head: Any, softcap: float | None, batch: list[Any], device: torch.device,
                 logprobs_from_hidden: Any) -> list[float]:
    """Mean response log-prob of each encoded sequence in `batch`, all run as one packed row."""
    lengths = [len(e.ids) for e in batch]
    ids = torch.tensor([t for e in batch for t in e.ids], device=device)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    offsets = list(accumulate(lengths, initial=0))
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    cols = torch.tensor([o + c for o, e in zip(offsets[:-1], batch, strict=True) for c in range(e.start, len(e.ids))],
                        device=device)
    seq = torch.tensor([i for i, e in enumerate(batch) for _ in range(e.start, len(e.ids))], device=device)
    hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                     max_length_q=max(lengths), max_length_k=max(lengths)).last_hidden_state[0]
    logp = logprobs_from_hidden(head, hidden[cols - 1], ids[0, cols], softcap)
    sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, seq, logp.double())
    counts = torch.tensor([n - e.start for n, e in zip(lengths, batch, strict=True)], dtype=torch.float64,
                          device=device)
    return (sums / counts).tolist()
