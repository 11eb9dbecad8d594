"""ekd-demo --quick: teacher + students through ekd.cli.train.run, then the printed and saved table."""

from __future__ import annotations

import pytest

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
    assert eta_text([60.0, 120.0], 5, jobs=2) == "ETA 4.5 min"  # 3 rounds of 2 side by side


def test_study_runs_the_study_experiments_with_one_teacher(tmp_path, monkeypatch, capsys):
    from ekd.cli.demo import QUICK_OVERRIDES

    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "study"
    # the study's experiment files, shrunk by the quick overrides given as user overrides (they come last)
    assert main(["--study", "--methods", "none,kd", "--seeds", "2", "--out", str(out), *QUICK_OVERRIDES]) == 0
    runs = {(r.method, r.seed): r for r in collect_results([out])}
    assert set(runs) == {("teacher", 0), ("none", 0), ("none", 1), ("kd", 0), ("kd", 1)}
    assert runs[("teacher", 0)].experiment == "synthetic/study_teacher"
    assert {r.experiment for k, r in runs.items() if k[0] != "teacher"} == {"synthetic/study_student"}
    teacher = str(out / "teacher" / "checkpoints" / "last.ckpt")
    assert runs[("kd", 0)].teacher_checkpoint == runs[("kd", 1)].teacher_checkpoint == teacher
    # the study's benchmark arguments reach the generator (what the quick overrides leave alone)
    assert {r.data_record["difficulty"] for r in runs.values()} == {0.6}
    assert {r.data_record["age_difficulty"] for r in runs.values()} == {0.4}


def test_study_and_quick_exclude_each_other():

    with pytest.raises(SystemExit, match="exclude each other"):
        main(["--study", "--quick"])


def test_jobs_train_the_students_side_by_side_with_their_output_in_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "jobs"
    argv = ["--quick", "--methods", "none,kd", "--seeds", "2", "--jobs", "2", "--out", str(out)]
    assert main(argv) == 0
    runs = {(r.method, r.seed): r for r in collect_results([out])}
    assert set(runs) == {("teacher", 0), ("none", 0), ("none", 1), ("kd", 0), ("kd", 1)}
    teacher = str(out / "teacher" / "checkpoints" / "last.ckpt")
    assert runs[("kd", 0)].teacher_checkpoint == runs[("kd", 1)].teacher_checkpoint == teacher
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["kd-seed0.log", "kd-seed1.log", "none-seed0.log", "none-seed1.log"]
    assert "finished" in (out / "logs" / "kd-seed1.log").read_text()  # the run's own progress lines
    printed = capsys.readouterr().out
    assert printed.count("done: synthetic/student") == 4 and "| KD |" in printed
    # whole progress lines in a log (a rich rule would cut them at 80 columns), the ETA included
    assert all("ETA" in line for line in printed.splitlines() if "done: synthetic" in line)
    # a second call with --jobs (finished runs skipped, each worker saying so in the run's log):
    # test_a_failed_run_does_not_stop_the_others_and_the_demo_says_which[2]


def test_a_worker_whose_demo_is_gone_starts_no_queued_run(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    import ekd.cli.demo as demo

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(demo.os, "_exit", fake_exit)
    monkeypatch.setattr(demo, "_worker_parent", os.getppid() + 12345)  # not this process's parent
    job = demo.StudentJob("none", 0, Path(tmp_path / "run"), "synthetic/student", (), "", "x")
    with pytest.raises(Exited):
        demo.train_student(job)
    assert not (tmp_path / "run").exists()  # nothing composed, no folder made


def test_an_idle_orphaned_worker_exits(monkeypatch):
    import os

    import ekd.cli.demo as demo

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(demo.os, "_exit", fake_exit)
    monkeypatch.setattr(demo.time, "sleep", lambda seconds: None)
    with pytest.raises(Exited):  # the parent it was started by is not its parent any more
        demo._exit_when_orphaned(os.getppid() + 12345)


def test_teacher_cache_is_built_once_and_read_by_the_rows_that_can(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    command = ["--quick", "--methods", "none,kd,fitnet", "--teacher-cache", "--out", str(out)]
    assert main(command) == 0
    cache = out / "teacher_cache"
    index = json.loads((cache / "index.json").read_text())
    runs = {r.method: r for r in collect_results([out])}
    assert index["teacher_sha256"] == runs["kd"].teacher_sha256  # built from the demo's own teacher
    assert runs["kd"].teacher_cache == {"path": str(cache), "used": True}
    assert runs["fitnet"].teacher_cache == {"path": str(cache), "used": False}  # reads stage feature maps
    assert runs["none"].teacher_cache is None  # no teacher at all
    built = (cache / "index.json").stat().st_mtime_ns
    capsys.readouterr()

    # a second call keeps the matching cache ...
    assert main(command) == 0
    assert "matches the teacher and the data; reused" in capsys.readouterr().out
    assert (cache / "index.json").stat().st_mtime_ns == built
    # ... and rebuilds one made for other data (here: a fingerprint edited into its index)
    index["dataset_fingerprint"] = "0" * 64
    (cache / "index.json").write_text(json.dumps(index))
    assert main(command) == 0
    assert "was built for another teacher or data; rebuilding it" in capsys.readouterr().out
    assert json.loads((cache / "index.json").read_text())["dataset_fingerprint"] != "0" * 64


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_does_not_stop_the_others_and_the_demo_says_which(tmp_path, monkeypatch, capsys, jobs):
    """none seed 1's folder is held by a live job (this process): that run fails, the other runs still
    train, the demo exits 1 naming it; once the folder is free the same command trains only it."""
    import json
    import os
    import socket
    import time

    from ekd.runs import LOCK_FILE

    monkeypatch.setenv("EKD_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    busy = out / "none" / "seed1"
    busy.mkdir(parents=True)
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
    (busy / LOCK_FILE).write_text(json.dumps(record))
    argv = ["--quick", "--methods", "none", "--seeds", "3", "--jobs", str(jobs), "--out", str(out)]
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert "ekd-demo: none seed 1 failed (RunFolderError:" in printed.err and "is in use" in printed.err
    assert "1 of 3 student runs failed (none seed 1)" in printed.err
    done = {(r.method, r.seed) for r in collect_results([out])}
    assert done == {("teacher", 0), ("none", 0), ("none", 2)}  # the run after the failed one trained too

    (busy / LOCK_FILE).unlink()
    assert main(argv) == 0
    assert {(r.method, r.seed) for r in collect_results([out])} == done | {("none", 1)}
    again = capsys.readouterr().out
    if jobs == 1:  # (with --jobs 2 the runs' own lines are in their logs)
        assert again.count("holds a finished run") == 3  # teacher, seeds 0 and 2
    else:
        assert "none-seed1.log" in printed.err
        assert "RunFolderError" in (out / "logs" / "none-seed1.log").read_text()  # the traceback
        # nothing is trained twice: the finished runs are reported so, and their workers say why
        assert again.count("(finished earlier)") == 2  # seeds 0 and 2
        for seed in (0, 2):
            assert "holds a finished run" in (out / "logs" / f"none-seed{seed}.log").read_text()
