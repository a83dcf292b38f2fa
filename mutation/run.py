"""Mutation testing of the core modules, one module at a time, with mutmut.

    nice -n 10 python -m mutation.run [--only selection,prunable,...] [--max-children 1]
    nice -n 10 python -m mutation.run --only prunable --recheck   # survivors only, new tests
    python -m mutation.run --render          # rewrite MUTATION.md from mutation/scores.json

Run it before a release, not in CI: every mutant reruns the tests that reach the
mutated function, and TensorFlow's import and tracing make that seconds per mutant.

For each module of `MODULES` (run in that order) this copies the package, the tests
and pyproject.toml into `<tmp>/ksm-mutation/<module>/`, adds a `[tool.mutmut]`
section that mutates only that file and collects tests only from the module's fast
test selection, and runs `mutmut run` there (process isolation "forkserver": the
fork server imports TensorFlow once, before any TensorFlow runtime exists, and
every mutant runs in a fresh fork of it; mutmut runs, per mutant, only the tests of
the selection that call the mutated function, stopping at the first failure).
`PYTHONPATH` is cleared for that run so the mutated copy, not this checkout, is
imported. The counts per status (killed, survived, timeout, ...), the survivors'
diffs, the git commit and whether the module or its tests were dirty, the date and
mutmut's version are then stored under the module's name in mutation/scores.json
(other modules' entries are kept), and MUTATION.md is rendered from that file
alone.

Every survivor needs an entry in mutation/survivors.json: the module, the
function, the changed line before and after, and why the mutant is equivalent
or harmless. A survivor without one is a missing test: write the test, or the
reason. tests/test_mutation_report.py checks that MUTATION.md is what
`--render` makes of scores.json and that every stored survivor has a reason.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SCORES = HERE / "scores.json"
SURVIVORS = HERE / "survivors.json"
REPORT = REPO / "MUTATION.md"

_GSM = "tests/optimizers/test_gsm.py::"
_PTR = "tests/callbacks/test_prune_to_ratio.py::"
_PROX = "tests/optimizers/test_prox_nag.py::"
_CSGD = "tests/optimizers/test_centripetal_sgd.py::"

# module name -> (source file, fast test selection: files or pytest node ids).
MODULES = {
    "selection": ("keras_sparse_momentum/optimizers/selection.py",
                  ["tests/optimizers/test_selection.py"]),
    "prunable": ("keras_sparse_momentum/prunable.py", [
        "tests/test_prunable.py",
        _PTR + "test_end_cut_keeps_the_largest_magnitudes_globally",
        _PTR + "test_end_cut_breaks_ties_by_variable_then_index",
        _GSM + "test_final_cut_breaks_ties_by_variable_then_index",
    ]),
    "gsm": ("keras_sparse_momentum/optimizers/gsm.py", [
        "tests/optimizers/test_gsm_reference.py",
        _GSM + "test_single_steps_match_the_numpy_reference",
        _GSM + "test_exactly_q_weights_receive_their_gradient",
        _GSM + "test_magnitude_importance_gives_the_gradient_to_the_largest_weights",
        _GSM + "test_for_budget_sets_the_short_budget_recipe_and_prunes_exactly",
        _GSM + "test_for_budget_warms_up_over_the_dense_tenth_then_decays_to_zero",
        _GSM + "test_fit_leaves_exactly_ceil_n_over_c_nonzeros[False]",
        _GSM + "test_sparsity_argument_is_compression_one_over_one_minus_s",
        _GSM + "test_final_cut_breaks_ties_by_variable_then_index",
        _GSM + "test_ramp_reaches_the_target_and_passive_decay_shrinks_passive_weights",
        _GSM + "test_ramp_begin_step_keeps_every_weight_active_until_the_ramp_starts",
        _GSM + "test_ema_is_swapped_in_before_the_final_cut",
        _GSM + "test_config_round_trip",
        _GSM + "test_invalid_arguments_are_rejected_at_construction",
        _GSM + "test_nothing_to_prune_is_a_clear_error",
        _GSM + "test_diverged_training_is_a_clear_error",
        _GSM + "test_final_cut_measures_what_it_zeroes_against_what_it_keeps",
        _GSM + "test_paper_rule_on_a_short_budget_warns_and_the_suggested_call_does_not",
        _GSM + "test_defaults_are_the_papers_and_the_cut_is_none_before_it_runs",
        _GSM + "test_every_construction_error_names_the_optimizer",
        _GSM + "test_for_budget_edges_default_peak_sparsity_and_bad_peaks",
        _GSM + "test_destructive_cut_message_of_the_papers_rule_word_for_word",
        _GSM + "test_destructive_cut_message_with_a_ramp_or_a_passive_decay",
        _GSM + "test_a_cut_exactly_at_the_threshold_does_not_warn_and_compression_one_does_not_cut",
        _GSM + "test_suggested_call_keeps_the_ratio_the_decay_and_the_effective_peak",
        _GSM + "test_divergence_names_the_first_five_variables_word_for_word",
        _GSM + "test_passive_decay_in_float64_with_and_without_coupled_weight_decay",
        _GSM + "test_clipnorm_matches_sgd_and_still_prunes",
        _GSM + "test_gradient_accumulation_matches_sgd_and_still_prunes",
    ]),
    "schedules": ("keras_sparse_momentum/schedules.py", [
        "tests/optimizers/test_gsm_reference.py",
        _GSM + "test_for_budget_warms_up_over_the_dense_tenth_then_decays_to_zero",
        _GSM + "test_warmup_ends_where_the_dense_tenth_ends_for_any_step_count",
        _PTR + "test_polynomial_follows_zhu_and_gupta",
        _PTR + "test_polynomial_schedule_holds_masks_after_every_step[False]",
    ]),
    "base": ("keras_sparse_momentum/optimizers/base.py", [
        "tests/optimizers/test_base.py",
        "tests/optimizers/test_gsm_reference.py",
        _GSM + "test_compression_one_is_keras_momentum_sgd[False-False]",
        _GSM + "test_compression_one_is_keras_momentum_sgd[False-True]",
        _GSM + "test_single_steps_match_the_numpy_reference",
        _GSM + "test_config_round_trip",
        _GSM + "test_invalid_arguments_are_rejected_at_construction",
        _GSM + "test_nothing_to_prune_is_a_clear_error",
        _GSM + "test_mirrored_strategy_on_two_cpus_equals_one_device",
        _GSM + "test_sparse_embedding_gradients_work",
        _PROX + "test_l1_zero_is_keras_nesterov_sgd_at_every_step",
        _CSGD + "test_zero_strength_and_singletons_are_keras_nesterov_sgd_with_coupled_decay",
    ]),
    "prox_nag": ("keras_sparse_momentum/optimizers/prox_nag.py", [
        _PROX + "test_l1_zero_is_keras_nesterov_sgd_at_every_step",
        _PROX + "test_soft_threshold_matches_numpy",
        _PROX + "test_steps_match_the_numpy_reference_and_finalize_writes_the_sparse_iterate",
        _PROX + "test_fit_leaves_the_sparse_iterate_with_exact_zeros",
        _PROX + "test_l1_schedule_and_assignment",
        _PROX + "test_only_non_prunable_variables_get_a_momentum_slot",
        _PROX + "test_ema_averages_the_sparse_iterate_on_its_support",
        _PROX + "test_config_round_trip",
        _PROX + "test_invalid_arguments_are_rejected_at_construction",
        _PROX + "test_nothing_to_prune_is_a_clear_error",
        _PROX + "test_held_support_zeroes_the_iterate_until_released",
        _PROX + "test_sync_iterates_restarts_the_sparse_iterate_at_assigned_values",
        _PROX + "test_finalize_before_any_step_keeps_the_variables_and_after_one_writes_the_iterate",
        _PROX + "test_callable_l1_is_read_at_every_step",
        _PROX + "test_float64_variables_step_in_float64",
        _PROX + "test_zero_momentum_keeps_no_momentum_slot_and_is_the_proximal_gradient",
        _PROX + "test_optimizer_state_is_named_and_laid_out_like_keras_slots_and_not_trainable",
        _PROX + "test_from_config_passes_custom_objects_to_both_schedules",
        _PROX + "test_ema_follows_the_sparse_iterate_step_by_step",
        _PROX + "test_weight_decay_is_the_coupled_l2_of_an_elastic_net_on_kernels",
        _PROX + "test_defaults_are_the_documented_ones",
    ]),
    "centripetal_sgd": ("keras_sparse_momentum/optimizers/centripetal_sgd.py", [
        _CSGD + "test_steps_match_the_numpy_reference",
        _CSGD + "test_variables_after_an_unplanned_one_are_merged_too",
        _CSGD + "test_float64_steps_match_the_numpy_reference_in_float64",
        _CSGD + "test_zero_strength_and_singletons_are_keras_nesterov_sgd_with_coupled_decay",
        _CSGD + "test_cluster_differences_decay_geometrically_whatever_the_data",
        _CSGD + "test_fit_ends_with_identical_clusters_and_a_lossless_strip",
        _CSGD + "test_xla_matches_eager",
        _CSGD + "test_finalize_logs_the_distance_and_warns_only_above_the_threshold",
        _CSGD + "test_finalize_merges_the_ema_weights_it_swaps_in",
        _CSGD + "test_unbound_plan_warns_only_when_it_has_moving_statistics",
        _CSGD + "test_suggested_strength_closes_the_clusters_in_the_steps_run",
        _CSGD + "test_no_steps_or_no_learning_rate_suggests_training_longer",
        _CSGD + "test_defaults_are_the_papers_and_arguments_reach_the_config",
        _CSGD + "test_config_round_trip",
        _CSGD + "test_bad_arguments",
    ]),
    "prune_to_ratio": ("keras_sparse_momentum/callbacks/prune_to_ratio.py", [
        "tests/callbacks/test_prune_to_ratio.py",
        "tests/callbacks/test_prox_iterative.py",
        "tests/callbacks/test_resume.py::test_polynomial_prune_to_ratio_resumed_mid_ramp",
        "tests/callbacks/test_resume.py::test_polynomial_prune_to_ratio_continues_from_a_keras_file",
        "tests/callbacks/test_resume.py::test_prox_nag_iterative_rounds_resumed_inside_a_pruning_round",
    ]),
    "dead_units": ("keras_sparse_momentum/surgery/dead_units.py",
                   ["tests/surgery/test_strip.py", "tests/surgery/test_strip_plan.py",
                    "tests/surgery/test_attention.py::test_dead_heads_and_ffn_units_are_removed_exactly",
                    "tests/surgery/test_attention.py::test_uniform_attention_heads_are_kept"]),
}

# mutmut 3 exit codes (mutmut/stats.py), grouped as reported here.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 35: "suspicious", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", 37: "caught by type check", -11: "segfault",
          -9: "segfault", None: "not checked"}
COLUMNS = ("killed", "survived", "timeout", "no tests", "suspicious", "segfault", "not checked")


def _git(*args):
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _mutmut_section(path, tests):
    return "\n".join([
        "",
        "[tool.mutmut]",
        'source_paths = ["keras_sparse_momentum"]',
        f"only_mutate = {json.dumps([path])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]',
        'process_isolation = "forkserver"',
        # CPU seconds a mutant may use: (its tests' clean time + 1) * 4 * 2.
        "timeout_multiplier = 4.0",
        "",
    ])


def _write_pyproject(work, path, tests):
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject)
    (work / "pyproject.toml").write_text(pyproject + _mutmut_section(path, tests))


def _workdir(name, path, tests, root):
    work = root / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for folder in ("keras_sparse_momentum", "tests"):
        shutil.copytree(REPO / folder, work / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _write_pyproject(work, path, tests)
    return work


def _function(mutant):
    """`pkg.mod.xǁClassǁmethod__mutmut_3` -> `Class.method`; `pkg.mod.x_func__mutmut_3` -> `func`."""
    stem = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if stem.startswith("xǁ"):
        return ".".join(stem[2:].split("ǁ"))
    return stem[2:] if stem.startswith("x_") else stem


def _changed_lines(diff):
    removed = [l[1:].strip() for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    added = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return "\n".join(removed), "\n".join(added)


def run_module(name, max_children, root, recheck=False, max_minutes=None):
    """mutmut on one module; with `recheck`, only its stored survivors, in the kept workdir.

    `recheck` is for after adding tests: the tests and the module's selection
    are copied in again and mutmut reruns just the survivors (it collects stats
    for the new tests first).
    """
    path, tests = MODULES[name]
    work = root / name
    survivors = []
    if recheck:
        stored, _ = load()
        survivors = [f"{path[:-3].replace('/', '.')}.{s['mutant']}"
                     for s in stored.get(name, {}).get("survivors", [])]
        if not survivors or not (work / "mutants").exists():
            print(f"   nothing to recheck for {name}", flush=True)
            return stored.get(name)
        shutil.rmtree(work / "tests")
        shutil.copytree(REPO / "tests", work / "tests",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # The selection in MODULES may have grown with the new tests: mutmut reads it from here.
        _write_pyproject(work, path, tests)
    else:
        work = _workdir(name, path, tests, root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mutmut = [str(Path(sys.executable).parent / "mutmut")]
    started = datetime.datetime.now()
    with open(work / "mutmut.log", "a") as log:
        proc = subprocess.Popen([*mutmut, "run", "--max-children", str(max_children), *survivors],
                                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max_minutes * 60 if max_minutes else None)
        except subprocess.TimeoutExpired:  # stop mutmut and its workers; keep what it checked
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            code = 0
    meta = work / "mutants" / (path + ".meta")
    if code != 0 or not meta.exists():
        raise SystemExit(f"mutmut failed for {name} (exit {code}): see {work / 'mutmut.log'}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    total = len(codes)
    counts = {column: 0 for column in COLUMNS}
    if recheck:
        # Only the rechecked survivors have new statuses; mutmut may have reset the others
        # (it does when the selection changed), so they keep their stored ones.
        rechecked = set(survivors)
        codes = {k: v for k, v in codes.items() if k in rechecked}
        counts.update(stored[name]["counts"])
        counts["survived"] -= len(rechecked)
        total = stored[name]["total"]
    survivors = []
    for mutant, code in sorted(codes.items(), key=lambda kv: _mutant_order(kv[0])):
        status = STATUS.get(code, "suspicious")
        counts[status] = counts.get(status, 0) + 1
        if status == "survived":
            shown = subprocess.run([*mutmut, "show", mutant], cwd=work, env=env,
                                   capture_output=True, text=True).stdout
            diff = "\n".join(l for l in shown.splitlines() if not l.startswith("# "))
            removed, added = _changed_lines(diff)
            survivors.append({"mutant": mutant.rsplit(".", 1)[-1], "function": _function(mutant),
                              "removed": removed, "added": added})
    dirty = _git("status", "--porcelain", "--", path, *[t.split("::")[0] for t in tests])
    minutes = round((datetime.datetime.now() - started).total_seconds() / 60, 1)
    if recheck:
        minutes = round(load()[0][name]["minutes"] + minutes, 1)
    return {
        "path": path,
        "tests": tests,
        "commit": _git("rev-parse", "--short=10", "HEAD") or "unknown",
        "dirty": bool(dirty),
        "date": started.isoformat(timespec="minutes"),
        "minutes": minutes,
        "tool": f"mutmut {metadata.version('mutmut')}" + (", survivors rechecked" if recheck else ""),
        "counts": {k: v for k, v in counts.items() if v or k in ("killed", "survived", "timeout")},
        "total": total,
        "survivors": survivors,
    }


def _mutant_order(mutant):
    head, _, number = mutant.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def reason(module, survivor, reasons):
    for entry in reasons:
        if (entry["module"] == module and entry["function"] == survivor["function"]
                and entry["removed"] == survivor["removed"] and entry["added"] == survivor["added"]):
            return entry["reason"]
    return None


def render(scores, reasons):
    """MUTATION.md from the stored scores and the survivors' reasons (nothing else)."""
    lines = [
        "# Mutation testing",
        "",
        "Generated by `python -m mutation.run --render` from mutation/scores.json; measured",
        "with `nice -n 10 python -m mutation.run --only MODULE` (see mutation/run.py for how,",
        "and for each module's fast test selection). Run before a release, not in CI.",
        "A mutant is *killed* when a test of the selection fails on it; *timeout* means its",
        "tests ran past their CPU budget (8 x (their clean CPU time + 1 s)): a hang or a far",
        "slower program, counted as caught in the score. Every survivor below is either",
        "equivalent to the original or harmless, with the reason; a survivor without one is",
        "a missing test. \"survivors rechecked\": tests were added after the run and only the",
        "survivors were run again (`--recheck`).",
        "",
        "| module | file | killed | survived | timeout | not checked | other | total "
        "| score (of checked) | commit | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [m for m in MODULES if m in scores] + sorted(set(scores) - set(MODULES))
    for name in order:
        s = scores[name]
        c = s["counts"]
        unchecked = c.get("not checked", 0)
        other = (s["total"] - c.get("killed", 0) - c.get("survived", 0) - c.get("timeout", 0)
                 - unchecked)
        caught = c.get("killed", 0) + c.get("timeout", 0)
        checked = s["total"] - unchecked
        score = f"{100 * caught / checked:.1f} %" if checked else "-"
        commit = s["commit"] + (" (dirty)" if s["dirty"] else "")
        lines.append(f"| {name} | `{s['path']}` | {c.get('killed', 0)} | {c.get('survived', 0)} "
                     f"| {c.get('timeout', 0)} | {unchecked} | {other} | {s['total']} | {score} "
                     f"| {commit} | {s['date']} |")
    missing = [m for m in MODULES if m not in scores]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    for name in order:
        s = scores[name]
        lines += ["", f"## {name}", "",
                  f"{s['tool']}, {s['minutes']} min; tests: "
                  + ", ".join(f"`{t}`" for t in s["tests"]) + "."]
        if not s["survivors"]:
            lines += ["", "No survivors."]
            continue
        lines += ["", "| mutant | function | change | why it survives |", "|---|---|---|---|"]
        for survivor in s["survivors"]:
            change = (f"`` {survivor['removed']} `` → `` {survivor['added']} ``"
                      .replace("\n", " ").replace("|", "\\|"))
            why = reason(name, survivor, reasons) or "**no reason recorded: a missing test?**"
            lines.append(f"| {survivor['mutant'].rsplit('__mutmut_', 1)[-1]} | `{survivor['function']}` "
                         f"| {change} | {why} |")
    return "\n".join(lines) + "\n"


def load():
    scores = json.loads(SCORES.read_text()) if SCORES.exists() else {}
    reasons = json.loads(SURVIVORS.read_text()) if SURVIVORS.exists() else []
    return scores, reasons


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mutation.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(MODULES),
                        help=f"comma-separated modules, run in this order: {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=1,
                        help="mutants run at once (default 1: the machine is shared)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ksm-mutation")
    parser.add_argument("--render", action="store_true", help="run nothing: rewrite MUTATION.md")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop a module's run after this long and store what was checked "
                             "(the rest counts as 'not checked')")
    parser.add_argument("--recheck", action="store_true",
                        help="after adding tests: rerun only the stored survivors (needs the "
                             "module's kept workdir)")
    opts = parser.parse_args(argv)
    names = opts.only.split(",")
    unknown = set(names) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; choose among {', '.join(MODULES)}")
    if not opts.render:
        for name in names:
            print(f"== {name}", flush=True)
            result = run_module(name, opts.max_children, opts.workdir, opts.recheck,
                                opts.max_minutes)
            scores, _ = load()
            scores[name] = result
            SCORES.write_text(json.dumps(scores, indent=1, ensure_ascii=False) + "\n")
            print(f"   {result['counts']} of {result['total']} in {result['minutes']} min", flush=True)
            REPORT.write_text(render(*load()))
    REPORT.write_text(render(*load()))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
