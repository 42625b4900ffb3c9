"""Gated delta-rule oracles: the recurrence with a decay and the layer, from the delta-rule oracle.

The token-by-token update is :func:`zoo.reference.deltanet.delta_rule_recurrent` with a log
decay g (``S_t = exp(g_t) S_{t-1} + beta_t k_t^T (v_t - exp(g_t) k_t S_{t-1})``); the layer
oracle reads the mixer's decay (A_log, dt_bias, a_proj) and output gate (g_proj).
"""

from __future__ import annotations

import torch

from zoo.reference.deltanet import delta_layer_reference, delta_rule_recurrent


def gated_delta_rule_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Token-by-token gated delta rule; (B, H, T, .) inputs, argument order of the fast op."""
    return delta_rule_recurrent(q, k, v, beta, g, scale)


gated_deltanet_reference = delta_layer_reference  # the layer oracle reads the gate parameters when present
