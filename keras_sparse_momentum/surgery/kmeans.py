"""Deterministic k-means (k-means++ start, Lloyd iterations) in numpy, no sklearn."""

import numpy as np


def _squared_distances(points, centres):
    return (
        np.sum(points**2, axis=1)[:, None]
        - 2.0 * points @ centres.T
        + np.sum(centres**2, axis=1)[None, :]
    ).clip(min=0.0)


def _plus_plus_start(points, k, rng):
    n = len(points)
    chosen = [int(rng.integers(n))]
    closest = _squared_distances(points, points[chosen]).min(axis=1)
    for _ in range(1, k):
        free = np.setdiff1d(np.arange(n), chosen)
        weights = closest[free]
        if weights.sum() > 0:
            pick = int(rng.choice(free, p=weights / weights.sum()))
        else:  # duplicates only: any unused point
            pick = int(free[0])
        chosen.append(pick)
        closest = np.minimum(closest, _squared_distances(points, points[[pick]])[:, 0])
    return points[chosen].copy()


def _fill_empty(points, labels, centres, k):
    """Give every empty cluster the point farthest from its centre in a cluster of >= 2."""
    for cluster in range(k):
        if np.any(labels == cluster):
            continue
        sizes = np.bincount(labels, minlength=k)
        movable = np.flatnonzero(sizes[labels] >= 2)
        gaps = np.sum((points[movable] - centres[labels[movable]]) ** 2, axis=1)
        point = movable[int(np.argmax(gaps))]  # argmax: first of ties, deterministic
        labels[point] = cluster
        centres[cluster] = points[point]
    return labels


def kmeans(points, k, seed=0, max_iterations=100):
    """Split the rows of `points` into exactly `k` non-empty clusters.

    Args:
        points: (n, d) array, n >= k >= 1.
        k: number of clusters.
        seed: seed of the k-means++ start; the result is a pure function of
            (points, k, seed).
        max_iterations: Lloyd iterations at most.

    Returns:
        A list of `k` sorted index lists, ordered by their first index.
    """
    points = np.asarray(points, np.float64).reshape(len(points), -1)
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: need 1 <= k <= {n} points. Received: k={k}")
    if k == n:
        return [[i] for i in range(n)]
    rng = np.random.default_rng(seed)
    centres = _plus_plus_start(points, k, rng)
    labels = np.argmin(_squared_distances(points, centres), axis=1)
    for _ in range(max_iterations):
        labels = _fill_empty(points, labels, centres, k)
        centres = np.stack([points[labels == c].mean(axis=0) for c in range(k)])
        new_labels = np.argmin(_squared_distances(points, centres), axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    labels = _fill_empty(points, labels, centres, k)
    clusters = [np.flatnonzero(labels == c).tolist() for c in range(k)]
    return sorted(clusters, key=lambda c: c[0])


def even_blocks(n, k):
    """`k` consecutive index blocks of near-equal size covering range(n)."""
    if not 1 <= k <= n:
        raise ValueError(f"even_blocks: need 1 <= k <= {n}. Received: k={k}")
    return [block.tolist() for block in np.array_split(np.arange(n), k)]
