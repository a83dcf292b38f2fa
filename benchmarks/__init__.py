"""Benchmarks of keras-sparse-momentum against its anchors: `python -m benchmarks.run`.

Every number is produced by a script in this package and compared side by
side in one run. Sections: `accuracy`, `cost`, `layers`, `structured`.
"""
