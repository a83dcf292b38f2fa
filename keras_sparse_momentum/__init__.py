"""keras-sparse-momentum: prune Keras 3 models while they train.

    import keras_sparse_momentum as ksm

    (x, y), (x_test, y_test) = ksm.datasets.load_mnist_sample()  # shipped, offline
    steps = epochs * math.ceil(len(x) / batch_size)  # the optimizer steps fit will run
    model.compile(
        optimizer=ksm.GSMMomentum.for_budget(steps, compression=60, learning_rate=0.2,
                                             momentum=0.9, nesterov=True),
        loss=..., metrics=[...])
    model.fit(x, y, batch_size=batch_size, epochs=epochs)  # exactly 60x sparse
    slim = ksm.strip(model)      # dead units physically removed, same function
    print(ksm.sparsity_report(slim))
    ksm.export_tflite(slim, "model.tflite")  # sparse, verified on LiteRT's default runtime

`GSMMomentum.for_budget` fits the pruning to the steps you train for;
`GSMMomentum(compression=C)` alone is the paper's rule, which needs far longer
training and warns when its final cut removes weights the network still uses.
"""

from keras_sparse_momentum import datasets
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
    "datasets",
    "export_tflite",
    "sparsity_report",
    "strip",
]
