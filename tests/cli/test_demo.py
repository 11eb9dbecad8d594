"""ekd-demo --quick: teacher + students through ekd.cli.train.run, then the printed and saved table."""

from __future__ import annotations

from ekd.cli.demo import main
from ekd.report import collect_results


def test_quick_demo_trains_the_rows_and_saves_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))  # a fresh machine: nothing generated yet
    out = tmp_path / "demo"
    assert main(["--quick", "--methods", "none,kd", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "IResNet18/8 (teacher)" in printed and "MobileFaceNet (no KD)" in printed and "| KD |" in printed
    for suffix in ("md", "png", "csv", "tex"):
        assert (out / f"comparison.{suffix}").stat().st_size > 0
    runs = {r.method: r for r in collect_results([out])}
    assert set(runs) == {"teacher", "none", "kd"}
    # the students distilled from the teacher trained in the same demo, through the same run function
    assert runs["kd"].teacher_checkpoint == str(out / "teacher" / "checkpoints" / "last.ckpt")
    assert runs["kd"].experiment == "synthetic/student"
    sets = ("synth_age", "synth_frontal", "synth_ijb", "synth_pose")
    assert {tuple(sorted(r.metrics)) for r in runs.values()} == {sets}


def test_seeds_share_one_teacher_and_a_second_call_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "study"
    assert main(["--quick", "--methods", "none", "--seeds", "2", "--seed", "3", "--out", str(out)]) == 0
    first = {(r.method, r.seed): r for r in collect_results([out])}
    assert set(first) == {("teacher", 3), ("none", 3), ("none", 4)}
    assert (out / "none" / "seed3" / "results.json").is_file() and (out / "none" / "seed4").is_dir()
    capsys.readouterr()
    # the same command again: every run is finished, nothing is trained twice
    assert main(["--quick", "--methods", "none", "--seeds", "2", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("holds a finished run") == 3
    again = {(r.method, r.seed): r for r in collect_results([out])}
    assert {k: r.created for k, r in again.items()} == {k: r.created for k, r in first.items()}


def test_eta_from_the_runs_trained_so_far():
    from ekd.cli.demo import eta_text

    assert eta_text([], 5) == "ETA ?"
    assert eta_text([60.0, 120.0], 4) == "ETA 6.0 min"  # mean 90 s x 4 runs
