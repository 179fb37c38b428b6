"""Classic ML ops: TreeEnsemble and LabelEncoder (ai.onnx.ml) and TfIdfVectorizer (ai.onnx)."""

from __future__ import annotations

import numpy as np

from lpuc.kernels.registry import KernelContext, kernel

ML_DOMAIN = "ai.onnx.ml"

_BRANCH_MODES = ("LEQ", "LT", "GTE", "GT", "EQ", "NEQ", "MEMBER")
_AGGREGATES = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}


def _erfinv(x: np.ndarray) -> np.ndarray:
    """Inverse error function: Giles' single-precision polynomial approximation (2010); ±inf at ±1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = -np.log((1 - x) * (1 + x))
        central = w - 2.5
        p_central = np.polyval(
            [2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 2.1858087e-04,
             -1.25372503e-03, -4.17768164e-03, 2.46640727e-01, 1.50140941],
            central,
        )  # fmt: skip
        tail = np.sqrt(np.maximum(w, 5)) - 3
        p_tail = np.polyval(
            [-2.00214257e-04, 1.00950558e-04, 1.34934322e-03, -3.67342844e-03, 5.73950773e-03,
             -7.6224613e-03, 9.43887047e-03, 1.00167406, 2.83297682],
            tail,
        )  # fmt: skip
        approximation = np.where(w < 5, p_central, p_tail) * x
    return np.where(np.abs(x) == 1, np.copysign(np.inf, x), approximation)


def _softmax(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Softmax over the last axis restricted to `keep`; entries outside it are 0."""
    shifted = np.where(keep, scores, -np.inf)
    exp = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


_POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


def _post_transform(scores: np.ndarray, transform: int) -> np.ndarray:
    """TreeEnsemble's score transform, by the spec's enum (onnxruntime swaps SOFTMAX and LOGISTIC)."""
    name = _POST_TRANSFORMS[transform] if 0 <= transform < len(_POST_TRANSFORMS) else None
    if name == "NONE":
        return scores
    if name == "SOFTMAX":
        return _softmax(scores, np.ones(scores.shape, dtype=bool))
    if name == "LOGISTIC":
        return 1 / (1 + np.exp(-scores))
    if name == "SOFTMAX_ZERO":
        return np.where(scores != 0, _softmax(scores, scores != 0), 0)
    if name == "PROBIT":
        return np.sqrt(2) * _erfinv(2 * scores - 1)
    raise ValueError(f"TreeEnsemble: unsupported post_transform {transform}")


