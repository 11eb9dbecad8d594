"""The comparison table against numbers worked out by hand from fabricated results files."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from ekd.config import list_methods
from ekd.report import (
    FinishedRunError,
    ResultsError,
    RunResults,
    build_tables,
    collect_results,
    load_paper_table,
    load_results,
    to_csv,
    to_latex,
    to_markdown,
    write_results,
)

TEACHER_ROW = {"label": "teacher", "order": 0.0, "paper_row": "ResNet50 (teacher)"}  # experiments/*/teacher


def _row(method):
    """label / order / paper_row as ekd-train records them: the method file's (conf/distill)."""
    if method == "teacher":
        return TEACHER_ROW
    (info,) = [m for m in list_methods() if m.name == method]
    return {"label": info.label, "order": info.order, "paper_row": info.paper_row}


def _result(method, seed, accuracies, student="mobilefacenet", dataset="ms1mv2", **extra):
    """A results record with verification accuracies given in percent (stored as fractions)."""
    metrics = {name: {"accuracy": acc / 100.0, "accuracy_std": 0.001} for name, acc in accuracies.items()}
    return RunResults(
        method=method,
        **_row(method),
        dataset=dataset,
        student=student,
        student_label={"mobilefacenet": "MobileFaceNet", "iresnet50": "IResNet50"}.get(student, student),
        teacher=None if method in ("none", "teacher") else "iresnet50",
        seed=seed,
        metrics=metrics,
        **extra,
    )


@pytest.fixture
def sweep(tmp_path):
    """Fabricated sweep: no-KD x3 seeds, EKD x2 seeds, the teacher x1, one result per run directory."""
    runs = [
        _result("none", 0, {"lfw": 99.50, "cfp_fp": 91.0}),
        _result("none", 1, {"lfw": 99.54, "cfp_fp": 92.0}),
        _result("none", 2, {"lfw": 99.52, "cfp_fp": 93.0}),
        _result("ekd", 0, {"lfw": 99.60, "cfp_fp": 94.0}),
        _result("ekd", 1, {"lfw": 99.64, "cfp_fp": 95.0}),
        _result("teacher", 0, {"lfw": 99.80, "cfp_fp": 97.0}, student="iresnet50"),
    ]
    for index, run in enumerate(runs):
        write_results(tmp_path / "sweep" / str(index), run)
    return tmp_path / "sweep"


def test_mean_std_and_deltas_by_hand(sweep):
    (table,) = build_tables(collect_results([sweep]))
    assert table.dataset == "ms1mv2"
    assert [c.label for c in table.columns] == ["LFW", "CFP-FP"]
    assert table.labels == ["LFW", "CFP-FP", "Avg"]
    assert [r.method for r in table.rows] == ["teacher", "none", "ekd"]

    none = table.row("none")
    assert none.n == 3 and sorted(none.seeds) == [0, 1, 2]
    # LFW 99.50, 99.54, 99.52: mean 99.52, deviations -0.02, +0.02, 0 -> std sqrt(0.0008 / 2) = 0.02
    assert none.cells["LFW"].mean == pytest.approx(99.52, abs=1e-9)
    assert none.cells["LFW"].std == pytest.approx(0.02, abs=1e-9)
    # CFP-FP 91, 92, 93: mean 92, std 1
    assert none.cells["CFP-FP"].mean == pytest.approx(92.0, abs=1e-9)
    assert none.cells["CFP-FP"].std == pytest.approx(1.0, abs=1e-9)
    # per-run averages 95.25, 95.77, 96.26 -> mean 95.76, deviations -0.51, 0.01, 0.50
    assert none.cells["Avg"].mean == pytest.approx(95.76, abs=1e-9)
    assert none.cells["Avg"].std == pytest.approx(math.sqrt((0.51**2 + 0.01**2 + 0.50**2) / 2), abs=1e-9)
    assert none.delta == {}

    ekd = table.row("ekd")
    # LFW 99.60, 99.64: mean 99.62, std sqrt(2 * 0.02^2 / 1); CFP-FP 94, 95: mean 94.5, std sqrt(0.5)
    assert ekd.cells["LFW"].mean == pytest.approx(99.62, abs=1e-9)
    assert ekd.cells["LFW"].std == pytest.approx(math.sqrt(0.0008), abs=1e-9)
    assert ekd.cells["CFP-FP"].std == pytest.approx(math.sqrt(0.5), abs=1e-9)
    assert ekd.delta["LFW"] == pytest.approx(0.10, abs=1e-9)
    assert ekd.delta["CFP-FP"] == pytest.approx(2.5, abs=1e-9)
    # averages 96.80, 97.32 -> 97.06; minus 95.76
    assert ekd.cells["Avg"].mean == pytest.approx(97.06, abs=1e-9)
    assert ekd.delta["Avg"] == pytest.approx(1.30, abs=1e-9)
    # the paper's EKD row (Table 2) stands alongside the MobileFaceNet rows
    assert ekd.paper == {"LFW": 99.60, "CFP-FP": 94.33}
    # paper 5-set averages: EKD 475.13 / 5, no KD 470.05 / 5
    assert ekd.paper_delta_avg == pytest.approx((475.13 - 470.05) / 5, abs=1e-9)
    assert "Avg" not in ekd.paper  # the paper averages five sets, this table two

    teacher = table.row("teacher")
    assert teacher.cells["LFW"].std is None  # one run: no spread
    assert teacher.delta["LFW"] == pytest.approx(99.80 - 99.52, abs=1e-9)
    assert teacher.paper["LFW"] == 99.80  # ResNet50 teacher of the paper, for the iresnet50 teacher


