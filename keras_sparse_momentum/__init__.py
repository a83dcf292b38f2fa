"""keras-sparse-momentum: prune Keras 3 models while they train.

    import keras_sparse_momentum as ksm
    model.compile(optimizer=ksm.GSMMomentum(compression=60), ...)
    model.fit(...)               # the model comes out exactly 60x sparse
    slim = ksm.strip(model)      # dead units physically removed, same function
    print(ksm.sparsity_report(slim))
"""

from keras_sparse_momentum.callbacks import AOFP, PruneToRatio
from keras_sparse_momentum.export import export_tflite
from keras_sparse_momentum.optimizers import CentripetalSGD, GSMMomentum, ProxNAG
from keras_sparse_momentum.report import sparsity_report
from keras_sparse_momentum.surgery import ClusterPlan, strip

__version__ = "0.1.0"

__all__ = [
    "AOFP",
    "CentripetalSGD",
    "ClusterPlan",
    "GSMMomentum",
    "ProxNAG",
    "PruneToRatio",
    "export_tflite",
    "sparsity_report",
    "strip",
]
