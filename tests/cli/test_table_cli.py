"""ekd-table end to end on fabricated results files: printed table and the four output files."""

from __future__ import annotations

import csv
import math

import pytest

from ekd.cli.table import main
from ekd.report import RunResults, write_results
from ekd.report.table import CSV_FIELDS

# label / order / paper row as ekd-train records them from the method files (conf/distill)
ROWS = {"none": ("no KD", 10.0, "MobileFaceNet (no KD)"), "rkd": ("RKD", 70.0, "RKD")}


def _write(directory, method, seed, lfw, agedb):
    label, order, paper_row = ROWS[method]
    write_results(
        directory,
        RunResults(
            method=method,
            label=label,
            order=order,
            paper_row=paper_row,
            dataset="ms1mv2",
            student="mobilefacenet",
            student_label="MobileFaceNet",
            teacher=None if method == "none" else "iresnet50",
            seed=seed,
            metrics={"lfw": {"accuracy": lfw}, "agedb_30": {"accuracy": agedb}},
        ),
    )


def test_table_from_two_sweep_dirs(tmp_path, capsys):
    # two sweeps (seeds 0 and 1) of the same two methods
    _write(tmp_path / "a" / "0", "none", 0, 0.9940, 0.9500)
    _write(tmp_path / "a" / "1", "rkd", 0, 0.9950, 0.9560)
    _write(tmp_path / "b" / "0", "none", 1, 0.9960, 0.9520)
    _write(tmp_path / "b" / "1", "rkd", 1, 0.9970, 0.9600)
    out = tmp_path / "table"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # no KD: LFW 99.40, 99.60 -> 99.50 +- sqrt(2 * 0.1^2) = 0.14; AgeDB 95.00, 95.20 -> 95.10 +- 0.14
    # RKD: LFW 99.50, 99.70 -> 99.60 (+0.10); AgeDB 95.60, 96.00 -> 95.80 +- 0.28 (+0.70)
    assert "| MobileFaceNet (no KD) | 2 | 99.50 ± 0.14 [99.52] | 95.10 ± 0.14 [95.82] |" in printed
    assert "| RKD | 2 | 99.60 ± 0.14 (+0.10) [99.58] | 95.80 ± 0.28 (+0.70) [96.18] |" in printed
    for suffix in ("md", "csv", "tex", "png"):
        assert (out / f"comparison.{suffix}").stat().st_size > 0
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    avg = next(r for r in rows if r["method"] == "rkd" and r["column"] == "Avg")
    # run averages (99.50 + 95.60) / 2 = 97.55 and (99.70 + 96.00) / 2 = 97.85; no KD 97.20 and 97.40
    assert float(avg["mean"]) == pytest.approx(97.70, abs=1e-9)
    assert float(avg["delta"]) == pytest.approx(97.70 - 97.30, abs=1e-9)
    # statistics: RKD vs no KD on LFW, 2 runs each with equal spread -> Welch df = 2, where the t CDF has
    # the closed form 1/2 + t / (2 sqrt(2 + t^2)): t = 0.1 / sqrt(0.02 / 2 + 0.02 / 2), p = 0.553
    assert list(rows[0]) == list(CSV_FIELDS)
    lfw = next(r for r in rows if r["method"] == "rkd" and r["column"] == "LFW")
    t = 0.1 / math.sqrt(0.02)
    assert float(lfw["p_value"]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert float(lfw["p_value"]) <= float(lfw["p_holm"]) <= 1.0  # Holm over the table's 3 tests
    # 95 % interval of the no-KD LFW mean: t_{0.975, 1} = tan(0.475 pi), s / sqrt(2) = 0.1
    none_lfw = next(r for r in rows if r["method"] == "none" and r["column"] == "LFW")
    assert float(none_lfw["ci95"]) == pytest.approx(math.tan(0.475 * math.pi) * 0.1, rel=1e-6)
    assert none_lfw["p_value"] == ""  # the baseline is not tested against itself
    assert "p Holm-adjusted over this table's 3 tests" in printed


def test_failed_runs_are_counted_and_listed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _write(sweep / "0", "none", 0, 0.9940, 0.9500)
    _write(sweep / "1", "none", 1, 0.9960, 0.9520)
    for folder, method, seed, step in (("2", "none", 2, 40), ("3", "rkd", 0, 7)):
        label, order, paper_row = ROWS[method]
        error = RuntimeError(f"non-finite loss at global step {step}")
        record = RunResults(
            method=method, label=label, order=order, paper_row=paper_row, dataset="ms1mv2",
            student="mobilefacenet", student_label="MobileFaceNet", seed=seed, metrics={},
        ).as_failed(error, step=step)  # fmt: skip
        write_results(sweep / folder, record)
    out = tmp_path / "table"
    assert main([str(sweep), "--out", str(out), "--formats", "md,csv"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # no KD from seeds 0 and 1 only: run averages 97.20 and 97.40 -> 97.30 +- sqrt(2 * 0.1^2) = 0.14
    assert (
        "| MobileFaceNet (no KD) | 2 (+1 failed) | 99.50 ± 0.14 [99.52] | 95.10 ± 0.14 [95.82] | "
        "97.30 ± 0.14 | +0.00 |"
    ) in printed
    rkd = next(line for line in printed if line.startswith("| RKD |"))
    assert rkd.startswith("| RKD | 0 (+1 failed) | — [99.58] | — [96.18] | — |")  # the row, without values
    folder = sweep.resolve()
    assert printed[printed.index("Failed runs (2, no values in the table):") + 1 :][:2] == [
        f"- MobileFaceNet (no KD), seed 2: {folder}/2 -- RuntimeError at step 40: "
        "non-finite loss at global step 40",
        f"- RKD, seed 0: {folder}/3 -- RuntimeError at step 7: non-finite loss at global step 7",
    ]
    assert "Failed runs (2" in (out / "comparison.md").read_text()
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["method"], r["column"], r["n"], r["failed"]) for r in rows] == [
        ("none", "LFW", "2", "1"),
        ("none", "AgeDB", "2", "1"),
        ("none", "Avg", "2", "1"),
        ("rkd", "", "0", "1"),
    ]


def test_table_errors_are_reported(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no results.json found" in capsys.readouterr().err
    _write(tmp_path / "r", "none", 0, 0.99, 0.95)
    assert main([str(tmp_path), "--formats", "md,docx"]) == 2
    assert "unknown table formats ['docx']" in capsys.readouterr().err


def test_table_logged_to_an_offline_wandb_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _write(tmp_path / "sweep" / "0", "none", 0, 0.99, 0.95)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--formats", "md", "--wandb"]) == 0
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert f"wandb sync {runs[0]}" in capsys.readouterr().out


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "ekd-table multirun/sweep-a multirun/sweep-b --out tables/" in out
