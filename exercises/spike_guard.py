"""
Exercise: telling a loss spike from an ordinary loss (the README's "Long runs and
preemption"; train.py's on_spike=rewind).

Read faults.SpikeGuard only after you have tried.
Grade: python -m exercises check spike_guard
"""

import math  # noqa: F401  (you will need it)


class SpikeGuard:
    """Judges each step's loss, in order (PaLM, Chowdhery et al. 2022, section 5.1: rewind
    past the batches of a spike). factor: a loss above factor x the mean of the recent
    ordinary losses is a spike (factor 0: only a non-finite loss is); window: how many of
    the most recent ordinary losses that mean is over."""

    def __init__(self, factor, window):
        """Keep factor and window (as self.factor, self.window) and start self.recent: the
        last `window` ordinary losses, oldest first (a list, or a collections.deque)."""
        raise NotImplementedError("exercises/spike_guard.py: SpikeGuard.__init__")

    def check(self, loss):
        """Return None when `loss` (a float) is ordinary, after appending it to self.recent
        (which keeps only the last `window`); or a string saying why it is a spike, leaving
        self.recent as it was (a spike must not raise the mean the next loss is judged by).

        - A non-finite loss (nan, inf, -inf) is always a spike, from the first step on.
        - With factor > 0, once self.recent holds `window` losses, a loss strictly greater
          than factor * their mean is a spike.
        - Otherwise (the window not yet full, or factor 0) a finite loss is ordinary.
        """
        raise NotImplementedError("exercises/spike_guard.py: SpikeGuard.check")
