"""Prompt conditions of stored pairs: distinct prompts encoded once per shard, rebuilt per batch.

A shard stores, per text-conditional modality, a table of its distinct prompts' embeddings
(``{m}_cond``, ``{m}_pooled``) and ``caption_index``; :func:`batch_conditions` turns a
collated batch back into :class:`~mmdisco.bases.protocol.Condition` objects with the bases'
own unconditional embedding and guidance scale.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mmdisco.bases.protocol import Condition

_EMPTY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def empty_conditions(bases) -> dict[str, Condition | None]:
    """``bases.encode_prompt([""])`` computed once per bases object and device (None for a
    modality that takes no prompt)."""
    device = _device_of(bases)
    cached = _EMPTY.get(bases)
    if cached is None or cached[0] != device:
        conds = bases.encode_prompt([""]) if bases.text_conditional else {}
        _EMPTY[bases] = cached = (device, conds)
    return cached[1]


def prompt_tables(bases, prompts: list[str]) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """Encode the distinct prompts once: ({m_cond: (U, ...), m_pooled: (U, D)} on the CPU,
    caption_index (n,) long, the distinct prompts in order of first use)."""
    distinct = list(dict.fromkeys(prompts))
    caption_index = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long)
    tables = {}
    conds = bases.encode_prompt(distinct) if bases.text_conditional else {}
    for m in bases.conditional_names:
        cond = conds[m]
        if not isinstance(cond.cond, Tensor):
            raise TypeError(f"{m} base condition is {type(cond.cond).__name__}, not a tensor")
        tables[f"{m}_cond"] = cond.cond.detach().cpu()
        if cond.pooled is not None:
            tables[f"{m}_pooled"] = cond.pooled.detach().cpu().clone()  # may alias cond
    return tables, caption_index, distinct


def batch_conditions(bases, batch: Mapping[str, Any]) -> dict[str, Condition | None]:
    """Rebuild each modality's Condition for a collated ShardedPairs batch: cond (B, ...) and
    pooled (B, D) from the batch, uncond / pooled_uncond (1, ...) from the bases' empty
    prompt (computed once per bases), guidance scale from the base. None for a modality
    without ``{m}_cond`` in the batch (an unconditional base)."""
    out: dict[str, Condition | None] = {}
    for m in bases.names:
        if f"{m}_cond" not in batch:
            out[m] = None
            continue
        empty = empty_conditions(bases).get(m)
        if empty is None:
            raise ValueError(f"the batch has {m}_cond but the {m} base is not text-conditional")
        device = _device_of(bases)
        pooled = batch.get(f"{m}_pooled")
        out[m] = Condition(
            cond=batch[f"{m}_cond"].to(device),
            uncond=empty.uncond if empty.uncond is not None else empty.cond,
            guidance_scale=empty.guidance_scale,
            pooled=None if pooled is None else pooled.to(device),
            pooled_uncond=empty.pooled_uncond if empty.pooled_uncond is not None else empty.pooled,
        )
    return out


def _device_of(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