def test_markdown_csv_latex_carry_the_numbers(sweep):
    tables = build_tables(collect_results([sweep]))
    markdown = to_markdown(tables)
    ekd_line = next(line for line in markdown.splitlines() if line.startswith("| EKD |"))
    cells = [c.strip() for c in ekd_line.strip("|").split("|")]
    assert cells[:4] == ["EKD", "2", "99.62 ± 0.03 (+0.10) [99.60]", "94.50 ± 0.71 (+2.50) [94.33]"]
    assert cells[5] == "+1.02"  # paper ΔAvg, 5.08 / 5 rounded
    assert "| MobileFaceNet (no KD) | 3 | 99.52 ± 0.02 [99.52]" in markdown

    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    ekd_lfw = next(r for r in rows if r["method"] == "ekd" and r["column"] == "LFW")
    assert float(ekd_lfw["mean"]) == pytest.approx(99.62, abs=1e-9)
    assert float(ekd_lfw["std"]) == pytest.approx(math.sqrt(0.0008), abs=1e-9)
    assert float(ekd_lfw["delta"]) == pytest.approx(0.10, abs=1e-9)
    assert float(ekd_lfw["paper"]) == 99.60
    assert ekd_lfw["n"] == "2" and sorted(ekd_lfw["seeds"].split()) == ["0", "1"]

    latex = to_latex(tables)
    assert "\\begin{tabular}" in latex and "\\bottomrule" in latex
    assert "99.62$\\pm$0.03 {\\scriptsize (+0.10) [99.60]}" in latex
    assert "MobileFaceNet (no KD)" in latex


def test_synthetic_sets_become_columns_without_paper_cells(tmp_path):
    runs = [
        _result("none", 0, {"syn_hard": 80.0, "syn_easy": 90.0}, dataset="synthetic"),
        _result("kd_rkd", 0, {"syn_hard": 83.0, "syn_easy": 91.0}, dataset="synthetic"),
        _result("ekd", 0, {"syn_hard": 85.0, "syn_easy": 92.0}, dataset="synthetic", student="resnet18"),
    ]
    (table,) = build_tables(runs)
    assert [c.label for c in table.columns] == ["syn_hard", "syn_easy"]  # in the order the runs give them
    combo = table.row("kd_rkd")
    assert combo.label == "KD+RKD (MobileFaceNet)"  # two students in the table: the student is named
    assert combo.delta == pytest.approx({"syn_easy": 1.0, "syn_hard": 3.0, "Avg": 2.0})
    assert combo.paper == {} and combo.paper_delta_avg is None  # no paper row for a combination
    ekd = table.row("ekd")
    assert ekd.delta == {}  # no no-KD resnet18 run to compare with
    assert ekd.paper == {}  # the paper's numbers are for the MobileFaceNet student
    assert ekd.paper_delta_avg == pytest.approx((475.13 - 470.05) / 5, abs=1e-9)
    assert any("no no-KD run of resnet18" in note for note in table.notes)


def test_ijb_columns_and_other_metrics():
    run = _result("none", 0, {"lfw": 99.0})
    run.metrics["lfw"]["tpr_at_fpr"] = {"1e-4": 0.5}
    run.metrics["IJB-C"] = {"tpr_at_fpr": {"1e-4": 0.8913, "1e-5": 0.8165}}
    (table,) = build_tables([run])
    assert [c.label for c in table.columns] == ["LFW", "IJB-C@1e-4", "IJB-C@1e-5"]
    row = table.row("none")
    assert row.cells["IJB-C@1e-4"].mean == pytest.approx(89.13)
    assert row.cells["Avg"].mean == pytest.approx(99.0)  # IJB columns are not averaged
    assert row.paper["IJB-C@1e-5"] == 81.65
    (tpr,) = build_tables([run], metric="tpr@1e-4")
    assert tpr.row("none").cells["LFW"].mean == pytest.approx(50.0)
    assert tpr.row("none").paper == {}  # the paper's cells are accuracies


