"""Run a tfmot worker module in its own process, with Keras in legacy (tf_keras) mode.

Importing tensorflow_model_optimization flips Keras into legacy mode for the
whole process, so the tfmot baselines run as `python -m <module> '<json>'`
with `TF_USE_LEGACY_KERAS=1`; the worker prints one line `RESULTS <json>`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_legacy_worker(module, payload):
    """The JSON a worker prints after `RESULTS `; RuntimeError with its stderr if it fails."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(payload)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])
