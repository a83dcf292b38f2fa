"""kmeans: exactly k non-empty clusters, a pure function of (points, k, seed), identical rows."""

import warnings

import numpy as np
import pytest
import sklearn.cluster

from keras_sparse_momentum.surgery.kmeans import kmeans


def _check_partition(clusters, n, k):
    assert len(clusters) == k and all(clusters)
    assert sorted(i for c in clusters for i in c) == list(range(n))
    assert all(c == sorted(c) for c in clusters)
    assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)


@pytest.mark.parametrize("k", [1, 2, 17, 39, 40])
def test_exactly_k_non_empty_clusters_partitioning_the_rows(k):
    points = np.random.default_rng(0).standard_normal((40, 7)).astype("float32")
    _check_partition(kmeans(points, k), 40, k)


def test_same_seed_same_clusters_and_the_seed_is_used():
    points = np.random.default_rng(3).standard_normal((60, 5))
    first = kmeans(points, 20, seed=1)
    assert kmeans(points.copy(), 20, seed=1) == first
    assert any(kmeans(points, 20, seed=s) != first for s in range(2, 6))


def test_identical_rows_fewer_than_k_are_split_off_the_largest_groups():
    # 7 zero rows, 3 copies of `a`, two single rows: 4 distinct rows for k = 10
    points = np.zeros((12, 3))
    points[[2, 5, 9]] = [1.0, 2.0, 3.0]
    points[10], points[11] = [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing from scikit-learn reaches the user
        clusters = kmeans(points, 10, seed=0)
    # zeros are rows 0,1,3,4,6,7,8: the largest group gives its last row, four times;
    # then zeros [0, 1, 3] and `a` [2, 5, 9] tie at 3 rows: the group seen first
    # (zeros) gives one more, then `a` is the largest
    assert clusters == [[0, 1], [2, 5], [3], [4], [6], [7], [8], [9], [10], [11]]
    assert kmeans(np.zeros((6, 2)), 4) == [[0, 1, 2], [3], [4], [5]]
    assert kmeans(np.ones((5, 2)), 5) == [[0], [1], [2], [3], [4]]


def test_identical_rows_share_a_cluster_and_are_clustered_once_weighted(monkeypatch):
    seen = {}

    class Recording(sklearn.cluster.KMeans):
        def fit(self, x, y=None, sample_weight=None):
            seen["rows"], seen["weights"] = len(x), np.asarray(sample_weight)
            return super().fit(x, y, sample_weight=sample_weight)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recording)
    rng = np.random.default_rng(2)
    points = rng.standard_normal((50, 6)).astype("float32")
    zero = rng.permutation(50)[:30]
    points[zero] = 0.0  # what GSM leaves: many all-zero filters
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clusters = kmeans(points, 12, seed=0)
    _check_partition(clusters, 50, 12)
    assert seen["rows"] == 21 and sorted(seen["weights"].tolist()) == [1.0] * 20 + [30.0]
    (holding,) = [c for c in clusters if zero[0] in c]
    assert set(zero) <= set(holding)


def test_an_empty_cluster_left_by_scikit_learn_takes_the_farthest_point(monkeypatch):
    class LosesCluster3(sklearn.cluster.KMeans):
        def fit(self, x, y=None, sample_weight=None):
            super().fit(x, y, sample_weight=sample_weight)
            self.labels_[self.labels_ == 3] = 0
            return self

    monkeypatch.setattr(sklearn.cluster, "KMeans", LosesCluster3)
    points = np.random.default_rng(4).standard_normal((30, 3))
    _check_partition(kmeans(points, 8), 30, 8)


def test_separated_clusters_are_found_whatever_the_seed():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((6, 9)) * 20
    labels = rng.permutation(np.arange(60) % 6)
    points = centres[labels] + 0.1 * rng.standard_normal((60, 9))
    expected = sorted(np.flatnonzero(labels == c).tolist() for c in range(6))
    for seed in range(3):
        assert kmeans(points, 6, seed=seed) == expected


@pytest.mark.parametrize("k", [0, 11])
def test_k_outside_one_to_n_is_a_value_error(k):
    with pytest.raises(ValueError, match=r"1 <= k <= 10"):
        kmeans(np.zeros((10, 2)), k)


def test_long_rows_are_seeded_on_a_projection_and_still_found(monkeypatch):
    """Rows longer than SEED_DIMENSIONS (ResNet50's 2,048 tied filters are 2,560 long) are
    seeded on a seeded random projection: the planted clusters are found for any seed, the
    result is deterministic, and the k-means++ start really saw the short rows."""
    from keras_sparse_momentum.surgery import kmeans as kmeans_lib

    rng = np.random.default_rng(7)
    d = kmeans_lib.SEED_DIMENSIONS + 300
    centres = rng.standard_normal((8, d)) * 5
    labels = rng.permutation(np.arange(80) % 8)
    points = (centres[labels] + 0.1 * rng.standard_normal((80, d))).astype("float32")
    expected = sorted(np.flatnonzero(labels == c).tolist() for c in range(8))
    seen = []
    original = sklearn.cluster.kmeans_plusplus

    def spy(x, *args, **kwargs):
        seen.append(x.shape[1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(sklearn.cluster, "kmeans_plusplus", spy)
    for seed in range(3):
        assert kmeans(points, 8, seed=seed) == expected
    assert kmeans(points, 40, seed=1) == kmeans(points.copy(), 40, seed=1)
    assert seen and set(seen) == {kmeans_lib.SEED_DIMENSIONS}
    assert kmeans(points[:, :40], 8) == expected and seen[-1] == 40  # short rows: as they are
