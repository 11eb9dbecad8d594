"""Failed runs: their results records (status / error), and how the comparison table reports them.

Fabricated sweeps; every expected number and string below is worked out by hand.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from ekd.report import (
    ResultsError,
    RunResults,
    build_tables,
    collect_results,
    load_results,
    to_csv,
    to_latex,
    to_markdown,
    write_results,
)
from ekd.report.wandb_runs import log_run_summary
from ekd.runs import folder_state
from tests.report.test_table import _result, _row

NONFINITE_MESSAGE = "non-finite loss at global step 123 (epoch 2): recognition=nan."


def _failed(method, seed, exc, step, student="mobilefacenet", dataset="ms1mv2"):
    """What ekd-train records when the fit raises ``exc`` at ``step``."""
    return RunResults(
        method=method,
        **_row(method),
        dataset=dataset,
        student=student,
        student_label="MobileFaceNet",
        teacher=None if method == "none" else "iresnet50",
        seed=seed,
        metrics={},
        created="2026-11-30T12:00:00+00:00",
    ).as_failed(exc, step=step)


def test_failure_record_fields_and_round_trip(tmp_path):
    record = _failed("ekd", 3, RuntimeError("non-finite loss at step 7"), step=7)
    assert record.status == "failed" and record.failed
    assert record.error == {"type": "RuntimeError", "message": "non-finite loss at step 7", "step": 7}
    assert record.metrics == {} and record.mean_accuracy is None
    path = write_results(tmp_path / "run", record)
    data = json.loads(path.read_text())
    assert data["status"] == "failed"
    assert data["error"] == {"type": "RuntimeError", "message": "non-finite loss at step 7", "step": 7}
    assert data["metrics"] == {}
    read = load_results(path)
    assert (read.status, read.error, read.label, read.seed) == ("failed", data["error"], "EKD", 3)
    # a finished record says so explicitly
    finished = json.loads(write_results(tmp_path / "ok", _result("kd", 0, {"lfw": 99.0})).read_text())
    assert (finished["status"], finished["error"]) == ("finished", None)


def test_failure_record_without_step_and_refusals():
    no_step = _failed("kd", 0, KeyError("x"), step=None)
    assert no_step.error == {"type": "KeyError", "message": "'x'", "step": None}
    # a record is either finished without an error or failed with one and without metrics
    with pytest.raises(ResultsError, match="a failed run needs its 'error'"):
        RunResults(method="kd", dataset="d", student="s", seed=0, metrics={}, status="failed")
    with pytest.raises(ResultsError, match=r"a failed run has no metrics, got sets \['lfw'\]"):
        RunResults(
            method="kd", dataset="d", student="s", seed=0, metrics={"lfw": {"accuracy": 0.9}},
            status="failed", error={"type": "E"},
        )  # fmt: skip
    with pytest.raises(ResultsError, match="a finished run has no 'error'"):
        RunResults(method="kd", dataset="d", student="s", seed=0, metrics={}, error={"type": "E"})


def test_a_record_turned_into_a_failure(tmp_path):
    """What ekd-train does when the fit raises: the record it had so far, as failed."""
    base = _result("kd", 4, {"lfw": 99.0}, mean_accuracy=0.99, roc={"lfw": {"fpr": [0.0], "tpr": [1.0]}})
    failed = base.as_failed(MemoryError("out of memory"), step=12)
    assert (failed.status, failed.metrics, failed.roc, failed.mean_accuracy) == ("failed", {}, {}, None)
    assert failed.error == {"type": "MemoryError", "message": "out of memory", "step": 12}
    assert (failed.method, failed.seed, failed.label) == ("kd", 4, "KD")
    assert base.status == "finished" and base.metrics  # a copy
    assert load_results(write_results(tmp_path / "run", failed)).error["step"] == 12
    # a record whose status was set by hand without the rest is not written
    base.status = "failed"
    with pytest.raises(ResultsError, match="not writing .*results.json: a failed run needs its 'error'"):
        write_results(tmp_path / "bad", base)
    assert not (tmp_path / "bad" / "results.json").exists()


def test_unknown_status_is_rejected_naming_the_file(tmp_path):
    data = _result("kd", 0, {"lfw": 99.0}).to_dict()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({**data, "status": "crashed"}))
    expected = r"run/results.json: unknown status 'crashed' \(known: finished, failed\)"
    with pytest.raises(ResultsError, match=expected):
        collect_results([tmp_path])


def test_files_without_status_are_finished(tmp_path):
    """Format-1 files and format-2 files written before the status existed."""
    (tmp_path / "v1").mkdir()
    v1 = {"format": "ekd-results/1", "method": "kd", "dataset": "ms1mv2", "student": "mobilefacenet"}
    (tmp_path / "v1" / "results.json").write_text(json.dumps({**v1, "seed": 0, "metrics": {}}))
    (tmp_path / "v2").mkdir()
    v2 = {k: v for k, v in _result("kd", 1, {"lfw": 99.0}).to_dict().items() if k not in ("status", "error")}
    (tmp_path / "v2" / "results.json").write_text(json.dumps(v2))
    for name in ("v1", "v2"):
        read = load_results(tmp_path / name)
        assert (read.status, read.error, read.failed) == ("finished", None, False)


def test_a_failed_run_directory_can_be_continued(tmp_path):
    """A failed run's folder is an interrupted run (resume=auto continues it), a finished one is not."""
    write_results(tmp_path / "failed", _failed("kd", 0, RuntimeError("boom"), step=5))
    assert folder_state(tmp_path / "failed") == "interrupted"
    write_results(tmp_path / "done", _result("kd", 0, {"lfw": 99.0}))
    assert folder_state(tmp_path / "done") == "finished"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    assert folder_state(tmp_path / "broken") == "finished"  # not known to be a failure: still refused


