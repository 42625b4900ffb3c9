"""Named sweep settings (``zoo profile --preset``): values a preset sets; anything the caller passes
explicitly wins. ``"mixers": None`` = every registered mixer."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "description": "all mixers, 1k..16k, forward and train, mixer scope, D=256, 4 heads, B=1",
        "mixers": None,
        "lengths": "1k..16k",
        "modes": ("forward", "train"),
        "scope": "mixer",
        "batch": 1,
        "dim": 256,
        "heads": 4,
        "time_budget": 2.0,
    },
    "quick": {
        "description": "all mixers, 256..1k, forward and train, D=256, 1 thread, short timing (a minute or two)",
        "mixers": None,
        "lengths": "256..1k",
        "modes": ("forward", "train"),
        "scope": "mixer",
        "batch": 1,
        "dim": 256,
        "heads": 4,
        "time_budget": 0.25,
        # one thread: a busy machine (or `zoo compare` next to other work) does not make OpenMP
        # barriers spin, so the small cells' ratios stay meaningful
        "threads": 1,
    },
    "ponet-table2": {
        "description": (
            "PoNet Table 2: the LRA text config of lxchtan/PoNet (2 layers, d=64, 2x32 heads, FFN 128, vocab 512, "
            "learned positions, mean pooling, dropout 0.1, attention dropout 0.1, B=32), train steps, 512..16k"
        ),
        # the LRA code drops attention weights only in its softmax attention
        "mixers": "softmax[impl=eager,attention_dropout=0.1],performer,nystrom,fnet,ponet",
        "lengths": "512..16k",
        "modes": ("train",),
        "scope": "model",
        "batch": 32,
        "dim": 64,
        "heads": 2,
        "depth": 2,
        "ffn": 128,
        "vocab": 512,
        "classes": 2,
        "dropout": 0.1,  # lra_config.py "dropout_prob"; its "attention_dropout" 0.1 is softmax's field above
        "time_budget": 2.0,
    },
}
