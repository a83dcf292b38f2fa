"""AOFP: approximated oracle filter pruning, during `fit`, down to a FLOPs target."""

import time
import warnings

import keras
import numpy as np

from keras_sparse_momentum.callbacks import state as state_lib
from keras_sparse_momentum.callbacks.halving_search import HalvingSearch
from keras_sparse_momentum.surgery import rules
from keras_sparse_momentum.surgery.flops import kernel_macs
from keras_sparse_momentum.surgery.graph import FOLLOWER, PRODUCER, ChannelGraph

RESIDUAL = ("together", "skip")


def _check_int(value, name, low, owner="AOFP"):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{owner}: `{name}` must be an int >= {low}. Received: {name}={value!r}")
    return value


def _compiled(function, variables, static_argnums=()):
    """`function` compiled once per static arguments, reading `variables` as they are
    at each call: a `tf.function` on TensorFlow, a `jax.jit` given their values as
    state on JAX (a plain jit would hold the values it read when traced)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    if backend != "jax":
        return function
    import jax

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return function(*args)

    jitted = jax.jit(pure, static_argnums=tuple(i + 1 for i in static_argnums))
    return lambda *args: jitted([v.value for v in variables], *args)


def _following_batch_norm(channel_graph, node):
    """The BatchNormalization that reads `node`'s output directly, if any."""
    output = node.outputs[0]
    for other in channel_graph.nodes:
        if isinstance(other.operation, keras.layers.BatchNormalization) and any(
            t is output for t in other.input_tensors
        ):
            return other.operation
    return None


class _ChannelMask(keras.constraints.Constraint):
    """Multiplies a variable by a channel mask along `axis` after every optimizer update."""

    def __init__(self, mask, axis, rank, inner=None):
        self.mask = mask
        self.shape = [1] * rank
        self.shape[axis] = -1
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * keras.ops.cast(keras.ops.reshape(self.mask, self.shape), w.dtype)


class _Probe:
    """Where one target space is read, and how to measure the damage there.

    `entries`: (reading call node, id of the input tensor it reads (None: a
    MultiHeadAttention's heads), batch norm or None, rows of that input per
    channel of the space); `inputs`: {tensor id: index in the probe model's
    outputs} of every input of those calls.
    """

    def __init__(self, space, entries, inputs):
        self.space = space
        self.name = space.name
        self.entries = entries
        self.inputs = inputs


