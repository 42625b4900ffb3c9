"""Named settings for ``zoo quality --preset`` (explicit options override a preset).

* ``default`` -- every registered mixer, the four tasks, CPU-sized (2 blocks, d = 64, T = 64,
  batch 16, 150 steps, a two-point lr grid, two seeds): about half an hour on a 2-core CPU with
  14 mixers; short enough to run, too short for most mixers to learn MQAR (see docs/QUALITY.md).
* ``quick`` -- the same grid at the smallest sizes and a few steps, for CI (minutes); it checks
  the pipeline, not the mixers.
* ``lra`` -- the LRA model settings of the PoNet / Skeinformer / Nystromformer LRA code for
  ListOps (2 layers, d = 64, 2 heads, FFN 128, batch 32, lr 1e-4, 5000 steps, T = 2000), for GPU
  users; pair it with ``--listops-dir`` to train on the real LRA ListOps files.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        tasks=("mqar", "selective_copy", "listops", "ends"), lengths=(64,), depth=2, dim=64, heads=2, ffn=128, token_shift=True,
        batch=16, budget="150", lrs=(1e-3, 3e-3), seeds=3, lr_seeds=1, jobs=2, train_size=4000, val_size=400, test_size=800,
    ),
    "quick": dict(
        tasks=("mqar", "selective_copy", "listops", "ends"), lengths=(32,), depth=1, dim=32, heads=2, ffn=64, token_shift=True,
        batch=16, budget="20", lrs=(3e-3,), seeds=1, lr_seeds=None, jobs=1, train_size=512, val_size=64, test_size=128,
    ),
    "lra": dict(
        tasks=("listops",), lengths=(2000,), depth=2, dim=64, heads=2, ffn=128, token_shift=False, batch=32, budget="5000",
        lrs=(1e-4,), seeds=1, lr_seeds=None, jobs=1, train_size=96000, val_size=2000, test_size=2000, warmup=0.2, weight_decay=0.0,
    ),
}
