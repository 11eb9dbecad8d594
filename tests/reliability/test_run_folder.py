"""The run folder through the real ``ekd-train`` command: a durable last.ckpt, a clean stop on SIGTERM
and SIGINT, exact resume (every metric equal to an uninterrupted run), refusal of a folder in use or
of a resume with another config, inputs checked before the first step, user errors as exit code 2.

The runs that are signalled, and the reference they must equal, are separate processes; the other
invocations call the same entry point (``ekd.cli.train.main``) in the test's process, which saves an
interpreter start and about 8 s of imports each."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ekd.runs import LOCK_FILE, RunFolderError, RunLock, changed_keys, check_resume_compatible, folder_state
from tests.entry_points import call_like_a_process

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "experiment=synthetic/student",
    "data.synthetic.identities=8",
    "data.synthetic.images_per_identity=4",
    "data.synthetic.pairs=20",
    "data.synthetic.heldout_identities=4",
    "data.synthetic.template_identities=0",
    "data.general=4",
    "data.identities=2",
    "data.images_per_identity=2",
    "student.embedding_size=32",
    "optim.lr=0.01",
    "schedule.warmup_epochs=0",
    "trainer.max_steps=8",
    "trainer.max_epochs=-1",
    "logger=none",
    "callbacks.verification=null",
    "callbacks.progress_bar=null",
    "callbacks.checkpoint.every_n_train_steps=2",
    "benchmark.enabled=false",
    "eval.batch_size=40",
]
SLOW = ["+callbacks.slow._target_=tests.reliability.slow.SlowSteps", "+callbacks.slow.seconds=0.4"]


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", EKD_DATA_DIR=str(root / "cache"))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _args(run_dir: Path, data: Path, *extra: str) -> list[str]:
    """ekd-train's arguments for a tiny run in ``run_dir``."""
    return [*TINY, f"data.root={data}", f"hydra.run.dir={run_dir}", *extra]


