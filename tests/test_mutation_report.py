"""MUTATION.md is what `python -m mutation.run --render` makes of the stored scores, and every
stored survivor carries the reason it is equivalent or harmless (else it is a missing test)."""

from mutation import run


def test_mutation_report_is_rendered_from_the_stored_scores():
    assert run.REPORT.read_text() == run.render(*run.load())


def test_every_survivor_has_a_reason():
    scores, reasons = run.load()
    missing = [(name, s["mutant"], s["removed"], s["added"])
               for name, module in scores.items() for s in module["survivors"]
               if not run.reason(name, s, reasons)]
    assert not missing, missing


def test_every_module_names_a_test_selection_that_exists():
    for name, (path, tests) in run.MODULES.items():
        assert (run.REPO / path).exists(), name
        for test in tests:
            file, _, function = test.partition("::")
            text = (run.REPO / file).read_text()
            assert not function or f"def {function.split('[')[0]}(" in text, test
