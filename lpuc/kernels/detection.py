"""Object detection post-processing: NonMaxSuppression."""

from __future__ import annotations

import numpy as np

from lpuc.kernels._common import float_scalar, int_scalar
from lpuc.kernels.registry import KernelContext, kernel


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """Boxes as (y_min, x_min, y_max, x_max), whichever diagonal or center format they come in."""
    boxes = boxes.astype(np.float64)
    if center_point_box == 1:
        x_center, y_center, width, height = np.moveaxis(boxes, -1, 0)
        return np.stack(
            [y_center - height / 2, x_center - width / 2, y_center + height / 2, x_center + width / 2],
            axis=-1,
        )
    if center_point_box != 0:
        raise ValueError(f"NonMaxSuppression: unsupported center_point_box {center_point_box}")
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1)


def _pairwise_iou(corners: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes; 0 where the union is empty."""
    top_left = np.maximum(corners[:, None, :2], corners[None, :, :2])
    bottom_right = np.minimum(corners[:, None, 2:], corners[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = np.prod(corners[:, 2:] - corners[:, :2], axis=-1)
    union = area[:, None] + area[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def _select(
    corners: np.ndarray, scores: np.ndarray, limit: int, iou_threshold: float, score_threshold: float | None
) -> list[int]:
    """Greedy selection by descending score (ties: lower index first) of one batch entry and class."""
    candidates = np.argsort(-scores, kind="stable")
    if score_threshold is not None:
        candidates = candidates[scores[candidates] > score_threshold]
    iou = _pairwise_iou(corners[candidates])
    suppressed = np.zeros(len(candidates), dtype=bool)
    selected: list[int] = []
    for i in range(len(candidates)):
        if len(selected) >= limit:
            break
        if suppressed[i]:
            continue
        selected.append(int(candidates[i]))
        suppressed |= iou[i] > iou_threshold
    return selected


@kernel("NonMaxSuppression")
def non_max_suppression(
    ctx: KernelContext,
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output_boxes_per_class: np.ndarray | None = None,
    iou_threshold: np.ndarray | None = None,
    score_threshold: np.ndarray | None = None,
) -> np.ndarray:
    limit = int_scalar(max_output_boxes_per_class, 0)
    iou_limit = 0.0 if iou_threshold is None else float_scalar(iou_threshold)
    min_score = None if score_threshold is None else float_scalar(score_threshold)
    corners = _corners(boxes, int(ctx.attr("center_point_box", 0)))
    selected = [
        (b, c, box)
        for b in range(scores.shape[0])
        for c in range(scores.shape[1])
        for box in _select(corners[b], scores[b, c].astype(np.float64), limit, iou_limit, min_score)
    ]
    return np.array(selected, dtype=np.int64).reshape(-1, 3)
