"""Named settings for ``zoo quality --preset`` (explicit options override a preset).

* ``default`` -- every registered mixer, the four tasks at T = 64, three seeds, sized for a
  2-core CPU in under 30 minutes (docs/QUALITY.md, "Calibration notes", has the measurements):

  - the model: 2 blocks, d = 64, 2 heads, FFN 128 (the LRA / PoNet setting) with the token shift
    (``token_shift=True``: ``e_t + W e_{t-1}`` on the embeddings, the same for every mixer), so
    that one content-routing layer can do MQAR's lookup; without it softmax needs two layers
    (an induction head) and stays near 20% on MQAR after 1500 steps;
  - budgets: 150 steps of batch 16 on MQAR (softmax reaches 100% test accuracy on all three
    seeds at lr 3e-3; at 100 steps one seed is at 97.6%), 100 on the other tasks;
  - lrs 1e-3 and 3e-3 tried on seed 0 only (``lr_seeds=1``); seeds 1 and 2 run at the lr seed 0
    chose on validation: 4 cells per (mixer, task) instead of 6;
  - ``jobs=2``: two cells at once, one torch thread each (a cell's numbers do not depend on it);
  - val 200 / test 400 sequences (MQAR scores 8 queries per sequence): evaluation and set-up
    are about a sixth of a cell's time at these sizes.
* ``quick`` -- the same tasks and mixers at the smallest sizes and 20 steps, one lr, one seed, for
  CI (about a minute); it checks the pipeline, not the mixers.
* ``lra`` -- the LRA model settings of the PoNet / Skeinformer / Nystromformer LRA code for
  ListOps (2 layers, d = 64, 2 heads, FFN 128, batch 32, lr 1e-4, 5000 steps, T = 2000, no token
  shift), for GPU users; pair it with ``--listops-dir`` to train on the real LRA ListOps files.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        tasks=("mqar", "selective_copy", "listops", "ends"), lengths=(64,), depth=2, dim=64, heads=2, ffn=128, token_shift=True,
        batch=16, budget="100,mqar=150", lrs=(1e-3, 3e-3), seeds=3, lr_seeds=1, jobs=2, train_size=4000, val_size=200,
        test_size=400,
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
