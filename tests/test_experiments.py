"""experiments/: each script's --help states its purpose in whole sentences; the harness
prepares tiny shakespeare from a prepared data/shakespeare_char (the text rebuilt from its
tokens, byte for byte) instead of downloading it, and a preparation that fails for want of
the text ends in one line, exit code 2 (no CalledProcessError traceback)."""

import inspect
import math
import json
import os
import string
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, exit_code
from errors import cli

sys.path.insert(0, os.path.join(REPO, "experiments"))
import harness  # noqa: E402  (experiments/ is no package: its folder goes on sys.path first)

SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith("_experiment.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script_in_whole_sentences(script):
    r = subprocess.run([sys.executable, os.path.join("experiments", script), "--help"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(REPO, "experiments", script)) as f:
        doc = f.read().split('"""')[1]
    first = "".join(doc.strip().split("\n\n")[0].split())  # argparse rewraps it, breaking at hyphens too
    assert first.endswith(".") and first in "".join(r.stdout.split()), r.stdout


def test_the_text_is_rebuilt_from_a_prepared_char_dataset(char_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "SHAKESPEARE", char_dataset)
    path = harness.prepared_text(str(tmp_path))
    text = "".join(inspect.getsource(m) for m in (json.decoder, textwrap, string))  # conftest's corpus
    with open(path, encoding="utf-8", newline="") as f:
        assert f.read() == text


def test_a_missing_split_is_prepared_from_the_prepared_text_without_a_download(char_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "SHAKESPEARE", char_dataset)
    monkeypatch.setattr(harness, "REPO", str(tmp_path))  # no data/shakespeare_voices there yet
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        given = cmd[cmd.index("--input") + 1]  # prepare.py downloads only without --input
        assert os.path.getsize(given) > 0
        return subprocess.CompletedProcess(cmd, 0, stderr="")

    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    harness.prepare_data(None, hold_out="GLOUCESTER,JULIET")
    assert len(calls) == 1 and "--hold_out" in calls[0]


def test_an_offline_failure_to_prepare_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "SHAKESPEARE", str(tmp_path / "none"))  # nothing prepared, nothing to rebuild
    monkeypatch.setattr(harness, "REPO", str(tmp_path))
    message = "error: could not download tiny shakespeare (offline?); provide the text with --input PATH"
    monkeypatch.setattr(harness.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 2, stderr=message + "\n"))
    code, err = exit_code(cli(lambda argv: harness.prepare_data(None)), [], capsys)
    assert code == 2 and err.count("\n") == 1 and "could not download" in err and "Traceback" not in err, err


def test_a_spike_is_counted_once_per_excursion_and_a_nan_is_one():
    flat = [2.0, 2.05, 1.95] * 10  # a batch's noise: no spike
    assert harness.spikes(flat) == 0
    assert harness.spikes(flat[:15] + [2.5, 2.6, 2.4] + flat[:12]) == 1  # three high steps in a row: one spike
    assert harness.spikes(flat[:15] + [2.5] + flat[:5] + [2.5] + flat[:9]) == 2
    assert harness.spikes(flat[:15] + [2.25] + flat[:5]) == 0  # 0.25 nats above the median: under the threshold
    assert harness.spikes(flat[:15] + [float("nan")]) == 1


def test_the_fitted_optimum_is_the_vertex_of_the_parabola_in_log_lr():
    import lr_width_experiment as exp

    lrs = [2.0 ** k for k in range(-10, -1)]
    vertex = 2.0 ** -6.3
    losses = [2 + 0.1 * (math.log2(lr) - math.log2(vertex)) ** 2 for lr in lrs]
    assert exp.fitted_optimum(lrs, losses) == pytest.approx(vertex, rel=1e-9)
    assert exp.fitted_optimum(lrs, losses[::-1]) == pytest.approx(2.0 ** (-12 + 6.3), rel=1e-9)
    losses[-1] = 1.0  # the best at the grid's edge: that point itself
    assert exp.fitted_optimum(lrs, losses) == lrs[-1]


def test_the_basin_is_where_the_interpolated_loss_is_within_the_margin():
    import lr_width_experiment as exp

    lrs = [1.0, 2.0, 4.0, 8.0, 16.0]
    # the best (2.0) at 4; 0.1 higher one grid step either side: the 0.05 line is crossed halfway
    low, high = exp.basin(lrs, [3.0, 2.1, 2.0, 2.1, 3.0])
    assert low == pytest.approx(2 ** 1.5) and high == pytest.approx(2 ** 2.5)
    low, high = exp.basin(lrs, [2.03, 2.01, 2.0, 2.5, float("inf")])  # inside to the grid's left edge
    assert low == 1.0 and high == pytest.approx(2 ** (2 + 0.05 / 0.5))
    assert exp.basin(lrs, [2.0, 3.0, 3.0, 3.0, 3.0]) == (1.0, pytest.approx(2 ** 0.05))
