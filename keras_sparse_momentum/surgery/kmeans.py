"""Filter clustering for ClusterPlan: scikit-learn's k-means, made exact-k and deterministic.

`kmeans(points, k, seed)` splits rows into exactly `k` non-empty clusters:

- Identical rows (e.g. the many all-zero filters GSM or AOFP leave) are
  collapsed first and clustered once, weighted by their count, so k-means works
  on the distinct filters only.
- With at least `k` distinct rows, scikit-learn clusters them: a k-means++
  start (`kmeans_plusplus` with one candidate per centre, Arthur &
  Vassilvitskii's rule; scikit-learn's default greedy start tries 2 + ln k
  candidates per centre, which is most of the time when k is half the
  filters), then `KMeans`'s Lloyd iterations on the full rows. The start is
  the one step that is not a matrix product (one pass over all points per
  centre, k = half the filters), so rows longer than `SEED_DIMENSIONS` are
  seeded on a Gaussian random projection to that many dimensions (seeded
  by `seed`; it keeps distances within a Johnson-Lindenstrauss factor, and
  the chosen rows are then refined by Lloyd in the full space). Its OpenMP threads add their
  partial sums in whatever order they finish, so it runs on one thread (and
  BLAS too, whose idle threads spin on a busy machine): the clusters are then
  a pure function of (points, k, seed).
- With fewer than `k` distinct rows, every distinct row is a cluster of zero
  spread and the missing clusters are split off the largest groups of
  identical rows (one row at a time, the largest group first, ties to the
  group seen first): any such split has zero spread too, and it is
  deterministic. k-means is not run, and none of its "fewer distinct
  clusters" warnings reach the user.
"""

import heapq
import warnings

import numpy as np

SEED_DIMENSIONS = 256


def kmeans(points, k, seed=0, max_iterations=100):
    """Split the rows of `points` into exactly `k` non-empty clusters.

    Args:
        points: (n, d) array, n >= k >= 1 (rows are flattened filters).
        k: number of clusters.
        seed: seed of the k-means++ start; the result is a pure function of
            (points, k, seed).
        max_iterations: Lloyd iterations at most.

    Returns:
        A list of `k` sorted index lists, ordered by their first index.
    """
    points = np.asarray(points)
    points = points.reshape(len(points), -1).astype(np.float32 if points.dtype == np.float32
                                                   else np.float64)
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: need 1 <= k <= {n} points. Received: k={k}")
    distinct, inverse, counts = np.unique(
        points, axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    if len(distinct) <= k:
        groups = [[] for _ in distinct]
        for index, row in enumerate(inverse):
            groups[row].append(index)
        return _split_largest(groups, k)
    labels = _sklearn_labels(distinct, counts, k, seed, max_iterations)[inverse]
    clusters = [np.flatnonzero(labels == c).tolist() for c in range(k)]
    return sorted(clusters, key=lambda c: c[0])


def _split_largest(groups, k):
    """`groups` (lists of identical rows) made into `k` by splitting off single rows."""
    heap = [(-len(g), g[0], g) for g in groups]
    heapq.heapify(heap)
    singles = []
    for _ in range(k - len(groups)):
        size, start, group = heapq.heappop(heap)
        singles.append([group.pop()])
        heapq.heappush(heap, (size + 1, start, group))
    return sorted([g for _, _, g in heap] + singles, key=lambda c: c[0])


def _projected(points, seed):
    """`points` on a seeded Gaussian projection to SEED_DIMENSIONS, if they have more."""
    d = points.shape[1]
    if d <= SEED_DIMENSIONS:
        return points
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((d, SEED_DIMENSIONS)) / np.sqrt(SEED_DIMENSIONS)
    return points.astype(np.float64) @ projection  # float64: scikit-learn upcasts float32 in chunks


def _sklearn_labels(points, weights, k, seed, max_iterations):
    """scikit-learn KMeans labels of >= k distinct weighted points, every cluster used."""
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iterations reached
        _, chosen = kmeans_plusplus(_projected(points, seed), k, sample_weight=weights,
                                    random_state=seed, n_local_trials=1)
        start = points[chosen]
        estimator = KMeans(k, init=start, n_init=1, max_iter=max_iterations, algorithm="lloyd")
        labels = estimator.fit(points, sample_weight=weights).labels_.astype(np.int64)
    # scikit-learn relocates empty clusters during the fit; this keeps `exactly k`
    # a guarantee: an empty cluster takes the point farthest from its centre
    # among clusters of two or more points.
    centres = estimator.cluster_centers_
    for cluster in range(k):
        if np.any(labels == cluster):
            continue
        sizes = np.bincount(labels, minlength=k)
        movable = np.flatnonzero(sizes[labels] >= 2)
        gaps = np.sum((points[movable] - centres[labels[movable]]) ** 2, axis=1)
        labels[movable[int(np.argmax(gaps))]] = cluster
    return labels


def even_blocks(n, k):
    """`k` consecutive index blocks of near-equal size covering range(n)."""
    if not 1 <= k <= n:
        raise ValueError(f"even_blocks: need 1 <= k <= {n}. Received: k={k}")
    return [block.tolist() for block in np.array_split(np.arange(n), k)]
