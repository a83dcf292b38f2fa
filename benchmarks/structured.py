"""Structured pruning rows (C-SGD, AOFP, L1-norm filter pruning) from optional modules.

Other parts of the project provide `benchmarks/csgd_resnet.py`,
`benchmarks/aofp_cnn.py` and `benchmarks/csgd_vit.py`, each with
`run(quick) -> list[dict]` (one dict per table row, same keys within a module).
A module that is absent is skipped with a note. The sentences under a table on rows that lose (`WHY`) are written here,
from the stored rows: a sentence only appears when its comparison holds, and
every number in it is read from the rows beside it.
"""

import datetime
import importlib

NAME = "structured"
TITLE = "Structured pruning: accuracy vs FLOPs kept, TFLite size and latency"
MODULES = ("csgd_resnet", "aofp_cnn", "csgd_vit")
HIDDEN = ("commit", "dirty", "stale")  # provenance, shown in the 'stale' column


def run(opts, previous=None):
    """Run the modules named by `opts.structured` (default all); others keep stored rows.

    With `opts.resume`, only the modules without stored rows run.
    """
    previous = previous or {}
    kept = previous.get("tables", {})
    selected = getattr(opts, "structured", None) or MODULES
    if getattr(opts, "resume", False):
        selected = [name for name in selected if name not in kept]
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


def drop_rows(previous, stale_rows):
    """`previous` without the tables holding a stale row (`--stale-only` reruns those modules)."""
    stale = {id(r) for r in stale_rows}
    tables = {name: rows for name, rows in previous.get("tables", {}).items()
              if not any(id(r) in stale for r in rows)}
    return {**previous, "tables": tables}


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _speed(ratio):
    """'2.8x faster' / '1.3x slower' from a speed-up (dense time / this time)."""
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def _row(rows, model, **match):
    return next((r for r in rows if r["model"] == model
                 and all(r.get(k) == v for k, v in match.items())), None)


def _distinct(widths):
    return ", ".join(str(w) for w in sorted({int(w) for w in widths.split("-")}))


def why_csgd_resnet(rows):
    """AOFP vs C-SGD on the ResNet: same FLOPs, but are its irregular widths slower?"""
    aofp, csgd = _row(rows, "aofp_stripped"), _row(rows, "csgd_stripped")
    if not (aofp and csgd and aofp.get("conv_widths") and csgd.get("conv_widths")):
        return []
    slower = aofp["tflite_ms"] / csgd["tflite_ms"]
    if slower < 1.05 or abs(aofp["flops_removed_pct"] - csgd["flops_removed_pct"]) > 5:
        return []  # only a sentence when the FLOPs match and the latency does not
    return [f"aofp_stripped reaches {100 * aofp['test_accuracy']:.2f} % (C-SGD "
            f"{100 * csgd['test_accuracy']:.2f} %) with {aofp['flops_removed_pct']:.1f} % of the "
            f"FLOPs removed (C-SGD {csgd['flops_removed_pct']:.1f} %) but runs {slower:.2f}x "
            f"slower on LiteRT ({aofp['tflite_ms']:.3f} against {csgd['tflite_ms']:.3f} ms), "
            f"probably because its widths are irregular ({_distinct(aofp['conv_widths'])} "
            f"channels, against C-SGD's {_distinct(csgd['conv_widths'])}), which vectorise worse."]


def why_aofp_cnn(rows):
    """Per target: does AOFP lose to its own widths from scratch, or to C-SGD?"""
    sentences = []
    for aofp in [r for r in rows if r["model"] == "aofp"]:
        scratch = _row(rows, "scratch", target=aofp["target"])
        csgd = _row(rows, "csgd", target=aofp["target"])
        better = [r for r in (scratch, csgd) if r and r["accuracy"] > aofp["accuracy"] + 0.003]
        if not better:
            continue
        names = {"scratch": "its own widths trained from scratch", "csgd": "C-SGD at equal FLOPs"}
        text = (f"at target {aofp['target']} aofp ({100 * aofp['accuracy']:.2f} %) loses to "
                + " and ".join(f"{names[r['model']]} ({100 * r['accuracy']:.2f} %)" for r in better))
        if aofp.get("last_prune_epoch") not in (None, "") and aofp.get("epochs"):
            left = 1 - aofp["last_prune_epoch"] / aofp["epochs"]
            text += (f": the search pruned until epoch {aofp['last_prune_epoch']:.1f} of "
                     f"{aofp['epochs']}, leaving the pruned net {left:.0%} of the budget to recover"
                     + (", while scratch trains the small net for all of it"
                        if scratch in better else ""))
        sentences.append(text + ".")
    return sentences


def why_csgd_vit(rows):
    """The ViT rows compared: C-SGD against L1-norm pruning at the same widths, and dense."""
    dense, csgd, l1 = (_row(rows, m) for m in ("dense", "csgd_stripped", "l1_finetuned"))
    if not (dense and csgd and l1):
        return []
    better = "above" if csgd["test_accuracy"] > l1["test_accuracy"] else "not above"
    return [f"with {csgd['heads_ffn_units']} heads/FFN units per block left of "
            f"{dense['heads_ffn_units']} ({csgd['flops_removed_pct']:.1f} % of the MACs removed), "
            f"C-SGD + strip reaches {100 * csgd['test_accuracy']:.2f} %, {better} L1-norm pruning "
            f"of the same units ({100 * l1['test_accuracy']:.2f} %), against "
            f"{100 * dense['test_accuracy']:.2f} % dense; LiteRT latency {csgd['tflite_ms']:.3f} "
            f"and {l1['tflite_ms']:.3f} ms against {dense['tflite_ms']:.3f} ms dense."]