def _membership_sets(modes: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """NaN-delimited member lists of the BRANCH_MEMBER nodes as a (nodes, widest set) NaN-padded table."""
    member_nodes = np.flatnonzero(modes == _BRANCH_MODES.index("MEMBER"))
    sets: list[np.ndarray] = []
    if values is not None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        boundaries = np.flatnonzero(np.isnan(values))
        sets = [s for s in np.split(values, boundaries + 1) if len(s)]
        sets = [s[~np.isnan(s)] for s in sets]
    if len(sets) < len(member_nodes):
        raise ValueError("TreeEnsemble: membership_values has fewer sets than BRANCH_MEMBER nodes")
    table = np.full((len(modes), max([len(s) for s in sets] + [1])), np.nan)
    for node, members in zip(member_nodes, sets):
        table[node, : len(members)] = members
    return table


def _branch_taken(modes: np.ndarray, x: np.ndarray, split: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Whether each (sample, tree) goes down the true branch of its current node."""
    conditions = [
        x <= split,
        x < split,
        x >= split,
        x > split,
        x == split,
        x != split,
        (x[..., None] == members).any(axis=-1),
    ]
    return np.select([modes == i for i in range(len(_BRANCH_MODES))], conditions, False)


@kernel("TreeEnsemble", domain=ML_DOMAIN)
def tree_ensemble(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    features = x.astype(np.float64).reshape(x.shape[0], -1)
    modes = np.asarray(ctx.attr("nodes_modes")).astype(np.int64)
    if modes.size and modes.max() >= len(_BRANCH_MODES):
        raise ValueError(f"TreeEnsemble: unsupported node mode {modes.max()}")
    feature_ids = np.asarray(ctx.attr("nodes_featureids"), dtype=np.int64)
    splits = np.asarray(ctx.attr("nodes_splits"), dtype=np.float64).reshape(-1)
    members = _membership_sets(modes, ctx.attr("membership_values"))
    nan_goes_true = np.asarray(ctx.attr("nodes_missing_value_tracks_true") or [0] * len(modes), dtype=bool)
    # Each side of a node: (is that child a leaf, child index into nodes_* or leaf_*).
    children = {
        True: (
            np.asarray(ctx.attr("nodes_trueleafs"), bool),
            np.asarray(ctx.attr("nodes_truenodeids"), np.int64),
        ),
        False: (
            np.asarray(ctx.attr("nodes_falseleafs"), bool),
            np.asarray(ctx.attr("nodes_falsenodeids"), np.int64),
        ),
    }

    # Walk every (sample, tree) pair down its tree together, one level per iteration.
    roots = np.asarray(ctx.attr("tree_roots"), dtype=np.int64)
    node = np.broadcast_to(roots, (features.shape[0], len(roots))).copy()
    leaf = np.full(node.shape, -1, dtype=np.int64)
    rows = np.arange(features.shape[0])[:, None]
    for _ in range(len(modes) + 1):
        walking = leaf < 0
        if not walking.any():
            break
        value = features[rows, feature_ids[node]]
        taken = np.where(
            np.isnan(value),
            nan_goes_true[node],
            _branch_taken(modes[node], value, splits[node], members[node]),
        )
        is_leaf = np.where(taken, children[True][0][node], children[False][0][node])
        target = np.where(taken, children[True][1][node], children[False][1][node])
        leaf = np.where(walking & is_leaf, target, leaf)
        node = np.where(walking & ~is_leaf, target, node)
    if (leaf < 0).any():
        raise ValueError("TreeEnsemble: a tree has a cycle")

    weights = np.asarray(ctx.attr("leaf_weights"), dtype=np.float64).reshape(-1)[leaf]
    targets = np.asarray(ctx.attr("leaf_targetids"), dtype=np.int64)[leaf]
    scores = _aggregate(ctx, weights, targets, int(ctx.attr("n_targets")))
    return _post_transform(scores, int(ctx.attr("post_transform", 0))).astype(x.dtype)


def _aggregate(ctx: KernelContext, weights: np.ndarray, targets: np.ndarray, n_targets: int) -> np.ndarray:
    """Combine the (sample, tree) leaf weights per target; targets no leaf reaches score 0."""
    aggregate = _AGGREGATES.get(int(ctx.attr("aggregate_function", 1)))
    samples = np.broadcast_to(np.arange(weights.shape[0])[:, None], weights.shape)
    hit = np.zeros((weights.shape[0], n_targets), dtype=bool)
    hit[samples, targets] = True
    if aggregate in ("SUM", "AVERAGE"):
        scores = np.zeros((weights.shape[0], n_targets))
        np.add.at(scores, (samples, targets), weights)
        return scores / weights.shape[1] if aggregate == "AVERAGE" else scores
    if aggregate == "MIN":
        scores = np.full((weights.shape[0], n_targets), np.inf)
        np.minimum.at(scores, (samples, targets), weights)
    elif aggregate == "MAX":
        scores = np.full((weights.shape[0], n_targets), -np.inf)
        np.maximum.at(scores, (samples, targets), weights)
    else:
        raise ValueError(f"TreeEnsemble: unsupported aggregate_function {ctx.attr('aggregate_function')}")
    return np.where(hit, scores, 0)


def _attr_array(ctx: KernelContext, prefix: str) -> np.ndarray | None:
    """The one of {prefix}_int64s / _floats / _strings / _tensor that is set, as a 1-D array."""
    for suffix, dtype in (
        ("int64s", np.int64),
        ("floats", np.float32),
        ("strings", object),
        ("tensor", None),
    ):
        value = ctx.attr(f"{prefix}_{suffix}")
        if value is not None:
            return np.asarray(value, dtype=dtype).reshape(-1)
    return None


def _label_default(ctx: KernelContext, values: np.ndarray) -> np.ndarray:
    """The value for unknown keys, of the values' type."""
    if ctx.attr("default_tensor") is not None:
        return np.asarray(ctx.attr("default_tensor")).reshape(-1)[0]
    if values.dtype.kind in "iu":
        return np.asarray(ctx.attr("default_int64", -1), dtype=values.dtype)
    if values.dtype.kind == "f":
        return np.asarray(ctx.attr("default_float", -0.0), dtype=values.dtype)
    return np.asarray(ctx.attr("default_string", "_Unused"), dtype=object)


@kernel("LabelEncoder", domain=ML_DOMAIN)
def label_encoder(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    keys, values = _attr_array(ctx, "keys"), _attr_array(ctx, "values")
    if keys is None or values is None or len(keys) != len(values) or not len(keys):
        raise ValueError("LabelEncoder: keys and values must be given, with equal lengths")
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_values = keys[order], values[order]
    # The last of repeated keys wins: search to the right of equal keys.
    position = np.clip(np.searchsorted(sorted_keys, x, side="right") - 1, 0, len(keys) - 1)
    found = sorted_keys[position] == x
    if keys.dtype.kind == "f":  # a NaN key matches every NaN input
        nan_keys = np.flatnonzero(np.isnan(sorted_keys))
        if nan_keys.size:
            is_nan = np.isnan(x.astype(np.float64))
            position = np.where(is_nan, nan_keys[-1], position)
            found = found | is_nan
    return np.where(found, sorted_values[position], _label_default(ctx, values)).astype(values.dtype)


def _ngram_pool(ctx: KernelContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per n-gram length n (1-based list position): (pool n-grams (P, n), their pool indices (P,))."""
    ints = ctx.attr("pool_int64s")
    pool = np.asarray(ints, np.int64) if ints is not None else np.asarray(ctx.attr("pool_strings"), object)
    starts = list(ctx.attr("ngram_counts")) + [len(pool)]
    groups = []
    index = 0
    for n, (begin, end) in enumerate(zip(starts, starts[1:]), start=1):
        if (end - begin) % n:
            raise ValueError(
                f"TfIdfVectorizer: the pool's {n}-grams are {end - begin} items, not whole {n}-grams"
            )
        ngrams = pool[begin:end].reshape(-1, n)
        groups.append((ngrams, np.arange(index, index + len(ngrams))))
        index += len(ngrams)
    return groups


@kernel("TfIdfVectorizer")
def tfidf_vectorizer(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    mode = ctx.attr("mode")
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"TfIdfVectorizer: unsupported mode {mode!r}")
    output_index = np.asarray(ctx.attr("ngram_indexes"), dtype=np.int64)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    length = rows.shape[1]
    counts = np.zeros((rows.shape[0], len(output_index)), dtype=np.float32)
    min_n, max_n = int(ctx.attr("min_gram_length")), int(ctx.attr("max_gram_length"))
    max_skip = int(ctx.attr("max_skip_count", 0))
    for n, (ngrams, pool_index) in enumerate(_ngram_pool(ctx), start=1):
        if not min_n <= n <= max_n or not len(ngrams):
            continue
        # A unigram is the same whatever the skip, so it is counted once.
        for skip in range(max_skip + 1 if n > 1 else 1):
            span = (n - 1) * (skip + 1) + 1
            if span > length:
                break
            positions = np.arange(length - span + 1)[:, None] + np.arange(n) * (skip + 1)
            windows = rows[:, positions]  # (rows, windows, n)
            matches = (windows[:, :, None, :] == ngrams[None, None]).all(axis=-1)  # (rows, windows, P)
            counts[:, pool_index] += matches.sum(axis=1)
    weights = np.asarray(ctx.attr("weights") or np.ones(len(output_index)), dtype=np.float32)
    if mode == "IDF":
        counts = np.minimum(counts, 1) * weights
    elif mode == "TFIDF":
        counts = counts * weights
    out = np.zeros((rows.shape[0], output_index.max() + 1 if output_index.size else 0), dtype=np.float32)
    np.add.at(out, (slice(None), output_index), counts)
    return out.reshape(*x.shape[:-1], -1) if x.ndim > 1 else out.reshape(-1)
