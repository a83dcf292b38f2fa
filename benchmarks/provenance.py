"""Where a stored benchmark row comes from, and whether the code it measured has changed since.

Every row a section stores (a dict in a list of its results, or in a list one
level further down, e.g. `results["tables"]["csgd_resnet"]`) is stamped by
`run.py` when it is saved: the git commit checked out at measurement time and
which of the files it measures had uncommitted changes then. `MEASURES` below
is the one map of which source files each section, table and method measures;
the renderer marks a row stale when any of them differs between the row's
commit and the files checked out now (`git diff --name-only <commit> -- FILES`,
on a clean clone the same as HEAD), and says why it cannot tell when git or the
commit is missing (a shallow clone).

A row's files are `MEASURES[section]["*"]` plus the entries for its group (the
key of the list it sits in) and for its method: the first of the row's
`method`, `optimizer` or `model` values that has an entry. A section that is not
in the map measures only `benchmarks/<section>.py` and the shared benchmark
code; add its entry here (one place) to say more.
"""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PKG = "keras_sparse_momentum/"
_CORE = [_PKG + "prunable.py", _PKG + "schedules.py", _PKG + "optimizers/base.py"]
_GSM = [_PKG + "optimizers/gsm.py", _PKG + "optimizers/selection.py", *_CORE]
_GMP = [_PKG + "callbacks/prune_to_ratio.py", _PKG + "prunable.py", _PKG + "schedules.py"]
_PROX = [_PKG + "optimizers/prox_nag.py", _PKG + "callbacks/prox_iterative.py", *_GMP, *_CORE]
_CSGD = [_PKG + "optimizers/centripetal_sgd.py", _PKG + "surgery/", *_CORE]
_AOFP = [_PKG + "callbacks/aofp.py", _PKG + "callbacks/halving_search.py", _PKG + "surgery/"]
_EXPORT = [_PKG + "export.py", _PKG + "report.py"]
_SHARED = ["benchmarks/config.py", "benchmarks/models.py", "benchmarks/data.py"]
_TFMOT = ["benchmarks/legacy_worker.py"]
_ACCURACY_METHODS = {
    "gsm_short": _GSM, "gsm_paper": _GSM, "gmp": _GMP, "l1": _GMP, "proxnag": _PROX,
    "tfmot": ["benchmarks/tfmot_worker.py", *_TFMOT],
}

MEASURES = {
    "accuracy": {"*": ["benchmarks/accuracy.py", *_SHARED], **_ACCURACY_METHODS},
    "layers": {"*": ["benchmarks/layers.py", "benchmarks/accuracy.py", *_SHARED],
               **_ACCURACY_METHODS},
    "sweep": {"*": ["benchmarks/sweep.py", "benchmarks/accuracy.py", *_SHARED,
                    _PKG + "schedules.py"],
              "gsm_budget": _GSM, "gmp": _GMP},
    "cost": {"*": ["benchmarks/cost.py", *_SHARED, _PKG + "optimizers/selection.py"],
             "gsm_short": _GSM, "gsm_paper": _GSM, "proxnag": _PROX,
             "sgd + PruneToRatio masks": _GMP},
    "structured": {"*": ["benchmarks/structured.py", "benchmarks/tflite_timing.py",
                         _PKG + "report.py"],
                   "csgd_resnet": ["benchmarks/csgd_resnet.py", "benchmarks/l1_filter_pruning.py"],
                   "aofp_cnn": ["benchmarks/aofp_cnn.py"],
                   "csgd_stripped": _CSGD, "csgd": _CSGD, "aofp_stripped": _AOFP, "aofp": _AOFP,
                   "scratch": _AOFP, "l1_finetuned": [_PKG + "surgery/"]},
    "prox_nag_lenet5": {"*": ["benchmarks/prox_nag_lenet5.py", "benchmarks/data.py"],
                        "gmp": _GMP, "prox": _PROX,
                        "tfmot": ["benchmarks/tfmot_prox_worker.py", *_TFMOT]},
    "deployment": {"*": ["benchmarks/deployment.py", "benchmarks/data.py", *_EXPORT, *_GSM,
                         _PKG + "surgery/", _PKG + "cli.py"]},
    "prune_default": {"*": ["benchmarks/prune_default.py", *_SHARED, *_GMP, _PKG + "optimizers/"],
                      },
    "jax_backend": {"*": ["benchmarks/jax_backend.py", "benchmarks/cost.py",
                          "benchmarks/accuracy.py", *_SHARED, _PKG + "backend.py",
                          _PKG + "optimizers/", *_CORE]},
}