class AOFP(keras.callbacks.Callback):
    """Approximated oracle filter pruning (Ding et al., ICML 2019) as a callback.

    Finds how many filters every layer can lose, by binary search on the
    damage their removal does to the *next* layer's output, while the model
    trains, until the model's FLOPs fall to `target_flops` of the original.

    Per target layer (or group of layers tied by residual `Add`s, pruned
    together) a `HalvingSearch` holds the pruned filters and a search space
    (at first all live filters). Every `measure_every` training steps, on a
    random sub-batch of the held `probe_data`, every active layer masks a
    random half of its search space and measures, at the input of every layer
    that reads it (followed by its BatchNormalization if one reads it
    directly, inference mode), the relative damage

        t = sum ||y_base - y_ablated||^2 / sum ||y_base||^2

    and adds `t` to the score of each masked filter. The ablation is done on
    the consumers' inputs, outside the training step: the model trains on the
    un-ablated path, and all layers share one forward pass of the probe. After
    `iters_per_half` measurements the halving rule decides: if the `half =
    |search| // 2` filters of lowest mean score average below `thresh`, they
    are pruned (only as many as the FLOPs target still needs) and the search
    restarts on the live filters; else the search space shrinks to them
    (`half > 1`) or restarts. Layer `i` (in graph order) starts at
    `begin_step + i * stagger`, so decisions of different layers do not
    coincide. Pruning stops when the FLOPs reach the target; training goes on
    (fine-tuning the pruned network).

    A MultiHeadAttention's heads are a target like a layer's filters: a
    masked head is ablated in the per-head attention outputs before the
    layer's output kernel, and the damage measured at that kernel's output.

    A pruned filter is masked in the real model: every per-channel slice its
    layers' rules mark (`surgery/rules.py`): its producer kernel column and
    bias, the gamma and beta of its BatchNormalization, the kernel and bias of
    a DepthwiseConv on the way, a head's query, key and value slices) is
    multiplied by a 0/1 mask after every optimizer update (a variable
    constraint, inside the compiled step), so the channel (head) is exactly
    zero. At `on_train_end` the masks are applied once
    more (after an EMA swap) and the constraints removed: `ksm.strip(model)`
    then removes the pruned filters physically (dead-unit path) with the same
    outputs. If any filter was pruned, the moving mean and variance of every
    BatchNormalization are then re-estimated on `probe_data` (layer by layer,
    inference mode): pruning moves the activations faster than the moving
    averages follow. On a ResNet-20 pruned to a quarter of its FLOPs in three
    epochs, stale statistics left 22.9 % test accuracy where re-estimated
    ones give 98.0 %, C-SGD's accuracy at the same FLOPs (benchmarks/csgd_resnet.py).

    The search lives within one `fit` call (steps count from its start); a
    later `fit` with a new AOFP starts from the weights as they are, so run
    the search and its fine-tuning in one `fit`, or `strip` in between. Its
    state (masks, scores, search spaces, thresholds, the random generator)
    lives with the model's optimizer (callbacks/state.py), so
    `keras.callbacks.BackupAndRestore` resumes a killed `fit` mid-search
    exactly.

    FLOPs are the dense multiply-accumulates of the Dense/Conv kernels per
    example (`sparsity_report(...).dense_macs`), of the model `strip` would
    build; `flops_ratio` is that count over the original's.

    Args:
        target_flops: the fraction of the original FLOPs to keep, in (0, 1);
            e.g. 0.5 removes half the multiply-accumulates.
        thresh: damage threshold of the halving rule (paper: 0.01 on CIFAR).
        iters_per_half: measurements before each decision (paper: 1000, one
            per step; here one every `measure_every` steps).
        layers: None (every layer whose channels can be removed: not feeding
            a model output, a Flatten into an output, or an unsupported layer,
            and the heads of every MultiHeadAttention) or a list of Dense/Conv
            layer names and '<attention layer>/heads'. A layer left whole
            (LSTM, GRU, Embedding, ...) is refused with the reason.
        probe_data: held inputs (array, or list/dict for several inputs) on
            which the damage is measured; a few hundred training examples.
        measure_every: training steps between measurements (>= 1).
        probe_batch_size: examples per measurement, drawn at random from
            `probe_data`.
        begin_step: training step (of this `fit`) at which the first layer
            starts searching; let BatchNorm statistics settle first.
        stagger: steps between the starts of consecutive layers; default
            `iters_per_half * measure_every // number of layers`.
        min_filters: never prune a layer below this many filters.
        residual: "together" (layers tied by residual `Add`s form one target
            whose filters are pruned in all of them) or "skip" (leave them).
        thresh_growth: >= 1. Not in the paper: after every round in which
            each layer still searching has ended at least one binary search
            (pruning or not) at the current threshold and the target is still
            not met, multiply the threshold by this, so that the target is
            reached within a training budget. 1 (default) keeps the paper's
            fixed threshold.
        seed: seed of the random halves and sub-batches.
        verbose: 1 prints every pruning decision.

    Attributes (after `fit`): `flops_ratio`, `widths` ({target name: live
    filters}), `original_widths`, `events` (one dict per pruning),
    `measurements`, `measure_seconds` (time spent measuring),
    `target_reached`, `thresh_reached` (the threshold at the end).
    """

    def __init__(
        self,
        target_flops,
        thresh=0.01,
        iters_per_half=50,
        layers=None,
        *,
        probe_data,
        measure_every=4,
        probe_batch_size=64,
        begin_step=0,
        stagger=None,
        min_filters=1,
        residual="together",
        thresh_growth=1.0,
        seed=None,
        verbose=0,
    ):
        super().__init__()
        ok = isinstance(target_flops, (int, float)) and not isinstance(target_flops, bool)
        if not (ok and 0 < target_flops < 1):
            raise ValueError(
                "AOFP: `target_flops` (fraction of the original FLOPs to keep) must be "
                f"a number in (0, 1). Received: target_flops={target_flops!r}"
            )
        if not (isinstance(thresh, (int, float)) and 0 < thresh < float("inf")):
            raise ValueError(
                f"AOFP: `thresh` must be a finite number > 0. Received: thresh={thresh!r}"
            )
        _check_int(iters_per_half, "iters_per_half", 1)
        _check_int(measure_every, "measure_every", 1)
        _check_int(probe_batch_size, "probe_batch_size", 1)
        _check_int(begin_step, "begin_step", 0)
        _check_int(min_filters, "min_filters", 1)
        if stagger is not None:
            _check_int(stagger, "stagger", 0)
        if not (isinstance(thresh_growth, (int, float)) and 1 <= thresh_growth < float("inf")):
            raise ValueError(
                "AOFP: `thresh_growth` must be a finite number >= 1. "
                f"Received: thresh_growth={thresh_growth!r}"
            )
        if residual not in RESIDUAL:
            raise ValueError(
                f"AOFP: `residual` must be one of {RESIDUAL}. Received: residual={residual!r}"
            )
        if layers is not None and (
            isinstance(layers, str) or not all(isinstance(n, str) for n in layers)
        ):
            raise ValueError(
                f"AOFP: `layers` must be None or a list of layer names. Received: {layers!r}"
            )
        if probe_data is None:
            raise ValueError(
                "AOFP: `probe_data` (held inputs to measure the damage on) is required."
            )
        self.target_flops = float(target_flops)
        self.thresh = float(thresh)
        self.iters_per_half = iters_per_half
        self.layers = None if layers is None else list(layers)
        self.probe_data = probe_data
        self.measure_every = measure_every
        self.probe_batch_size = probe_batch_size
        self.begin_step = begin_step
        self.stagger = stagger
        self.min_filters = min_filters
        self.residual = residual
        self.thresh_growth = float(thresh_growth)
        self.seed = seed
        self.verbose = verbose
        self._holder = None

    # -- set-up -------------------------------------------------------------

    def _targets(self, graph):
        candidates = [s for s in graph.base_spaces() if graph.readers(s)]
        if self.residual == "skip":
            candidates = [s for s in candidates if len(s.producers) == 1]
        if self.layers is None:
            return candidates
        by_name = {}
        for space in graph.base_spaces(include_pinned=True):
            names = [space.name] if space.owner is not None else [p.name for p in space.producers]
            by_name.update((name, space) for name in names)
        refused = {getattr(layer, "name", None): reason for layer, reason in graph.refused.items()}
        chosen = []
        for name in self.layers:
            space = by_name.get(name)
            if space is None:
                raise ValueError(
                    f"AOFP: `layers` names '{name}', which is "
                    + (f"left whole: {refused[name]}." if name in refused else
                       "not a Dense/Conv layer (or '<attention layer>/heads') of the model.")
                )
            if space not in candidates:
                why = "; ".join(space.pins) or (
                    "tied to other layers by a residual Add (residual='skip')"
                    if len(space.producers) > 1
                    else "nothing reads it"
                )
                raise ValueError(f"AOFP: the filters of '{name}' cannot be pruned: {why}.")
            if space not in chosen:
                chosen.append(space)
        return [s for s in candidates if s in chosen]

    def _probe(self, graph, space, tensors):
        def index(tensor):
            if not any(tensor is t for t in tensors):
                tensors.append(tensor)
            return next(i for i, t in enumerate(tensors) if t is tensor)

        entries, inputs = [], {}
        for port, reading in graph.readers(space):
            rows = [reading.rows(space, c) for c in range(space.width)]
            for node in graph.calls(port.layer):
                read = [t for t in node.input_tensors if any(t is r for r in port.tensors)]
                if space.owner is None and not read:
                    continue
                for t in node.input_tensors:
                    inputs[id(t)] = index(t)
                read = id(read[0]) if read else None
                entries.append((node, read, _following_batch_norm(graph, node), rows))
        return _Probe(space, entries, inputs)

    def _mask_space(self, space, mask):
        """Hold the space's channels at `mask`: every trainable per-channel slice of
        its producers and followers, through variable constraints."""
        for port in space.ports:
            if port.part not in (PRODUCER, FOLLOWER):
                continue
            variables = rules.weights_by_path(port.layer)
            for slot in port.slots:
                variable = variables[slot.weight]
                if variable.trainable:
                    self._constrained.append((variable, variable.constraint))
                    variable.constraint = _ChannelMask(
                        mask, slot.axis, len(variable.shape), variable.constraint)

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "optimizer", None) is not None and model.built:
            self._attach()

    def _attach(self):
        """The targets, the probe, the masks and the host state (see
        callbacks/state.py), before `BackupAndRestore` can restore them."""
        optimizer = self.model.optimizer
        if self._holder is not None and getattr(optimizer, self._holder.name, None) is self._holder:
            return  # attached to this optimizer already
        graph = ChannelGraph(self.model)
        self._graph = graph
        spaces = self._targets(graph)
        if not spaces:
            raise ValueError(
                f"AOFP: model '{self.model.name}' has no layer whose filters can be "
                f"pruned. Reasons: {graph.unsupported or 'every space is pinned'}"
            )
        tensors = []
        self._probes = [self._probe(graph, s, tensors) for s in spaces]
        inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
        probe_model = keras.Model(inputs, tensors)
        # Compiled once per target (the argument `i` is static): a measurement
        # costs one forward pass of the probe plus two calls of each next layer.
        weights = self.model.weights
        self._forward = _compiled(lambda batch: probe_model(batch, training=False), weights)
        self._damage_fn = _compiled(self._damage, weights, static_argnums=(0,))
        state_lib.build_optimizer(self.model)
        self._masks = [state_lib.step_variable(self.model, (s.width,), "aofp_mask") for s in spaces]
        self._holder = state_lib.attach_host_state(self, self._host_state)

    def on_train_begin(self, logs=None):
        self._attach()
        spaces = [p.space for p in self._probes]
        graph = self._graph
        self._searches = [
            HalvingSearch(s.width, self.iters_per_half, self.thresh, self.min_filters)
            for s in spaces
        ]
        self._constrained = []
        for space, mask in zip(spaces, self._masks):
            self._mask_space(space, mask)
        self.model.make_train_function(force=True)
        stagger = self.stagger
        if stagger is None:
            stagger = self.iters_per_half * self.measure_every // len(spaces)
        self._starts = [self.begin_step + i * stagger for i in range(len(spaces))]
        self._rng = np.random.default_rng(self.seed)
        self._n_probe = len(keras.tree.flatten(self.probe_data)[0])
        self._original_flops = kernel_macs(graph)
        self._step = 0
        self.original_widths = {p.name: p.space.width for p in self._probes}
        self.events = []
        self.measurements = 0
        self.measure_seconds = 0.0
        self.thresh_reached = self.thresh
        self._rounds_at_raise = [0] * len(spaces)
        self._update_flops()
        self._resumed = False

    # -- host state (carried by BackupAndRestore; see callbacks/state.py) ------

    def _host_state(self):
        if getattr(self, "_searches", None) is None:  # saved before fit began
            return {}, {}
        document = {
            "step": self._step, "measurements": self.measurements,
            "measure_seconds": self.measure_seconds, "thresh_reached": self.thresh_reached,
            "rounds_at_raise": self._rounds_at_raise, "events": self.events,
            "rng": self._rng.bit_generator.state,
            "searches": [search.state() for search in self._searches],
        }
        masks = {f"mask_{i}": keras.ops.convert_to_numpy(m) for i, m in enumerate(self._masks)}
        return document, masks

    def on_epoch_begin(self, epoch, logs=None):
        if self._resumed:
            return
        self._resumed = True
        restored = self._holder.take_restored()
        if restored is None or not restored[0]:
            return
        document, arrays = restored
        for i, mask in enumerate(self._masks):
            mask.assign(arrays[f"mask_{i}"])
        self._step, self.measurements = document["step"], document["measurements"]
        self.measure_seconds = document["measure_seconds"]
        self.thresh_reached = document["thresh_reached"]
        self._rounds_at_raise, self.events = document["rounds_at_raise"], document["events"]
        self._rng.bit_generator.state = document["rng"]
        for search, state in zip(self._searches, document["searches"]):
            search.load_state(state)
        self._update_flops()

    # -- measuring and deciding -----------------------------------------------

    def _widths(self, extra=None):
        widths = {p.space.id: len(s.live) for p, s in zip(self._probes, self._searches)}
        if extra is not None:
            widths[extra[0]] += -extra[1]
        return widths

    def _update_flops(self):
        self.flops_ratio = kernel_macs(self._graph, self._widths()) / self._original_flops
        self.widths = {p.name: len(s.live) for p, s in zip(self._probes, self._searches)}
        self.target_reached = self.flops_ratio <= self.target_flops

    def _budget(self, probe, search):
        """How many of the candidates still need to go to reach the target."""
        target = self.target_flops * self._original_flops
        half = len(search.candidates())
        for k in range(1, half + 1):
            if kernel_macs(self._graph, self._widths((probe.space.id, k))) <= target:
                return k
        return half

    def _sub_batch(self):
        n = min(self.probe_batch_size, self._n_probe)
        index = np.sort(self._rng.choice(self._n_probe, size=n, replace=False))
        return keras.tree.map_structure(lambda a: np.asarray(a)[index], self.probe_data)

    def _damage(self, i, outputs, keeps):
        """(sum ||y_base - y_ablated||^2, sum ||y_base||^2) of probe `i`."""
        ops = keras.ops
        damage = power = 0.0
        probe = self._probes[i]
        for (node, read, batch_norm, _), keep in zip(probe.entries, keeps):
            values = {tid: outputs[j] for tid, j in probe.inputs.items()}
            args, kwargs = node.arguments.fill_in(values)
            layer = node.operation
            if read is None:  # a MultiHeadAttention's heads, before its output kernel
                heads = rules.rule_for(layer).head_outputs(layer, *args, **kwargs)
                keep = ops.reshape(keep, (-1, 1))
                base, ablated = layer.output_dense(heads), layer.output_dense(heads * keep)
            else:
                base = layer(*args, **kwargs)
                values[read] = values[read] * keep
                args, kwargs = node.arguments.fill_in(values)
                ablated = layer(*args, **kwargs)
            if batch_norm is not None:
                base = batch_norm(base, training=False)
                ablated = batch_norm(ablated, training=False)
            damage += ops.sum(ops.square(base - ablated))
            power += ops.sum(ops.square(base))
        return damage, power

    def _measure(self, active):
        outputs = self._forward(self._sub_batch())
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i in active:
            probe, search = self._probes[i], self._searches[i]
            masked = search.sample(self._rng)
            keeps = []
            for _, read, _, rows in probe.entries:
                width = probe.space.width if read is None else outputs[probe.inputs[read]].shape[-1]
                keep = np.ones(width, "float32")
                for c in masked:
                    keep[rows[c]] = 0.0
                keeps.append(keep)
            damage, power = self._damage_fn(i, outputs, keeps)
            search.record(masked, float(damage) / max(float(power), 1e-30))

    def _prune(self, i, channels, damage):
        probe, mask = self._probes[i], self._masks[i]
        keep = keras.ops.convert_to_numpy(mask).copy()
        keep[channels] = 0.0
        mask.assign(keep)
        for variable, _ in self._constrained:
            variable.assign(variable.constraint(variable))
        self._update_flops()
        self.events.append(
            dict(step=self._step, layer=probe.name, pruned=list(channels),
                 live=len(self._searches[i].live), damage=damage, flops_ratio=self.flops_ratio)
        )
        if self.verbose:
            print(
                f"AOFP step {self._step}: {probe.name} -{len(channels)} -> "
                f"{len(self._searches[i].live)} filters (damage {damage:.4f}), "
                f"FLOPs {self.flops_ratio:.3f}"
            )

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.target_reached or self._step % self.measure_every:
            return
        active = [
            i
            for i, s in enumerate(self._searches)
            if self._step >= self._starts[i] and not s.finished
        ]
        if not active:
            return
        self.model  # noqa: B018 -- on JAX, brings the training state back into the variables
        start = time.perf_counter()
        self._measure(active)
        self.measurements += 1
        for i in active:
            search = self._searches[i]
            if not search.ready or self.target_reached:
                continue
            candidates = search.candidates()
            damage = float(np.mean([search.mean_score(c) for c in candidates]))
            pruned = search.decide(self._budget(self._probes[i], search))
            if pruned:
                self._prune(i, pruned, damage)
        self._relax_threshold()
        self.measure_seconds += time.perf_counter() - start

    def _relax_threshold(self):
        """Raise the threshold after a full round of searches that left the target unmet."""
        if self.thresh_growth == 1 or self.target_reached or self._step < self._starts[-1]:
            return
        searching = [i for i, s in enumerate(self._searches) if not s.finished]
        if searching and all(
            self._searches[i].rounds > self._rounds_at_raise[i] for i in searching
        ):
            self.thresh_reached *= self.thresh_growth
            for search in self._searches:
                search.thresh = self.thresh_reached
            self._rounds_at_raise = [s.rounds for s in self._searches]
            if self.verbose:
                print(f"AOFP step {self._step}: thresh raised to {self.thresh_reached:.4g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["flops_ratio"] = self.flops_ratio

    def on_train_end(self, logs=None):
        for variable, constraint in self._constrained:
            variable.assign(variable.constraint(variable))
            variable.constraint = constraint
        self._constrained = []
        optimizer = self.model.optimizer
        state_lib.release_step_variables(optimizer, self._masks)
        state_lib.detach_host_state(optimizer, self._holder)
        self._holder = None
        self.model.make_train_function(force=True)
        if self.events:
            self._reestimate_batch_norm()
        if not self.target_reached:
            relax = (
                "pass thresh_growth=2.0 (relaxes the threshold after every round that "
                "misses the target)"
                if self.thresh_growth == 1
                else f"raise thresh_growth (now {self.thresh_growth:g}) to "
                f"{2 * self.thresh_growth:g}"
            )
            warnings.warn(
                f"AOFP reached {self.flops_ratio:.3f} of the original FLOPs, not the "
                f"target {self.target_flops}, in {self._step:,} steps: {relax}, raise "
                f"`thresh` (now {self.thresh:g}), lower `iters_per_half` (now "
                f"{self.iters_per_half}) or `measure_every` (now {self.measure_every}), "
                "or train longer.",
                stacklevel=2,
            )

    def _reestimate_batch_norm(self):
        """Moving statistics of every BatchNormalization = those of its input on the
        probe data, with the layers before it already re-estimated."""
        n = self._n_probe
        inputs = self.model.inputs
        inputs = inputs[0] if len(inputs) == 1 else inputs
        for layer in self.model.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            features = keras.Model(inputs, layer.input)
            axis = layer.axis % len(layer.input.shape)
            count, total, total_sq = 0, 0.0, 0.0
            for start in range(0, n, self.probe_batch_size):
                rows = slice(start, start + self.probe_batch_size)
                batch = keras.tree.map_structure(lambda a: np.asarray(a)[rows], self.probe_data)
                value = keras.ops.convert_to_numpy(features(batch, training=False))
                value = np.moveaxis(value, axis, -1).astype("float64")
                value = value.reshape(-1, value.shape[-1])
                count += value.shape[0]
                total = total + value.sum(axis=0)
                total_sq = total_sq + np.square(value).sum(axis=0)
            mean = total / count
            variance = np.maximum(total_sq / count - np.square(mean), 0.0)
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
