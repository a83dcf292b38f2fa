"""More than one machine on TensorFlow: a two-process MultiWorkerMirroredStrategy job.

Two worker processes on localhost (TF_CONFIG with free loopback ports, each
reading its shard of a dataset sharded by DATA) run `multi_worker_job.py`.
Plain `keras.optimizers.SGD` is the control: GSMMomentum must do in Keras's
`fit` whatever SGD does there (both train, or both fail the same upstream
way). On Keras 3.15 / TF 2.21 both fail in `Trainer._maybe_symbolic_build`,
whose `strategy.reduce("MEAN", ...)` of the first batch raises `ValueError:
Attempt to convert a value (PerReplica...)` (keras-team/keras#20585,
tensorflow/tensorflow#72388). Building the model and the optimizer before
`fit`, as the job does, does not avoid it: `_maybe_symbolic_build` reduces
the batch before it looks at what is unbuilt. A custom training loop (`strategy.run` and
`optimizer.apply_gradients`, TensorFlow's documented pattern) is not
affected: there GSMMomentum's weights are identical on both workers and hold
exactly `ceil(N / C)` nonzeros.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_job(out, timeout=300):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    try:
        for index in range(2):
            config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(config), CUDA_VISIBLE_DEVICES="")
            env["PYTHONPATH"] = os.pathsep.join(
                [str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
            processes.append(subprocess.Popen(
                [sys.executable, str(HERE / "multi_worker_job.py"), str(out)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:  # a worker waiting for a dead peer would wait forever
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads((out / f"worker_{i}.json").read_text()) for i in range(2)]


def test_gsm_behaves_like_the_sgd_control_on_two_workers(tmp_path):
    reports = _run_job(tmp_path)
    for report in reports:
        control, gsm = report["fit"]["sgd"], report["fit"]["gsm"]
        print(f"MULTI-WORKER fit: SGD {control}; GSMMomentum {gsm}")
        assert gsm["ok"] == control["ok"]
        if not control["ok"]:  # the same upstream failure, not one of this package
            assert gsm["error"] == control["error"]
            assert gsm["raised_in"] == control["raised_in"]
            assert "_maybe_symbolic_build" in control["raised_in"]
    loops = [report["custom_loop"] for report in reports]
    print(f"MULTI-WORKER custom loop: {loops}")
    for loop in loops:
        assert loop["steps"] == 8
        assert loop["nonzero_kernels"] == loop["kept_count"] == 172  # ceil(1376 / 8)
    first, second = (np.load(tmp_path / f"gsm_{i}.npz") for i in range(2))
    assert len(first.files) == 6
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
