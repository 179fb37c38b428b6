"""Classification losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss."""

from __future__ import annotations

import numpy as np

from lpuc.kernels._common import compute_dtype
from lpuc.kernels.registry import KernelContext, kernel
from lpuc.kernels.softmax import log_softmax

_REDUCTIONS = ("none", "sum", "mean")


def negative_log_likelihood(
    ctx: KernelContext, log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """-log_prob[n, target[n, d...], d...] * weight[target], reduced as the node's `reduction` says.

    `log_prob` is (N, C, d1, ...) and `target` (N, d1, ...); positions whose target equals
    `ignore_index` contribute nothing, neither loss nor weight.
    """
    reduction = ctx.attr("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{ctx.op_type}: reduction {reduction!r} is not one of {', '.join(_REDUCTIONS)}")
    if log_prob.ndim < 2 or target.shape != log_prob.shape[:1] + log_prob.shape[2:]:
        raise ValueError(
            f"{ctx.op_type}: target shape {target.shape} does not fit input shape {log_prob.shape}"
        )
    ignore_index = ctx.attr("ignore_index")
    counted = np.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    # Ignored positions may hold any label, even one out of range: gather class 0 there instead.
    label = np.where(counted, target, 0).astype(np.int64)
    classes = log_prob.shape[1]
    if np.any((label < 0) | (label >= classes)):
        raise ValueError(f"{ctx.op_type}: a target label is outside [0, {classes}) and is not ignore_index")
    picked = np.take_along_axis(log_prob, np.expand_dims(label, 1), axis=1).squeeze(1)
    if weight is None:
        position_weight = counted.astype(log_prob.dtype)
    else:
        position_weight = np.where(counted, weight.astype(log_prob.dtype)[label], 0).astype(log_prob.dtype)
    loss = -picked * position_weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    # The mean is weighted: it divides by the total weight of the counted positions.
    return np.sum(loss) / np.sum(position_weight)


@kernel("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(
    ctx: KernelContext, log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None
) -> np.ndarray:
    work = log_prob.astype(compute_dtype(log_prob.dtype), copy=False)
    return np.asarray(negative_log_likelihood(ctx, work, target, weight)).astype(log_prob.dtype, copy=False)


@kernel("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(
    ctx: KernelContext, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The loss, and the log-probabilities (softmax over the class axis 1) it was computed from."""
    log_prob = log_softmax(scores, axis=1)
    work = log_prob.astype(compute_dtype(log_prob.dtype), copy=False)
    loss = np.asarray(negative_log_likelihood(ctx, work, labels, weights))
    return loss.astype(scores.dtype, copy=False), log_prob