def _command(run_dir: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ekd.cli.train", *_args(run_dir, data, *extra)]


def _train(run_dir: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(run_dir, data, *extra),
        cwd=REPO,
        env=_env(run_dir.parent),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def ekd_train(capfd, monkeypatch):
    """``ekd-train ARGS`` in this process: returns (exit code, stdout, stderr), as a subprocess would."""
    from ekd.cli.train import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # as _env: user errors become one message

    def call(*args: str) -> tuple[int, str, str]:
        return call_like_a_process(lambda: main(list(args)), capfd)

    return call


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run: the reference every resumed run must equal."""
    root = tmp_path_factory.mktemp("runs")
    done = _train(root / "straight", root / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads((root / "straight" / "results.json").read_text())


def _stop_with(signum: int, root: Path, name: str) -> Path:
    """Start a slowed run, send ``signum`` once its step-2 checkpoint exists, return its folder."""
    run_dir = root / name
    process = subprocess.Popen(
        _command(run_dir, root / "data", *SLOW), cwd=REPO, env=_env(root), stderr=subprocess.PIPE, text=True
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert last.is_file(), process.communicate()[1][-3000:]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "continue it with resume=auto" in stderr
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / LOCK_FILE).exists()  # released on the way out
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= step < 8  # stopped at a step boundary, before the end
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_with_a_checkpoint_and_resume_auto_ends_like_an_uninterrupted_run(
    straight, signum, ekd_train
):
    root, reference = straight
    run_dir = _stop_with(signum, root, f"stopped-{signum.name}")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no temp file left
    code, _, err = ekd_train(*_args(run_dir, root / "data", "resume=auto"))
    assert code == 0, err[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["global_step"] == reference["global_step"] == 8
    assert resumed["metrics"] == reference["metrics"]  # every fold accuracy, TPR, AUC: to the bit
    # the cost of this invocation's steps (the step resumed from is read before the fit overwrites it)
    assert resumed["train_images_per_s"] > 0 and resumed["fit_time_s"] > 0
    assert resumed["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    # a finished run is left alone by resume=auto (a requeued sweep skips its finished jobs)
    code, out, _ = ekd_train(*_args(run_dir, root / "data", "resume=auto"))
    assert code == 0 and "holds a finished run (resume=auto): nothing to do" in out


def test_a_checkpoint_with_pickled_hydra_config_resumes_only_with_trust_pickle(straight, ekd_train):
    """Distillation checkpoints written before the hparams fix pickled the Hydra config (structured
    OmegaConf nodes that torch's weights_only loader cannot read): refused with the remedy named, and
    ``trust_pickle=true`` resumes them exactly."""
    from omegaconf import OmegaConf

    from ekd.config.schema import TrainConfig

    root, reference = straight
    run_dir = _stop_with(signal.SIGTERM, root, "old-checkpoint")
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["optim"] = OmegaConf.structured(TrainConfig).optim  # as the old code did
    torch.save(checkpoint, last)

    code, _, err = ekd_train(*_args(run_dir, root / "data", "resume=auto"))
    assert code == 2, err[-3000:]
    assert "last.ckpt pickles Python objects" in err and "trust_pickle=true" in err
    assert not (run_dir / "results.json").exists()  # a user error leaves no failure record

    code, _, err = ekd_train(*_args(run_dir, root / "data", "resume=auto", "trust_pickle=true"))
    assert code == 0, err[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == reference["metrics"]


def test_folder_refusals_are_one_message_and_exit_code_2(straight, tmp_path, ekd_train, monkeypatch):
    root, _ = straight
    finished = root / "straight"
    code, _, err = ekd_train(*_args(finished, root / "data"))
    assert code == 2 and "holds a finished run" in err and "Traceback" not in err
    code, _, _ = ekd_train(*_args(finished, root / "data", "resume=auto", "seed=5"))
    assert code == 0  # finished: nothing to do, whatever the config
    # an interrupted run resumed with another seed: refused, the changed key named
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(
        (finished / "checkpoints" / "last.ckpt").read_bytes()
    )
    (interrupted / "config.yaml").write_text((finished / "config.yaml").read_text())
    code, _, err = ekd_train(*_args(interrupted, root / "data", "resume=auto", "seed=5"))
    assert code == 2 and "seed: 0 -> 5" in err, err[-2000:]
    # resume=auto needs a folder the user named
    monkeypatch.chdir(tmp_path)  # where Hydra's default folder would go
    args = [a for a in _args(interrupted, root / "data", "resume=auto") if not a.startswith("hydra.run.dir")]
    code, _, err = ekd_train(*args)
    assert code == 2 and "resume=auto continues the run in a folder you name" in err
    # a folder in use by a live job (its lock: this test process on this host)
    (interrupted / LOCK_FILE).write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.time(),
                "heartbeat": time.time(),
            }
        )
    )
    code, _, err = ekd_train(*_args(interrupted, root / "data", "resume=auto"))
    assert code == 2 and "is in use by a running job" in err


def test_inputs_are_checked_before_the_first_step(straight, tmp_path, ekd_train):
    root, _ = straight
    data = tmp_path / "data"
    data.mkdir()
    for path in (root / "data").iterdir():
        (data / path.name).symlink_to(path)
    (data / "synth_pose.bin").unlink()
    (data / "synth_pose.bin").write_bytes(b"garbage that is not a pickled .bin set")
    code, _, err = ekd_train(*_args(tmp_path / "run", data))
    assert code == 2, err[-2000:]
    assert "synth_pose.bin" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    # a configuration typo: Hydra's one message, exit code 2
    code, _, err = ekd_train(*_args(tmp_path / "typo", data, "trainer.max_epoch=3"))
    assert code == 2 and "trainer.max_epoch" in err
    # a folder that cannot be written
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): no read-only folder to test")
        code, _, err = ekd_train(*_args(locked / "run", data))
        assert code == 2 and "readonly" in err and "Traceback" not in err
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------------------- unit tests
def test_folder_states(tmp_path):
    assert folder_state(tmp_path / "missing") == "empty"
    (tmp_path / "a").mkdir()
    assert folder_state(tmp_path / "a") == "empty"
    (tmp_path / "a" / "config.yaml").write_text("seed: 0\n")
    assert folder_state(tmp_path / "a") == "interrupted"
    (tmp_path / "a" / "results.json").write_text("{}")
    assert folder_state(tmp_path / "a") == "finished"
    with RunLock(tmp_path / "a"):
        assert folder_state(tmp_path / "a") == "running"
    assert folder_state(tmp_path / "a") == "finished" and not (tmp_path / "a" / LOCK_FILE).exists()


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    first = RunLock(tmp_path, heartbeat_s=0.05)
    first.acquire()
    try:
        with pytest.raises(RunFolderError, match="in use by a running job"):
            RunLock(tmp_path).acquire()
        time.sleep(0.2)
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["heartbeat"] > record["started"]  # the heartbeat beats
    finally:
        first.release()
    # a dead process on this host: stale at once
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = {
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "started": time.time(),
        "heartbeat": time.time(),
    }
    (tmp_path / LOCK_FILE).write_text(json.dumps(stale))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    # another host whose heartbeat stopped 20 minutes ago: stale; 1 minute ago: live
    for age, taken in ((1200, True), (60, False)):
        other = {"host": "node-elsewhere", "pid": 1, "started": 0.0, "heartbeat": time.time() - age}
        (tmp_path / LOCK_FILE).write_text(json.dumps(other))
        lock = RunLock(tmp_path, stale_after_s=600)
        if taken:
            lock.acquire()
            lock.release()
        else:
            with pytest.raises(RunFolderError, match="host node-elsewhere"):
                lock.acquire()
    (tmp_path / LOCK_FILE).unlink()


def test_resume_compatibility_names_what_changed():
    before = {"seed": 0, "data": {"root": "/a", "general": 32}, "optim": {"lr": 0.1}, "logger": {"csv": {}}}
    moved = {"seed": 0, "data": {"root": "/b", "general": 32}, "optim": {"lr": 0.1}, "logger": {}}
    assert changed_keys(before, moved) == []  # data may move, loggers may change
    other = {"seed": 1, "data": {"root": "/a", "general": 16}, "optim": {"lr": 0.2}, "logger": {"csv": {}}}
    assert changed_keys(before, other) == ["data.general", "optim.lr", "seed"]
    with pytest.raises(RunFolderError, match=r"data.general: 32 -> 16; optim.lr: 0.1 -> 0.2; seed: 0 -> 1"):
        check_resume_compatible(before, other, "run/config.yaml")


def test_a_multirun_goes_on_after_a_failed_job_and_resume_auto_skips_finished_jobs(
    straight, tmp_path, ekd_train
):
    """distill=kd without a teacher is refused for that job only; resume=auto then skips the finished one."""
    root, _ = straight
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.max_steps=2"]
    args += [f"data.root={root / 'data'}", f"hydra.sweep.dir={sweep}", "distill=kd,none", "resume=auto"]
    for attempt in range(2):
        code, out, err = ekd_train(*args)
        assert code == 0, err[-3000:]
        assert "ekd-train: error: teacher.checkpoint is not set" in err or "no teacher" in err
        assert not (sweep / "0" / "results.json").exists()  # the refused job left no record
        assert json.loads((sweep / "1" / "results.json").read_text())["global_step"] == 2
        if attempt == 1:
            assert "holds a finished run (resume=auto): nothing to do" in out


def test_help_starts_with_usage_and_examples_and_hides_shared_recipes(capsys):
    from ekd.cli.train import main

    main(["--help"])
    printed = capsys.readouterr().out
    assert printed.startswith("ekd-train: train a teacher") and printed.index("examples:") < printed.index(
        "config groups"
    )
    experiments = next(line for line in printed.splitlines() if line.strip().startswith("experiment:"))
    assert "ms1mv2/student" in experiments and "_recipe" not in experiments
