"""
What a long run meets, and how train.py's loop answers: a stop signal (a preemptible
machine's SIGTERM, a Ctrl-C) and a loss spike. The answers themselves (a checkpoint at
this step, a rewind to the last one) are the loop's; this file decides when.

    from faults import SpikeGuard, StopSignals
    with StopSignals() as stop:              # SIGTERM / SIGINT only set stop.signum ...
        while training:
            step()
            if stop.signum:                  # ... so the step in flight finishes first
                save(); raise Preempted(stop.signum)   # exit code 128 + signum (143, 130)
    guard = SpikeGuard(factor=3.0, window=50)
    why = guard.check(loss)                  # None, or why this loss is a spike

Preemption: SLURM and Kubernetes send SIGTERM, then SIGKILL after a grace period (30 s
by default in both), so a run has that long to save; torchrun forwards the SIGTERM it gets
to every process. A second signal means "now": the handler raises Interrupted at once, and
whatever it interrupts (a save included: checkpoint.save_checkpoint writes to a temporary
file) leaves the last checkpoint as it was. A second signal within a second of the first
is the same event delivered twice (Ctrl-C reaches torchrun's whole process group, and
torchrun then forwards it to its processes again) and is ignored.

Loss spikes (PaLM, Chowdhery et al. 2022, section 5.1): about 20 times in training, the
loss spiked without a bad batch to blame alone; restarting from a checkpoint ~100 steps
before the spike and skipping the 200-500 batches around it avoided it. Here a spike is a
non-finite loss, or one above factor x the mean of the last `window` steps.
"""

import collections
import math
import signal
import sys
import threading
import time

from errors import UserError


class NonFiniteLossError(UserError):
    """The loss went NaN or inf: the run stops before the optimizer step, checkpoint intact."""


class SpikeError(UserError):
    """on_spike=rewind ran out of rewinds (max_rewinds): stopped, checkpoint intact."""


class SaveError(UserError):
    """A checkpoint could not be written (a full disk, a read-only folder): the previous one
    is whole; the run stops with exit code 1."""

    exit_code = 1


class Preempted(Exception):
    """A stop signal ended the run after saving a checkpoint: exit with 128 + signum."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(BaseException):
    """A second stop signal: out at once (a BaseException, as KeyboardInterrupt, so that no
    `except Exception` on the way swallows it), the last checkpoint as it was."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active (a context manager), SIGTERM and SIGINT set .signum instead of killing
    the process; the previous handlers come back on exit. Outside the main thread Python
    cannot take signals, and this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    DUPLICATE_S = 1.0  # the same signal twice within this long: one event delivered twice

    def __init__(self):
        self.signum, self.at, self.previous = 0, 0.0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        now = time.monotonic()
        if self.signum:
            if signum == self.signum and now - self.at < self.DUPLICATE_S:
                return
            raise Interrupted(signum)
        self.signum, self.at = signum, now
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(a second Ctrl-C stops at once)", file=sys.stderr, flush=True)


class SpikeGuard:
    """Tells a spike from an ordinary loss: non-finite, or above factor x the mean of the
    last `window` ordinary losses (factor 0: non-finite only). Spikes are not added to the
    history; .recent is saved in checkpoints, so a resumed run judges as the uninterrupted."""

    def __init__(self, factor, window, recent=()):
        self.factor, self.window = factor, window
        self.recent = collections.deque(recent, maxlen=min(window, 2**31))  # a longer window never fills anyway

    def check(self, loss):
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if self.factor > 0 and len(self.recent) == self.window:
            mean = sum(self.recent) / self.window
            if loss > self.factor * mean:
                return (f"the loss {loss:.4f} is {loss / mean:.1f}x the mean of the last {self.window} steps "
                        f"({mean:.4f}; spike_factor={self.factor:g})")
        self.recent.append(loss)
        return None
