"""Stored benchmark results render to exactly the committed RESULTS.md and README block.

No TensorFlow here: rendering reads JSON (and git, for stale rows) only.
"""

import json
import re
import shutil
import subprocess

import pytest

from benchmarks import provenance, run

RESULTS = run.HERE / "results"
NUMBER = re.compile(r"(?<![\w.-])-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")


def readme_block(text):
    return text[text.index(run.BEGIN) + len(run.BEGIN):text.index(run.END)].strip("\n")


def numbers(text):
    """Every number token, as written, in text without image links and markdown code."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)|`[^`]*`", "", text)
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def _commits_known():
    commits = set()
    for path in RESULTS.glob("*.json"):
        commits |= {r.get("commit") for _, r in provenance.rows(json.loads(path.read_text()))}
    return all(c and not isinstance(provenance.changed_since(c, ["README.md"]), str)
               for c in commits - {None})


def test_committed_results_render_byte_identical(tmp_path, monkeypatch):
    if not _commits_known():
        pytest.skip("a stored row's commit is not in this clone (shallow?): staleness differs")
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)

    def forbidden(*args, **kwargs):
        raise AssertionError("rendering must not read the machine, versions or load")

    for name in ("machine", "versions"):
        monkeypatch.setattr(run, name, forbidden)
    monkeypatch.setattr(run.os, "getloadavg", forbidden)
    results_md, block = run.render_all(tmp_path)
    assert results_md == (RESULTS / "RESULTS.md").read_text()
    assert block == readme_block(run.README.read_text())
    # Every number the README quotes is in RESULTS.md too.
    assert numbers(block) <= numbers(results_md)


def test_sections_without_results_say_so_and_the_readme_stays_honest(tmp_path):
    results_md, block = run.render_all(tmp_path)
    for name in run.SECTIONS:
        assert f"_Not measured at this commit: `python -m benchmarks.run --only {name}`" in results_md
    assert block.count("not measured at this commit") == sum(
        hasattr(__import__(f"benchmarks.{name}", fromlist=["x"]), "readme") for name in run.SECTIONS)
    assert not numbers(block)


# -- staleness against a throw-away git repository ------------------------------------


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    for name in ("benchmarks/sweep.py", "benchmarks/accuracy.py", "benchmarks/config.py",
                 "benchmarks/models.py", "benchmarks/data.py",
                 "keras_sparse_momentum/schedules.py", "keras_sparse_momentum/optimizers/gsm.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    return tmp_path


def test_a_row_goes_stale_when_the_code_it_measures_changes(repo):
    first = _git(repo, "rev-parse", "HEAD")
    results = {"records": [{"method": "gsm_budget"}, {"method": "dense"}]}
    provenance.stamp("sweep", results, repo=repo)
    assert [r["commit"] for r in results["records"]] == [first, first]
    assert [r["dirty"] for r in results["records"]] == [[], []]
    fresh = provenance.Staleness(repo)
    assert [fresh("sweep", r) for r in results["records"]] == [None, None]

    (repo / "keras_sparse_momentum/optimizers/gsm.py").write_text("v2\n")  # GSM rows only
    _git(repo, "commit", "-qam", "two")
    later = provenance.Staleness(repo)
    assert later("sweep", results["records"][0]) == f"stale: measured at {first[:7]}, gsm.py changed since"
    assert later("sweep", results["records"][1]) is None

    (repo / "benchmarks/sweep.py").write_text("v3\n")  # uncommitted: both rows
    dirty = {"records": [{"method": "dense"}]}
    provenance.stamp("sweep", dirty, repo=repo)
    assert dirty["records"][0]["dirty"] == ["benchmarks/sweep.py"]
    note = provenance.Staleness(repo)("sweep", dirty["records"][0])
    assert note == (f"stale: measured at {dirty['records'][0]['commit'][:7]}, sweep.py changed "
                    "since; measured with uncommitted changes to sweep.py")


def test_unknown_commits_and_missing_git_are_said_not_guessed(repo, monkeypatch):
    row = {"method": "dense", "commit": "0123456789abcdef0123456789abcdef01234567", "dirty": []}
    assert provenance.Staleness(repo)("sweep", row) == (
        "measured at 0123456; cannot tell if stale: commit 0123456 is not in this clone")
    assert provenance.Staleness(repo)("sweep", {"method": "dense"}) == "commit not recorded"

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.Staleness(repo)("sweep", row).endswith("git is not available")
    assert provenance.head(repo) is None


def test_every_section_has_an_entry_in_the_one_map():
    assert set(run.SECTIONS) <= set(provenance.MEASURES)
    for section, entry in provenance.MEASURES.items():
        for files in entry.values():
            for path in files:
                assert (run.REPO / path).exists(), (section, path)


class _Section:
    """A stand-in section that records how `run.main` calls it."""

    TITLE = "Fake"

    def __init__(self, partial):
        self.calls = []
        if partial:
            self.drop_rows = lambda previous, stale: {
                "rows": [r for r in previous["rows"] if r not in stale]}

    def run(self, opts, previous):
        self.calls.append((getattr(opts, "resume", False), previous))
        kept = previous["rows"] if previous else []
        return {"rows": kept + [{"method": "m", "value": 2}]}

    def render(self, results, out):
        return f"{len(results['rows'])} rows"


@pytest.mark.parametrize("partial", [True, False])
def test_stale_only_reruns_the_stale_rows_or_the_whole_section(tmp_path, monkeypatch, partial):
    section = _Section(partial)
    monkeypatch.setattr(run, "SECTIONS", ("fake",))
    monkeypatch.setattr(run.importlib, "import_module", lambda name: section)
    monkeypatch.setattr(provenance, "Staleness", lambda: lambda name, row, group=None: (
        "stale: old" if row.get("old") else None))
    stored = {"rows": [{"method": "m", "value": 0, "old": True, "commit": "a"},
                       {"method": "m", "value": 1, "commit": "b"}], "meta": {}}
    (tmp_path / "fake.json").write_text(json.dumps(stored))
    run.main(["--only", "fake", "--stale-only", "--out", str(tmp_path)])
    resume, previous = section.calls[-1]
    if partial:  # only the stale row is dropped, and the section skips what is still stored
        assert resume and [r["value"] for r in previous["rows"]] == [1]
    else:
        assert not resume and previous is None
    saved = json.loads((tmp_path / "fake.json").read_text())
    assert all(r["commit"] for r in saved["rows"]) and saved["meta"]["versions"]["python"]
    # Nothing stale any more: a second --stale-only run leaves the section alone.
    fresh = [r for r in saved["rows"] if not r.get("old")]
    (tmp_path / "fake.json").write_text(json.dumps({**saved, "rows": fresh}))
    run.main(["--only", "fake", "--stale-only", "--out", str(tmp_path)])
    assert len(section.calls) == 1