def _git(*args, repo=REPO):
    """(returncode, stdout) of a git command; (None, '') when git cannot run."""
    try:
        proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except OSError:
        return None, ""
    return proc.returncode, proc.stdout


def files_for(section, row, group=None):
    """The source files `row` of `section` measures (paths relative to the repository)."""
    entry = MEASURES.get(section, {"*": [f"benchmarks/{section}.py", *_SHARED]})
    files = list(entry["*"])
    if group in entry:
        files += entry[group]
    for key in ("method", "optimizer", "model"):
        if isinstance(row.get(key), str) and row[key] in entry:
            files += entry[row[key]]
            break
    return sorted(set(files))


def head(repo=REPO):
    """The full hash of the checked-out commit, or None without git."""
    code, out = _git("rev-parse", "HEAD", repo=repo)
    return out.strip() if code == 0 else None


def dirty(files, repo=REPO):
    """Which of `files` (or files under them) have uncommitted changes now."""
    code, out = _git("status", "--porcelain", "--", *files, repo=repo)
    if code != 0:
        return []
    return sorted(line[3:].strip() for line in out.splitlines() if line.strip())


def changed_since(commit, files, repo=REPO):
    """Files among `files` that differ between `commit` and the checked-out files.

    Returns a list, or a string saying why it cannot tell (no git, unknown commit).
    """
    code, _ = _git("cat-file", "-e", f"{commit}^{{commit}}", repo=repo)
    if code is None:
        return "git is not available"
    if code != 0:
        return f"commit {commit[:7]} is not in this clone"
    code, out = _git("diff", "--name-only", commit, "--", *files, repo=repo)
    if code != 0:
        return f"git diff failed against {commit[:7]}"
    return sorted(out.split())


class Staleness:
    """Caches git answers while one render marks many rows."""

    def __init__(self, repo=REPO):
        self.repo = repo
        self._cache = {}

    def __call__(self, section, row, group=None):
        """None for a fresh row, else a short note: 'stale: measured at ..., X changed since'."""
        commit = row.get("commit")
        if not commit:
            return "commit not recorded"
        files = files_for(section, row, group)
        key = (commit, tuple(files))
        if key not in self._cache:
            self._cache[key] = changed_since(commit, files, self.repo)
        changed = self._cache[key]
        notes = []
        if isinstance(changed, str):
            notes.append(f"measured at {commit[:7]}; cannot tell if stale: {changed}")
        elif changed:
            names = ", ".join(Path(p).name for p in changed[:3]) + (" ..." if len(changed) > 3 else "")
            notes.append(f"stale: measured at {commit[:7]}, {names} changed since")
        if row.get("dirty"):
            notes.append("measured with uncommitted changes to "
                         + ", ".join(Path(p).name for p in row["dirty"][:3]))
        return "; ".join(notes) or None


def rows(results):
    """(group, row) for every stored row: dicts in a list of `results`, or one level below."""
    found = []
    for key, value in results.items():
        if key == "meta":
            continue
        if isinstance(value, list):
            found += [(key, r) for r in value if isinstance(r, dict)]
        elif isinstance(value, dict):
            for sub, items in value.items():
                if isinstance(items, list):
                    found += [(sub, r) for r in items if isinstance(r, dict)]
    return found


def stamp(section, results, repo=REPO):
    """Give every row without a commit the current one and its measured files' dirt."""
    commit = head(repo)
    cache = {}
    for group, row in rows(results):
        if "commit" in row:
            continue
        files = tuple(files_for(section, row, group))
        if files not in cache:
            cache[files] = dirty(files, repo) if commit else []
        row["commit"] = commit
        row["dirty"] = cache[files]
    return results
