"""One training run: ``zoo.models.Encoder`` on a task's splits with AdamW, warm-up and a budget.

Deterministic on CPU for a given seed and thread count: the seed fixes the initial weights,
the mixers' own generators are built from their configs, and the batch order comes from a
``torch.Generator`` seeded with the same seed. A wall-clock budget trades that away (the
number of steps then depends on the machine), which the record says (``budget_kind``).

The learning rate warms up linearly over ``warmup`` of the planned steps, then decays with a
cosine to 10% of its peak. With a wall-clock budget the planned steps are estimated from the
first steps' time (past the plan the lr stays at 10%). A non-finite loss stops the run with status ``diverged``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from profiler.quality.tasks import IGNORE, Split, Task

__all__ = ["TrainConfig", "train_run", "evaluate", "lr_factor"]


@dataclass(frozen=True)
class TrainConfig:
    """Model size and optimisation of one run (the lr and seed vary per run)."""

    depth: int = 2  # encoder blocks
    dim: int = 64  # model width D
    heads: int = 2  # heads of each mixer
    ffn: int = 128  # FFN hidden width
    token_shift: bool = False  # Encoder(token_shift=): e_t + W e_{t-1} on the embeddings
    batch: int = 32  # sequences per step
    steps: int | None = 300  # step budget (None: wall-clock budget only)
    seconds: float | None = None  # wall-clock budget of the training loop
    warmup: float = 0.1  # fraction of the planned steps spent warming up
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    clip: float = 1.0  # gradient-norm clip
    eval_batch: int = 256  # sequences per evaluation forward
    timeout_s: float | None = None  # a step-budget run still training after this: status timeout


def lr_factor(step: int, planned: int, warmup: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, cosine decay to 0.1."""
    w = max(1, int(round(warmup * planned)))
    if step < w:
        return (step + 1) / w
    progress = min(1.0, (step - w) / max(1, planned - w))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    tokens = torch.from_numpy(np.ascontiguousarray(split.tokens, dtype=np.int64))
    mask = None if split.mask.all() else torch.from_numpy(np.ascontiguousarray(split.mask, dtype=bool))
    return tokens, mask, torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.int64))


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, eval_batch: int, limit: int | None = None) -> dict[str, float]:
    """Accuracy and mean loss over the scored positions (token tasks) or sequences."""
    tokens, mask, labels = _tensors(split)
    n = len(tokens) if limit is None else min(limit, len(tokens))
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, n, eval_batch):
        j = min(n, i + eval_batch)
        logits = model(tokens[i:j], None if mask is None else mask[i:j]).float()  # (b, C) or (b, T, C)
        y = labels[i:j]
        if logits.dim() == 3:
            logits, y = logits.flatten(0, 1), y.flatten()  # (b*T, C), (b*T,)
        scored = y != IGNORE
        logits, y = logits[scored], y[scored]
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1), "scored": total}


def _build(task: Task, mixer: str, overrides: dict[str, Any], T: int, cfg: TrainConfig, seed: int):
    from zoo.models import Encoder

    torch.manual_seed(seed)
    return Encoder(
        mixer=mixer, depth=cfg.depth, dim=cfg.dim, heads=cfg.heads, vocab=task.vocab, classes=task.classes,
        ffn=cfg.ffn, max_len=T, mixer_overrides=overrides, head="token" if task.level == "token" else "pool",
        token_shift=cfg.token_shift,
    )


def train_run(
    task: Task, splits: dict[str, Split], mixer: str, overrides: dict[str, Any], T: int,
    cfg: TrainConfig, lr: float, seed: int,
) -> dict[str, Any]:
    """Train once and evaluate on train (a subset), val and test. Returns the measured fields of a
    record (status ok, diverged or timeout; exceptions propagate to the caller)."""
    model = _build(task, mixer, overrides, T, cfg, seed)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    tokens, mask, labels = _tensors(splits["train"])
    order = torch.Generator().manual_seed(seed)
    planned = cfg.steps or 10**9
    status, reason, step, loss_value = "ok", None, 0, float("nan")
    t0 = time.perf_counter()
    train_time = 0.0
    model.train()
    while cfg.steps is None or step < cfg.steps:  # a wall-clock budget breaks out below
        idx = torch.randint(0, len(tokens), (cfg.batch,), generator=order)  # (B,)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, planned, cfg.warmup)
        loss = model.loss(tokens[idx], labels[idx], None if mask is None else mask[idx])
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            status, reason = "diverged", f"non-finite training loss at step {step + 1}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        train_time = time.perf_counter() - t0
        if cfg.seconds is not None:
            if train_time >= cfg.seconds:
                break
            if cfg.steps is None and step == 5:  # plan the schedule from the first steps' pace
                planned = max(step + 1, int(cfg.seconds / (train_time / step)))
        if cfg.timeout_s is not None and train_time > cfg.timeout_s:
            status, reason = "timeout", f"still training after {cfg.timeout_s:g} s (step {step} of {planned})"
            break
    tokens_seen = step * cfg.batch * T
    out: dict[str, Any] = {
        "status": status, "reason": reason, "steps": step, "planned_steps": planned if cfg.steps else None,
        "tokens_seen": tokens_seen, "train_time_s": round(train_time, 4),
        "tokens_per_s": tokens_seen / train_time if train_time > 0 else None,
        "params": params, "final_train_loss": loss_value if math.isfinite(loss_value) else None,
    }
    if status == "diverged":
        return out
    for name, split in splits.items():
        metrics = evaluate(model, split, cfg.eval_batch, limit=len(splits["test"]) if name == "train" else None)
        out[f"{name}_acc"], out[f"{name}_loss"] = metrics["acc"], metrics["loss"]
    return out
