"""Prepared benchmarks run end to end on tiny sizes on the CPU (as run_all.py --quick and a GPU run do)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.entry_points import call_like_a_process

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_script(capsys, monkeypatch):
    """``python bench/NAME ARGS`` in this process (runpy, as the interpreter runs a script): returns
    (exit code, stdout, stderr) without an interpreter start and about 8 s of imports. For the scripts
    that only read files; the ones that time or train runs are run as processes."""

    def call(name: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
        monkeypatch.syspath_prepend(str(BENCH))
        return call_like_a_process(lambda: runpy.run_path(str(BENCH / name), run_name="__main__"), capsys)

    return call


def test_gpu_bench_quick_on_cpu(tmp_path):
    markdown = tmp_path / "gpu.md"
    command = [
        sys.executable,
        str(BENCH / "gpu_bench.py"),
        "--quick",
        "--device",
        "cpu",
        "--students",
        "mobilefacenet",
        "--precision",
        "32",
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: CPU" in result.stdout
    text = markdown.read_text()
    for variant in ("mobilefacenet plain", "mobilefacenet distill cached", "mobilefacenet distill online"):
        assert f"| {variant} |" in text


def test_lightning_loop_bench_quick(tmp_path):
    """The Lightning-vs-raw-loop bench builds ekd-train's real Trainer (config, callbacks, logger)."""
    markdown = tmp_path / "lightning.md"
    command = [
        sys.executable,
        str(BENCH / "bench_lightning_loop.py"),
        "--quick",
        "--logger",
        "csv",
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = markdown.read_text()
    for variant in ("raw PyTorch loop", "ekd-train's Trainer", "bare Trainer.fit", "the raw loop's math"):
        assert variant in text


def test_channels_last_bench_quick_on_a_fresh_data_cache(tmp_path):
    """Two whole ekd-train runs side by side (perf_common's helpers, shared with bench_teacher_cache)
    on a data cache neither has generated yet: one generates the benchmark, the other waits for it."""
    import os

    env = {**os.environ, "EKD_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "disabled"}
    command = [sys.executable, str(BENCH / "bench_channels_last.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| none |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 7 and cells[3].endswith("x") and cells[4].endswith("x")
    assert all(0.0 <= float(acc) <= 100.0 for acc in cells[6].split(" / "))


def test_pair_sets_bench_quick(tmp_path):
    """Both pair-set designs are generated, read and scored; the pooled one embeds fewer images."""
    command = [sys.executable, str(BENCH / "bench_pair_sets.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| fresh", "| pooled"))]
    fresh, pooled = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert (fresh[1], fresh[2]) == ("120", "240")  # 3 sets x 40 fresh pairs: 2 new images a pair
    assert pooled[1] == "180" and int(pooled[2]) <= 3 * 10 * 3 * 2  # at most identities x images x sides
    assert "pooled / fresh:" in result.stdout


def _rescored_study(root, accuracies, extra_seed=False):
    """A fabricated study folder: no-KD seeds 0 and 1 (and 2) with the given percent accuracies
    (frontal, pose) and their average, and a backbone file whose bytes name the run."""
    from ekd.report import write_results
    from ekd.runs import BACKBONE_FILE
    from tests.report.test_table import _result

    for seed, (frontal, pose) in enumerate(accuracies + ([(50.0, 50.0)] if extra_seed else [])):
        run = _result("none", seed, {"synth_frontal": frontal, "synth_pose": pose}, dataset="synthetic")
        run.mean_accuracy = (frontal + pose) / 200.0
        folder = root / "none" / f"seed{seed}"
        write_results(folder, run)
        (folder / BACKBONE_FILE).write_bytes(f"weights of seed {seed}".encode())


def test_compare_rescored_pairs_runs_by_their_weights(tmp_path, bench_script):
    """After minus before, run by run, against differences worked out by hand; a run in one study
    only is listed; a run whose weights differ is refused by name."""
    before, after = tmp_path / "before", tmp_path / "after"
    _rescored_study(before, [(80.0, 70.0), (82.0, 72.0)])
    _rescored_study(after, [(81.0, 69.0), (85.0, 71.0)], extra_seed=True)
    code, out, err = bench_script("compare_rescored.py", str(before), str(after))
    assert code == 0, err[-3000:]
    (row,) = [line for line in out.splitlines() if line.startswith("| no KD |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # frontal +1, +3; pose -1, -1; average (75 -> 75, 77 -> 78) 0, +1; seed std of the average
    # before stdev(75, 77) = sqrt(2), after stdev(75, 78) = sqrt(4.5)
    assert cells == ["no KD", "2", "+2.00 ± 1.41", "-1.00 ± 0.00", "+0.50 ± 0.71", "1.41", "2.12"]
    assert "2 runs with byte-identical weights" in out
    assert "in only one of the studies (left out): none (mobilefacenet) seeds 2" in out

    (after / "none" / "seed1" / "backbone.pth").write_bytes(b"other weights")
    code, _, err = bench_script("compare_rescored.py", str(before), str(after))
    assert code != 0
    assert "seed 1 was trained differently" in err and "seed1/backbone.pth" in err


def test_versus_row_against_closed_form_welch(tmp_path, bench_script):
    """EKD against each other row from a comparison.csv: n = 2 a side with equal variances gives
    Welch df = 2, where p = 1 - |t| / sqrt(2 + t^2) and t_{0.975, 2} = 4.3027; Holm over 2 tests."""
    import csv
    import math

    table = tmp_path / "comparison.csv"
    rows = [  # method, label, n, mean, std: values ekd (1, 3), none (6, 8), kd (2, 4); a one-run teacher
        ("ekd", "EKD", 2, 2.0, math.sqrt(2)),
        ("none", "no KD", 2, 7.0, math.sqrt(2)),
        ("kd", "KD", 2, 3.0, math.sqrt(2)),
        ("teacher", "teacher", 1, 9.0, ""),
    ]
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "metric", "method", "label", "student", "column", "n", "mean", "std"])
        for method, label, n, mean, std in rows:
            writer.writerow(["synthetic", "accuracy", method, label, "mobilefacenet", "Avg", n, mean, std])
    code, out, err = bench_script("versus_row.py", str(table), "ekd")
    assert code == 0, err[-3000:]
    found = {
        cells[1]: cells[4:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in out.splitlines())
        if len(cells) == 7 and cells[0] == "Avg"
    }
    se = math.sqrt(2 / 2 + 2 / 2)
    p_none = 1 - 5 / se / math.sqrt(2 + (5 / se) ** 2)  # 0.0715
    p_kd = 1 - 1 / se / math.sqrt(2 + (1 / se) ** 2)  # 0.553
    half = 4.302652729911275 * se
    assert found == {
        "no KD": [f"-5.00 ± {half:.2f}", f"{p_none:.3g}", f"{2 * p_none:.3g}"],
        "KD": [f"-1.00 ± {half:.2f}", f"{p_kd:.3g}", f"{max(2 * p_none, p_kd):.3g}"],
    }
    code, _, err = bench_script("versus_row.py", str(table), "rkd")
    assert code != 0 and "has no method 'rkd'" in err