TFACE_RECORD = {
    "precision": "32-true",
    "pair_sets": {"flip": "sum", "n_folds": 10},
    "ijb": {
        "preset": "tface",
        "flip_mode": "plain",
        "norm_score": False,
        "detector_score": False,
        "label": "tface",
        "tpr_rule": "nearest",
    },
}


def test_the_caption_names_the_ijb_protocol(tmp_path):
    runs = []
    for seed in (0, 1):
        run = _result("none", seed, {"lfw": 99.0}, eval_protocol=TFACE_RECORD)
        run.metrics["ijbc"] = {"tpr_at_fpr": {"1e-4": 0.89, "1e-5": 0.81}}
        runs.append(run)
    (table,) = build_tables(runs)
    assert table.ijb_protocols == ["tface, 32-true"] and not table.notes
    caption = "IJB columns: TPR (%) at the FPR named, IJB-B/C 1:1 protocol tface, 32-true (docs/methods.md)."
    assert caption in to_markdown(table) and f"% {caption}" in to_latex(table)
    # a run recorded before ekd recorded protocols, and one with insightface: never averaged with the
    # others -- one table per protocol, each titled by what sets it apart
    old = _result("ekd", 0, {"lfw": 99.5})
    old.metrics["ijbc"] = {"tpr_at_fpr": {"1e-4": 0.9}}
    insightface = {
        **TFACE_RECORD,
        "ijb": {**TFACE_RECORD["ijb"], "preset": "insightface", "label": "insightface"},
    }
    other = _result("kd", 0, {"lfw": 99.5}, eval_protocol=insightface)
    other.metrics["ijbc"] = {"tpr_at_fpr": {"1e-4": 0.9}}
    tables = build_tables([*runs, old, other])
    assert [(t.group, [r.method for r in t.rows]) for t in tables] == [
        ("IJB tface", ["none"]),
        ("eval protocol not recorded", ["ekd"]),
        ("IJB insightface", ["kd"]),
    ]
    assert [t.ijb_protocols for t in tables] == [
        ["tface, 32-true"],
        ["not recorded"],
        ["insightface, 32-true"],
    ]
    markdown = to_markdown(tables)
    assert "### verification accuracy (%) on ms1mv2 — IJB insightface" in markdown
    assert "protocol insightface, 32-true (docs/methods.md)" in markdown
    # without IJB columns there is no IJB caption, whatever was recorded
    (plain,) = build_tables([_result("none", 0, {"lfw": 99.0}, eval_protocol=TFACE_RECORD)])
    assert "IJB columns" not in to_markdown(plain) and plain.ijb_protocols == []
    # eval_protocol round-trips; a file without it (written before) reads as None
    path = write_results(tmp_path / "run", runs[0])
    assert load_results(path).eval_protocol == TFACE_RECORD
    data = json.loads(path.read_text())
    del data["eval_protocol"]
    path.write_text(json.dumps(data))
    assert load_results(path).eval_protocol is None
    assert load_results(path).as_failed(RuntimeError("x")).eval_protocol is None


def test_paper_table_is_shipped_with_the_package():
    table2 = load_paper_table("table2")
    assert len(table2) == 12
    assert table2["EKD"]["CFP-FP"] == 94.33
    assert table2["RKD"]["AgeDB"] == 96.18  # the seed's value (see the CSV's header)
    assert load_paper_table("table5")["SphereFace"] == {"LFW": 99.27, "CPLFW": 81.40, "CALFW": 90.30}


