"""Cost: train-step time relative to Keras SGD, the global selection's scaling, state memory.

Step times are measured side by side in one process: every optimizer gets a
model with the same initial weights, all compiled first, then each is timed
in a block of steps right next to a block of Keras SGD (same XLA setting,
order alternating each round), so that load from other processes hits both
alike. The ratio reported is the median over rounds of these paired ratios.
"""

import math
import time

import numpy as np

from benchmarks import config, models, plots

NAME = "cost"
TITLE = "Cost: step time, selection scaling, optimizer state"
COMPRESSION = {"lenet300": 60, "lenet5": 125, "resnet20": 10}
FULL = dict(rounds=9, steps={"lenet300": 40, "lenet5": 10, "resnet20": 2},
            sizes=(1_000_000, 5_000_000, 25_000_000), selection_rounds=7)
QUICK = dict(rounds=2, steps={"lenet300": 3, "lenet5": 3, "resnet20": 1}, sizes=(100_000, 500_000),
             selection_rounds=2)


def _optimizers(compression, total_steps):
    import keras

    import keras_sparse_momentum as ksm

    makers = {
        "sgd": lambda: keras.optimizers.SGD(**config.SGD),
        "gsm_short": lambda: ksm.GSMMomentum(
            compression=compression, **config.gsm_kwargs(config.GSM_SHORT, total_steps)),
        "gsm_paper": lambda: ksm.GSMMomentum(
            compression=compression, **config.gsm_kwargs(config.GSM_PAPER, total_steps)),
    }
    if hasattr(ksm, "ProxNAG"):
        makers["proxnag"] = lambda: ksm.ProxNAG(**config.PROXNAG)
    return makers


def _model_and_batch(name):
    import keras

    rng = np.random.default_rng(0)
    if name == "resnet20":
        x = rng.random((config.BATCH, 32, 32, 3), dtype="float32")
        return (lambda: models.resnet20(keras)), x
    from benchmarks import data

    x = data.load_mnist(config.BATCH, 1)[0]
    return (lambda: models.build(keras, name)), x


