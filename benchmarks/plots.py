"""PNG plots of the benchmark results (matplotlib, Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# No "Software" (matplotlib version) chunk: the same stored numbers give the same
# bytes with the same matplotlib and fonts.
PNG_METADATA = {"Software": None}


def accuracy_plot(rows, title, labels, path):
    """Test accuracy vs compression per method, mean with min-max bars; dense as a line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["compression"])
        if method == "dense":
            for r in rs:
                ax.axhline(r["mean"], color="k", ls="--", lw=1,
                           label=f"{labels[method]} ({r['epochs']} ep)")
            continue
        xs = [r["compression"] for r in rs]
        ys = [r["mean"] for r in rs]
        err = [[r["mean"] - r["lo"] for r in rs], [r["hi"] - r["mean"] for r in rs]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=labels[method])
    ax.set_xscale("log")
    ax.set_xlabel("compression (prunable weights / nonzero weights)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{title}: accuracy vs compression")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return True


def layer_bars(series, title, path):
    """Grouped bars of per-layer density: series = {label: [(layer, density %)]}."""
    names = list(series)
    layers = [layer for layer, _ in series[names[0]]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        values = dict(series[name])
        ax.bar([j + i * width for j in range(len(layers))],
               [values.get(layer, 0.0) for layer in layers], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(layers, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("weights kept % (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def selection_plot(sizes, millis, path):
    """Selection time vs number of parameters, log-log, with a linear reference."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(sizes, millis, "o-", label="kth_largest (XLA)")
    ax.loglog(sizes, [millis[0] * s / sizes[0] for s in sizes], "k--", lw=1, label="linear")
    ax.set_xlabel("prunable parameters")
    ax.set_ylabel("ms per selection")
    ax.set_title("Global selection cost")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
