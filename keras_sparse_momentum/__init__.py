"""keras-sparse-momentum: prune Keras 3 models while they train.

    import keras_sparse_momentum as ksm
    model.compile(optimizer=ksm.GSMMomentum(compression=60), ...)
    model.fit(...)               # the model comes out exactly 60x sparse
    slim = ksm.strip(model)      # dead units physically removed, same function
    print(ksm.sparsity_report(slim))
"""

from keras_sparse_momentum.callbacks import PruneToRatio
from keras_sparse_momentum.optimizers import GSMMomentum
from keras_sparse_momentum.report import sparsity_report
from keras_sparse_momentum.surgery import strip

__version__ = "0.1.0"

__all__ = ["GSMMomentum", "PruneToRatio", "sparsity_report", "strip"]

# Centripetal SGD (issue 4): cluster plan, optimizer; `strip(model, plan)` merges the clusters.
from keras_sparse_momentum.optimizers import CentripetalSGD  # noqa: E402
from keras_sparse_momentum.surgery import ClusterPlan  # noqa: E402

__all__ += ["CentripetalSGD", "ClusterPlan"]