def step_times(name, settings, xla_settings=(True, False)):
    """Per-step seconds of every (optimizer, xla) pair, timed in interleaved blocks.

    Backend-neutral (the JAX section runs it with `xla_settings=(True,)`: JAX
    without jit runs op by op).
    """
    import keras

    build, x = _model_and_batch(name)
    y = keras.ops.convert_to_tensor(np.arange(config.BATCH) % 10, dtype="int32")
    x = keras.ops.convert_to_tensor(x)
    keras.utils.set_random_seed(0)
    weights = build().get_weights()
    makers = _optimizers(COMPRESSION[name], total_steps=2500)
    runs = {}
    for xla in xla_settings:
        for opt_name, make in makers.items():
            model = build()
            model.set_weights(weights)
            model.compile(optimizer=make(), jit_compile=xla,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            for _ in range(3):  # compile and warm up
                model.train_on_batch(x, y)
            runs[(opt_name, xla)] = model
    steps = settings["steps"][name]

    def block(key):
        model = runs[key]
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / steps

    times = {key: [] for key in runs}
    ratios = {key: [] for key in runs}
    for r in range(settings["rounds"]):
        for opt_name, xla in runs:
            if opt_name == "sgd":
                continue
            # One SGD block and one optimizer block back to back, order alternating.
            pair = [("sgd", xla), (opt_name, xla)][:: 1 if r % 2 == 0 else -1]
            measured = {key: block(key) for key in pair}
            for key, seconds in measured.items():
                times[key].append(seconds)
            ratios[(opt_name, xla)].append(measured[(opt_name, xla)] / measured[("sgd", xla)])
    rows = []
    for (opt_name, xla), ts in times.items():
        rs = np.array(ratios[(opt_name, xla)] or [1.0])
        rows.append(dict(model=name, optimizer=opt_name, xla=xla, compression=COMPRESSION[name],
                         batch=config.BATCH,
                         step_ms=float(np.median(ts) * 1e3),
                         ratio=float(np.median(rs)),
                         ratio_q1=float(np.percentile(rs, 25)),
                         ratio_q3=float(np.percentile(rs, 75)),
                         rounds=settings["rounds"], steps_per_block=steps))
    return rows


def selection_times(settings):
    """Milliseconds of one `kth_largest` call under XLA at each size (k = N / 60)."""
    import tensorflow as tf

    from keras_sparse_momentum.optimizers.selection import kth_largest

    fns, inputs = {}, {}
    for n in settings["sizes"]:
        inputs[n] = tf.random.uniform([n], seed=n)
        fns[n] = tf.function(lambda s, k=math.ceil(n / 60): kth_largest(s, k), jit_compile=True)
        fns[n](inputs[n]).numpy()  # compile
    times = {n: [] for n in settings["sizes"]}
    for _ in range(settings["selection_rounds"]):
        for n in settings["sizes"]:
            start = time.perf_counter()
            fns[n](inputs[n]).numpy()
            times[n].append(time.perf_counter() - start)
    return [dict(params=n, k=math.ceil(n / 60), ms=float(np.median(ts) * 1e3),
                 ns_per_param=float(np.median(ts) / n * 1e9)) for n, ts in times.items()]


def state_memory(names):
    """Bytes of each optimizer's variables after `build`, relative to SGD's."""
    rows = []
    for name in names:
        build, _ = _model_and_batch(name)
        model = build()
        prunable = sum(r[1] for r in models.layer_densities(model))
        sizes = {}
        for opt_name, make in _optimizers(COMPRESSION[name], total_steps=2500).items():
            optimizer = make()
            optimizer.build(model.trainable_variables)
            sizes[opt_name] = sum(
                int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in optimizer.variables)
        sizes["sgd + PruneToRatio masks"] = sizes["sgd"] + 4 * prunable
        for opt_name, nbytes in sizes.items():
            rows.append(dict(model=name, optimizer=opt_name, bytes=nbytes,
                             ratio=nbytes / sizes["sgd"]))
    return rows


def run(opts, previous=None):
    settings = QUICK if opts.quick else FULL
    names = opts.cost_models or ["lenet5", "resnet20"]
    steps = []
    for name in names:
        steps += step_times(name, settings)
        print(f"  step times {name}: " + ", ".join(
            f"{r['optimizer']}{' xla' if r['xla'] else ''} {r['ratio']:.3f}"
            for r in steps if r["model"] == name), flush=True)
    selection = selection_times(settings)
    print("  selection: " + ", ".join(f"{r['params']}: {r['ms']:.1f} ms" for r in selection),
          flush=True)
    return {"steps": steps, "selection": selection, "memory": state_memory(names), "notes": []}


def render(results, out):
    steps = results["steps"]
    setup = "; ".join(f"{models.TITLES[m]} at {c}x" for m, c in dict.fromkeys(
        (r["model"], r["compression"]) for r in steps))
    batches = "/".join(sorted({str(r["batch"]) for r in steps}))
    lines = [
        "### Train-step time relative to Keras SGD (same model, batch "
        f"{batches}, median over interleaved rounds)",
        "",
        "`train_on_batch` on one fixed batch (its Python overhead, the same for every "
        f"optimizer, is included): {setup} (LeNet models on MNIST images, ResNet-20 on random "
        "32x32x3 images). Ratio = optimizer block time / the SGD block timed right next to "
        "it; median and [q1, q3] over rounds (SGD itself is the reference). XLA on CPU is "
        "slower than TensorFlow's oneDNN kernels for convolutions here, hence the larger XLA "
        "step times.",
        "",
        "| model | optimizer | XLA | step ms | ratio to SGD | [q1, q3] | rounds x steps | stale |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        ratio = ("(reference) | " if r["optimizer"] == "sgd"
                 else f"{r['ratio']:.3f} | [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}]")
        lines.append(
            f"| {models.TITLES[r['model']]} | {r['optimizer']} | {'on' if r['xla'] else 'off'} "
            f"| {r['step_ms']:.2f} | {ratio} | {r['rounds']} x {r['steps_per_block']} "
            f"| {r.get('stale') or ''} |")
    sel = results["selection"]
    lines += [
        "",
        "### Global selection (`kth_largest`, exact k-th largest of N scores, "
        "tf.function(jit_compile=True))",
        "",
        "| parameters | k | ms per selection | ns per parameter | time / time at smallest "
        "| size / smallest | stale |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sel:
        lines.append(f"| {r['params']:,} | {r['k']:,} | {r['ms']:.2f} | {r['ns_per_param']:.2f} "
                     f"| {r['ms'] / sel[0]['ms']:.2f} | {r['params'] / sel[0]['params']:.0f} "
                     f"| {r.get('stale') or ''} |")
    plots.selection_plot([r["params"] for r in sel], [r["ms"] for r in sel],
                         out / "selection_scaling.png")
    lines += ["", "![selection time vs parameters](selection_scaling.png)"]
    lines += [
        "",
        "### Optimizer state memory relative to SGD (bytes of the optimizer's variables)",
        "",
        "| model | optimizer | state bytes | ratio to SGD | stale |",
        "|---|---|---|---|---|",
    ]
    for r in results["memory"]:
        lines.append(f"| {models.TITLES[r['model']]} | {r['optimizer']} | {r['bytes']:,} "
                     f"| {r['ratio']:.3f} | {r.get('stale') or ''} |")
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


README_TITLE = "Cost"
NAMES = {"gsm_short": "GSM (for_budget's options)", "gsm_paper": "GSM (paper constants)",
         "proxnag": "ProxNAG"}


def readme(results):
    """Step-time ratios with XLA, selection scaling and state memory, as stored."""
    steps = [r for r in results["steps"] if r["optimizer"] != "sgd"]
    parts = []
    for xla in (True, False):
        found = [r for r in steps if r["xla"] == xla]
        if not found:
            continue
        by = "; ".join(
            f"{NAMES.get(o, o)} " + ", ".join(f"{r['ratio']:.2f} on {models.TITLES[r['model']]}"
                                              for r in found if r["optimizer"] == o)
            for o in dict.fromkeys(r["optimizer"] for r in found))
        parts.append(f"{'with' if xla else 'without'} XLA: {by}")
    sel = results["selection"]
    scaling = ", ".join(f"{r['ms']:.1f} ms at {r['params']:,}" for r in sel)
    growth = (f"{sel[-1]['ms'] / sel[0]['ms']:.1f}x the time for {sel[-1]['params'] / sel[0]['params']:.0f}x "
              "the parameters" if len(sel) > 1 else "")
    memory = ", ".join(f"{NAMES.get(r['optimizer'], r['optimizer'])} {r['ratio']:.2f}x on "
                       f"{models.TITLES[r['model']]}" for r in results["memory"]
                       if r["optimizer"] != "sgd")
    return (f"**{README_TITLE}** (steps of the same model timed in alternating blocks, "
            "median ratio of each optimizer's step to Keras momentum SGD's): "
            + "; ".join(parts) + f". The global selection takes {scaling} ({growth}). "
            f"Optimizer state relative to SGD's: {memory}.")
