"""Structured pruning rows (C-SGD, AOFP, L1-norm filter pruning) from optional modules.

Other parts of the project provide `benchmarks/csgd_resnet.py` and
`benchmarks/aofp_cnn.py`, each with `run(quick) -> list[dict]` (one dict per
table row, same keys within a module) and `WHY`, sentences on the rows that
lose, printed under the table. A module that is absent is skipped with a note.
"""

import datetime
import importlib

NAME = "structured"
TITLE = "Structured pruning: accuracy vs FLOPs kept, TFLite size and latency"
MODULES = ("csgd_resnet", "aofp_cnn")


def run(opts, previous=None):
    """Run the modules named by `opts.structured` (default all); others keep stored rows."""
    selected = getattr(opts, "structured", None) or MODULES
    previous = previous or {}
    kept = previous.get("tables", {})
    tables = {name: kept[name] for name in MODULES if name not in selected and name in kept}
    measured = {name: previous.get("measured", {}).get(name) for name in tables}
    notes = []
    for name in selected:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"benchmarks.{name}":
                raise
            notes.append(f"`benchmarks/{name}.py` is not in this build yet: its rows are skipped.")
            continue
        print(f"  {name}", flush=True)
        tables[name] = module.run(opts.quick)
        measured[name] = datetime.datetime.now().isoformat(timespec="minutes")
    return {"tables": {name: tables[name] for name in MODULES if name in tables},
            "measured": measured, "notes": notes}


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(results, out):
    lines = []
    for name, rows in results["tables"].items():
        if not rows:
            continue
        columns = list(dict.fromkeys(k for row in rows for k in row))
        when = results.get("measured", {}).get(name)
        lines += [
            f"### {name}",
            "",
            f"_Rows finished {when}._" if when else "_Rows kept from an earlier run._",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
        lines.append("")
        module = importlib.import_module(f"benchmarks.{name}")
        lines += [f"Why: {why}" for why in getattr(module, "WHY", ())] + [""]
    lines += [f"Note: {note}" for note in results["notes"]]
    return "\n".join(lines)
