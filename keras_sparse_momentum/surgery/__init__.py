"""Structural surgery: physically remove or merge channels without changing the function."""

from keras_sparse_momentum.surgery.cluster_plan import ClusterPlan
from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.strip import strip

__all__ = ["ChannelGraph", "ClusterPlan", "strip"]