@pytest.fixture
def sweep_with_failures(tmp_path):
    """no KD: seeds 0 and 1 finished, seed 2 failed; EKD: one finished run; KD: its only run failed."""
    runs = [
        _result("none", 0, {"lfw": 99.50, "cfp_fp": 91.0}),
        _result("none", 1, {"lfw": 99.54, "cfp_fp": 93.0}),
        _failed("none", 2, ArithmeticError(NONFINITE_MESSAGE), step=123),
        _result("ekd", 0, {"lfw": 99.60, "cfp_fp": 94.0}),
        _failed("kd", 0, RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB"), step=None),
    ]
    for index, run in enumerate(runs):
        write_results(tmp_path / "sweep" / str(index), run)
    return (tmp_path / "sweep").resolve()


def test_failed_runs_contribute_no_values(sweep_with_failures):
    (table,) = build_tables(collect_results([sweep_with_failures]))
    assert [c.label for c in table.columns] == ["LFW", "CFP-FP"]
    assert [r.method for r in table.rows] == ["none", "kd", "ekd"]  # KD's row is there without values
    none = table.row("none")
    assert (none.n, none.n_failed, none.seeds) == (2, 1, [0, 1])
    # only seeds 0 and 1: LFW 99.50, 99.54 -> 99.52; CFP-FP 91, 93 -> 92; run averages 95.25, 96.27
    assert none.cells["LFW"].values == pytest.approx([99.50, 99.54])
    assert none.cells["CFP-FP"].mean == pytest.approx(92.0)
    assert none.cells["Avg"].mean == pytest.approx(95.76)
    (failure,) = none.failed
    assert failure.seed == 2 and failure.folder == str(sweep_with_failures / "2")
    assert failure.reason == f"ArithmeticError at step 123: {NONFINITE_MESSAGE}"
    kd = table.row("kd")
    assert (kd.n, kd.n_failed, kd.cells, kd.delta) == (0, 1, {}, {})
    assert kd.failed[0].reason == "RuntimeError: CUDA out of memory."  # first line, no step recorded
    assert table.row("ekd").delta["LFW"] == pytest.approx(99.60 - 99.52)
    # a failed seed is neither a duplicate nor a missing set; EKD's single finished run is not tested
    assert table.notes == ["no Welch test, fewer than 2 runs in the row (empty p, no mark): EKD"]


def test_markdown_counts_and_lists_the_failed_runs(sweep_with_failures):
    markdown = to_markdown(build_tables(collect_results([sweep_with_failures])))
    lines = markdown.splitlines()
    # LFW std sqrt(2 * 0.02^2) = 0.028, CFP-FP std sqrt(2) = 1.414, Avg std sqrt(2 * 0.51^2) = 0.721
    assert (
        "| MobileFaceNet (no KD) | 2 (+1 failed) | 99.52 ± 0.03 [99.52] | 92.00 ± 1.41 [91.66] | "
        "95.76 ± 0.72 | +0.00 |"
    ) in lines
    # KD: no values, the paper's cells and its average gain (470.02 - 470.05) / 5 = -0.006
    assert "| KD | 0 (+1 failed) | — [99.50] | — [91.71] | — | -0.01 |" in lines
    # EKD: one run, 99.60 - 99.52 = +0.08, 94 - 92 = +2.00, (99.60 + 94) / 2 - 95.76 = +1.04
    assert "| EKD | 1 | 99.60 (+0.08) [99.60] | 94.00 (+2.00) [94.33] | 96.80 (+1.04) | +1.02 |" in lines
    tail = lines[lines.index("Failed runs (2, no values in the table):") :]
    assert tail == [
        "Failed runs (2, no values in the table):",
        f"- MobileFaceNet (no KD), seed 2: {sweep_with_failures}/2 -- ArithmeticError at step 123: "
        f"{NONFINITE_MESSAGE}",
        f"- KD, seed 0: {sweep_with_failures}/4 -- RuntimeError: CUDA out of memory.",
    ]


def test_csv_and_latex_carry_the_failed_counts(sweep_with_failures):
    tables = build_tables(collect_results([sweep_with_failures]))
    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    none_lfw = next(r for r in rows if r["method"] == "none" and r["column"] == "LFW")
    assert (none_lfw["n"], none_lfw["failed"], none_lfw["seeds"]) == ("2", "1", "0 1")
    assert float(none_lfw["mean"]) == pytest.approx(99.52)
    (kd,) = [r for r in rows if r["method"] == "kd"]  # one line for the row without values
    assert (kd["column"], kd["n"], kd["failed"], kd["seeds"], kd["mean"]) == ("", "0", "1", "", "")
    assert {r["failed"] for r in rows if r["method"] == "ekd"} == {"0"}

    latex = to_latex(tables).splitlines()
    assert any(line.startswith("MobileFaceNet (no KD) & 2 (+1 failed) & 99.52$\\pm$0.03") for line in latex)
    assert "KD & 0 (+1 failed) & -- & -- & -- \\\\" in latex
    assert latex[-3:] == [
        "% failed runs (2, no values in the table):",
        f"% MobileFaceNet (no KD), seed 2: {sweep_with_failures}/2 -- ArithmeticError at step 123: "
        f"{NONFINITE_MESSAGE}",
        f"% KD, seed 0: {sweep_with_failures}/4 -- RuntimeError: CUDA out of memory.",
    ]
    assert latex[-4] == "\\end{tabular}"  # the list stays out of the typeset table


def test_a_dataset_whose_runs_all_failed_still_has_its_rows():
    runs = [_failed("none", 0, RuntimeError("boom"), step=1, dataset="synthetic")]
    runs[0].path = "/runs/a/results.json"
    (table,) = build_tables(runs)
    assert table.columns == [] and table.labels == []
    (row,) = table.rows
    assert (row.label, row.n, row.n_failed) == ("MobileFaceNet (no KD)", 0, 1)
    markdown = to_markdown(table).splitlines()
    assert "| MobileFaceNet (no KD) | 0 (+1 failed) | +0.00 |" in markdown
    assert "- MobileFaceNet (no KD), seed 0: /runs/a -- RuntimeError at step 1: boom" in markdown


def test_rerun_of_a_failed_seed_is_no_duplicate():
    runs = [_failed("none", 0, RuntimeError("boom"), step=1), _result("none", 0, {"lfw": 99.0})]
    (table,) = build_tables(runs)
    row = table.row("none")
    assert (row.n, row.n_failed, row.seeds) == (1, 1, [0])
    assert row.failed[0].folder == "?"  # neither read from a file nor given an output_dir
    assert table.notes == []


class _FakeRun:
    """Stands in for ``wandb.run``: a summary dict and the logged payloads."""

    def __init__(self) -> None:
        self.summary: dict = {}
        self.logged: list = []

    def log(self, data: dict) -> None:
        self.logged.append(data)


def test_wandb_summary_of_a_failed_run(monkeypatch):
    import wandb

    run = _FakeRun()
    monkeypatch.setattr(wandb, "run", run)
    log_run_summary(_failed("kd", 0, RuntimeError("boom"), step=9))
    assert run.summary["status"] == "failed"
    assert (run.summary["error/type"], run.summary["error/message"], run.summary["error/step"]) == (
        "RuntimeError",
        "boom",
        9,
    )
    assert run.summary["final/mean_acc"] is None
