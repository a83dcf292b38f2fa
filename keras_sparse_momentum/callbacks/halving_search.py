"""The binary search of AOFP for one layer, as a pure-Python state machine.

No model, no Keras: the callback feeds it damages it measured, tests feed it a
synthetic oracle. The rule (Ding et al., "Approximated Oracle Filter Pruning
for Destructive CNN Width Optimization", ICML 2019; docs/algorithms.md §4):

- `live`: the channels not pruned yet; `search`: the search space, at first
  all live channels.
- Every iteration a random half (`len(search) // 2`) of the search space is
  masked in addition to the pruned channels, the damage `t` at the next layer
  is measured, and `t` is added to the score of every masked channel.
- After `iters_per_half` iterations, with `half = len(search) // 2` and the
  `half` channels of lowest mean score (score / times masked) as candidates:
  if the mean of their mean scores is below `thresh`, they are pruned and the
  search restarts on the live channels; else if `half > 1` the search space
  shrinks to the candidates; else the search restarts.
"""

import numpy as np


class HalvingSearch:
    """AOFP's search over the channels of one layer (or one residual-tied space).

    Args:
        channels: int (channels 0..n-1) or iterable of channel indices.
        iters_per_half: damage measurements before each decision (>= 1).
        thresh: prune the candidate half when its mean damage is below this.
        min_keep: never prune below this many live channels (>= 1).
    """

    def __init__(self, channels, iters_per_half, thresh, min_keep=1):
        if isinstance(channels, int):
            channels = range(channels)
        self.live = sorted(int(c) for c in channels)
        self.pruned = []
        self.iters_per_half = int(iters_per_half)
        self.thresh = float(thresh)
        self.min_keep = int(min_keep)
        self.decisions = 0
        self.rounds = 0  # searches ended, by a pruning or with nothing found
        self._restart()

    def _restart(self):
        self.search = list(self.live)
        self._reset_scores()

    def _reset_scores(self):
        self.scores = dict.fromkeys(self.search, 0.0)
        self.counts = dict.fromkeys(self.search, 0)
        self.iterations = 0

    def state(self):
        """Everything the search decides with, JSON-serialisable (`load_state` reverses it)."""
        return {
            "live": self.live, "pruned": self.pruned, "search": self.search,
            "scores": list(self.scores.items()), "counts": list(self.counts.items()),
            "iterations": self.iterations, "decisions": self.decisions,
            "rounds": self.rounds, "thresh": self.thresh,
        }

    def load_state(self, state):
        """Continue from `state()`'s output."""
        self.live, self.pruned, self.search = state["live"], state["pruned"], state["search"]
        self.scores = {int(c): float(v) for c, v in state["scores"]}
        self.counts = {int(c): int(n) for c, n in state["counts"]}
        self.iterations, self.decisions = state["iterations"], state["decisions"]
        self.rounds, self.thresh = state["rounds"], state["thresh"]

    @property
    def finished(self):
        """No half of the live channels can be pruned any more."""
        return len(self.live) <= self.min_keep or len(self.live) < 2

    @property
    def ready(self):
        """Enough measurements for a decision."""
        return self.iterations >= self.iters_per_half

    def sample(self, rng):
        """A random half of the search space to mask in the next measurement."""
        half = len(self.search) // 2
        return sorted(int(c) for c in rng.choice(self.search, size=half, replace=False))

    def record(self, masked, damage):
        """Add the damage measured with `masked` (from `sample`) to their scores."""
        for c in masked:
            self.scores[c] += float(damage)
            self.counts[c] += 1
        self.iterations += 1

    def mean_score(self, channel):
        """Mean damage of the measurements that masked `channel` (inf if none did)."""
        count = self.counts[channel]
        return self.scores[channel] / count if count else float("inf")

    def candidates(self):
        """The `len(search) // 2` channels of lowest mean score, lowest first."""
        order = sorted(self.search, key=lambda c: (self.mean_score(c), c))
        return order[: len(self.search) // 2]

    def decide(self, budget=None):
        """Apply the halving rule; returns the channels pruned now (maybe none).

        Args:
            budget: prune at most this many of the candidates (lowest scores
                first), e.g. just enough to reach a FLOPs target.
        """
        candidates = self.candidates()
        self.decisions += 1
        mean = float(np.mean([self.mean_score(c) for c in candidates])) if candidates else np.inf
        if candidates and mean < self.thresh:
            room = len(self.live) - self.min_keep
            take = candidates[: max(0, min(room, len(candidates) if budget is None else budget))]
            self.pruned.extend(take)
            self.live = [c for c in self.live if c not in set(take)]
            self.rounds += 1
            self._restart()
            return take
        if len(candidates) > 1:
            self.search = candidates
            self._reset_scores()
        else:
            self.rounds += 1
            self._restart()
        return []