WHY = {"csgd_resnet": why_csgd_resnet, "aofp_cnn": why_aofp_cnn, "csgd_vit": why_csgd_vit}


def render(results, out):
    lines = []
    for name, rows in results["tables"].items():
        if not rows:
            continue
        columns = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in HIDDEN]
        when = results.get("measured", {}).get(name)
        lines += [
            f"### {name}",
            "",
            f"_Rows finished {when}._" if when else "_Rows kept from an earlier run._",
            "",
            "| " + " | ".join(columns) + " | stale |",
            "|" + "---|" * (len(columns) + 1),
        ]
        lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns)
                  + f" | {row.get('stale') or ''} |" for row in rows]
        lines.append("")
        lines += [f"Why: {why}" for why in WHY.get(name, lambda rows: [])(rows)] + [""]
    lines += [f"Note: {note}" for note in results["notes"]]
    return "\n".join(lines)


README_TITLE = "Structured pruning"


def _readme_resnet(rows):
    dense = _row(rows, "dense")
    if not dense:
        return []
    labels = {"dense": "dense", "csgd_stripped": "C-SGD + `strip(model, plan)`",
              "l1_finetuned": "L1-norm filter pruning + fine-tune, same widths",
              "aofp_stripped": "AOFP to the same FLOPs + `strip`"}
    first = dense["conditions"]
    lines = [f"ResNet on MNIST ({first}; LiteRT one thread, batch 1):", "",
             "| model | test acc. | MACs | TFLite | latency |", "|---|---|---|---|---|"]
    for row in rows:
        removed = f" (−{row['flops_removed_pct']:.1f} %)" if row["model"] != "dense" else ""
        faster = f" ({_speed(row['tflite_speedup'])})" if row["model"] != "dense" else ""
        lines.append(f"| {labels.get(row['model'], row['model'])} | "
                     f"{100 * row['test_accuracy']:.2f} % | {row['macs'] / 1e6:.1f} M{removed} "
                     f"| {row['tflite_kb']:,.0f} KB | {row['tflite_ms']:.3f} ms{faster} |")
    csgd = _row(rows, "csgd_stripped")
    if csgd:
        lines += ["", f"The stripped C-SGD model equals the clustered one to "
                  f"{csgd['strip_max_rel_error']:.1e} (relative); CentripetalSGD's step costs "
                  f"{csgd['step_time_ratio_csgd_over_sgd']:.2f}x Keras's Nesterov SGD in this run "
                  "(XLA)."]
    lines += [" ".join(why_csgd_resnet(rows))] if why_csgd_resnet(rows) else []
    return lines


def _readme_vgg(rows):
    dense = _row(rows, "dense")
    if not dense:
        return []
    parts = []
    for aofp in [r for r in rows if r["model"] == "aofp"]:
        t = aofp["target"]
        text = (f"at a {t} FLOPs target AOFP reached {aofp['flops_kept']:.3f} (widths "
                f"{aofp['widths']}) at {100 * aofp['accuracy']:.2f} %")
        for other in ("csgd", "scratch"):
            row = _row(rows, other, target=t)
            if row:
                text += (f", {'C-SGD' if other == 'csgd' else 'its widths from scratch'} "
                         f"{100 * row['accuracy']:.2f} % at {row['flops_kept']:.3f}")
        text += (f"; AOFP's fit took {aofp['time_vs_dense']:.2f}x the dense fit's wall time "
                 f"({100 * aofp['measure_share']:.0f} % of it measuring damage), its TFLite file "
                 f"{aofp['tflite_kb']:.0f} KB against {dense['tflite_kb']:.0f} KB and runs "
                 f"{_speed(aofp['tflite_speedup'])}")
        parts.append(text)
    why = " ".join(w[0].upper() + w[1:] for w in why_aofp_cnn(rows))
    return [f"AOFP on a VGG-style CNN ({dense['epochs']} epochs, dense "
            f"{100 * dense['accuracy']:.2f} %): " + "; ".join(parts) + "." + (" " + why if why else "")]


def readme(results):
    tables = results["tables"]
    lines = [f"**{README_TITLE}**:"]
    if "csgd_resnet" in tables:
        lines += [""] + _readme_resnet(tables["csgd_resnet"])
    if "aofp_cnn" in tables:
        lines += [""] + _readme_vgg(tables["aofp_cnn"])
    vit = why_csgd_vit(tables.get("csgd_vit", []))
    if vit:
        dense = _row(tables["csgd_vit"], "dense")
        lines += ["", f"A small ViT on MNIST ({dense['conditions']}; LiteRT one thread, batch 1): "
                  + vit[0]]
    return "\n".join(lines)