def test_results_files_round_trip_and_bad_files(tmp_path):
    written = _result("kd", 3, {"lfw": 99.0}, mean_accuracy=float("nan"))
    path = write_results(tmp_path / "run", written)
    data = json.loads(path.read_text())
    assert data["format"] == "ekd-results/2" and data["mean_accuracy"] is None  # NaN is not JSON
    assert (data["label"], data["order"], data["paper_row"]) == ("KD", 30.0, "KD")
    assert path.stat().st_mode & 0o777 == 0o644
    read = load_results(path)
    assert read.path == str(path) and read.metrics == written.metrics and read.label == "KD"
    with pytest.raises(ResultsError, match=r"missing keys \['dataset', 'student', 'seed', 'metrics'\]"):
        RunResults.from_dict({"method": "kd"})
    with pytest.raises(ResultsError, match="unknown keys \\['lr'\\]"):
        RunResults.from_dict({**data, "lr": 0.1})
    with pytest.raises(ResultsError, match="'seed' must be an integer"):
        RunResults.from_dict({**data, "seed": "3"})
    with pytest.raises(TypeError, match="takes a RunResults record"):
        write_results(tmp_path / "bad", data)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match="broken/results.json is not valid JSON"):
        collect_results([tmp_path / "broken"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ResultsError, match="format is 'other'"):
        collect_results([tmp_path / "old"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ResultsError, match="no results.json found under"):
        collect_results([tmp_path / "nothing"])
    with pytest.raises(ResultsError, match="neither a results file nor a directory"):
        collect_results([tmp_path / "missing"])


def test_finished_run_is_refused(tmp_path):
    from ekd.runs import folder_state, prepare_run_folder

    assert folder_state(tmp_path) == "empty"
    write_results(tmp_path, _result("kd", 0, {"lfw": 99.0}))
    with pytest.raises(FinishedRunError, match="holds a finished run"):
        prepare_run_folder(tmp_path, {}, resume=None, overwrite=False, fixed_folder=True)
    start = prepare_run_folder(tmp_path, {}, resume=None, overwrite=True, fixed_folder=True)
    start.lock.release()
    assert not (tmp_path / "results.json").exists()  # replaced: the old run's files are gone


def test_format_1_files_are_read_with_the_method_files_rows(tmp_path):
    """results.json of format 1 did not record label / order / paper row: they come from the method file."""
    (tmp_path / "v1").mkdir()
    v1 = {"format": "ekd-results/1", "method": "darkrank", "dataset": "ms1mv2", "student": "mobilefacenet"}
    (tmp_path / "v1" / "results.json").write_text(json.dumps({**v1, "seed": 0, "metrics": {}}))
    read = load_results(tmp_path / "v1")
    assert (read.format, read.label, read.order, read.paper_row) == (
        "ekd-results/2",
        "DarkRank",
        40.0,
        "DarkRank",
    )


def test_rows_follow_the_recorded_order_and_label_without_the_method_file():
    """A user's method (no file in ekd) is placed and named by what its results recorded."""
    runs = [
        _result("none", 0, {"lfw": 99.0}),
        _result("ekd", 0, {"lfw": 99.5}),
        RunResults(
            method="mine",
            label="My KD",
            order=15.0,
            dataset="ms1mv2",
            student="mobilefacenet",
            student_label="MobileFaceNet",
            seed=0,
            metrics={"lfw": {"accuracy": 0.992}},
        ),
    ]
    (table,) = build_tables(runs)
    assert [r.label for r in table.rows] == ["MobileFaceNet (no KD)", "My KD", "EKD"]
    assert table.row("mine").delta["LFW"] == pytest.approx(0.2)


def test_runs_from_several_machines_are_named_in_the_notes():
    avx2 = {"cpu": "AMD EPYC (family 25, model 1)", "cpu_capability": "AVX2", "cpus": 2, "accelerator": None}
    h200 = {**avx2, "cpu_capability": "AVX512", "accelerator": "NVIDIA H200"}
    same = [_result("none", s, {"lfw": 99.5 + s / 10}, machine=avx2) for s in range(2)]
    (table,) = build_tables(same)
    assert not any("machines" in note for note in table.notes)
    mixed = [*same, _result("ekd", 0, {"lfw": 99.7}, machine=h200), _result("ekd", 1, {"lfw": 99.6})]
    (table,) = build_tables(mixed)
    (note,) = [note for note in table.notes if "machines" in note]
    assert note.startswith("the runs come from 3 machines (AMD EPYC (family 25, model 1) [AVX2]: 2 runs; ")
    assert "[AVX512] + NVIDIA H200: 1 run;" in note and "machine not recorded: 1 run)" in note
    # the record survives the file: written and read back
    assert RunResults.from_dict(mixed[2].to_dict()).machine == h200


def test_cpu_name_reads_the_first_processor_block(tmp_path):
    from ekd.report.results import cpu_name

    info = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
    block += "model name\t: AMD EPYC\n"
    info.write_text(block.format(0) + "\n" + block.format(1).replace("AMD EPYC", "other"))
    assert cpu_name(info) == "AMD EPYC (family 25, model 1)"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")  # no family / model: the name alone
    assert cpu_name(info) == "Some CPU"
    assert cpu_name(tmp_path / "missing")  # no file: the platform's own description, never empty
