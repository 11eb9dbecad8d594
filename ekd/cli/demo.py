"""``ekd-demo``: the whole comparison at synthetic scale, on a CPU, with nothing to download.

    ekd-demo                      # ~7 minutes on 2 CPU cores (measured); results in demo_out/<time>/
    ekd-demo --out DIR --methods none,kd,ekd --student resnet18
    ekd-demo --quick              # seconds: tiny data and 2 steps per run (a smoke test)
    ekd-demo --config-dir my_conf --methods none,mine imports=[my_losses]   # a user's method
    ekd-demo --study --seeds 5 --out study_out   # the calibrated study: every row x 5 seeds (resumable)

1. generates the synthetic benchmark (``ekd.data.synthetic``; cached under ``$EKD_DATA_DIR``);
2. trains the teacher (``experiment=synthetic/teacher``);
3. trains the no-KD student and one student per method (``experiment=synthetic/student
   student=<tiny student> distill=<method>`` with ``teacher.checkpoint`` = the teacher's last
   checkpoint), each evaluated on the synthetic verification sets. The methods are the method files
   (``conf/distill/*.yaml`` and ``--config-dir``'s ``distill/``); without ``--methods`` those whose
   file says ``demo: true`` (the rows of the EKD paper's Table 2), in their ``order``;
4. prints the comparison table (``ekd.report``) and saves it as ``comparison.md`` / ``.png`` / ``.csv``
   / ``.tex`` in the output directory.

Every run goes through :func:`ekd.cli.train.run` with a config composed by Hydra from the same files
``ekd-train`` uses; the demo only adds its output directories, the teacher checkpoint and the logger
choice (CSV by default; ``--wandb`` for offline W&B runs).

Two tiers. The demo (default) is the pipeline end to end, one seed per row, on a small benchmark.
``--study`` is the calibrated comparison: ``experiment=synthetic/study_teacher`` and
``synthetic/study_student`` (their benchmark and budget calibrated in BENCHMARKS.md), every row x
``--seeds`` seeds (default 5) with one teacher for the whole study. Run folders are ``<out>/<method>``
for one seed and ``<out>/<method>/seed<k>`` for several. Every run is started with ``resume=auto``: the
same command on the same ``--out`` skips finished runs and continues interrupted ones from their last
checkpoint, so a killed study loses at most the steps since its last checkpoint. A progress line
before (``--jobs 1``) or after (``--jobs N``) each run gives the runs done and an ETA from the mean
time of the runs trained so far. ``--jobs N`` trains N students side by side, each in a spawned
process with CPUs / N threads and its output in ``<out>/logs/<method>-seed<k>.log``; the teacher is
trained first, alone, with every thread.

``--teacher-cache`` builds the teacher's embeddings of every training image (as stored and mirrored;
``ekd.distill.cache``) once, after the teacher, into ``<out>/teacher_cache``, and every student row
reads them instead of running the teacher (rows that read stage feature maps, FitNet, keep the online
teacher; each run's ``results.json`` records which). A later call reuses the cache while it matches the
teacher file and the training data, and rebuilds it otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _datetime
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ekd.config import CONF_DIR, list_methods, register_configs

# --student -> the synthetic-scale student config (conf/student)
STUDENTS: dict[str, str] = {"mobilefacenet": "tiny_mobilefacenet", "resnet18": "tiny_resnet18"}

# --quick: the same pipeline on a few dozen images, two optimiser steps per run
QUICK_OVERRIDES: tuple[str, ...] = (
    "data.synthetic.identities=8",
    "data.synthetic.images_per_identity=4",
    "data.synthetic.pairs=20",
    "data.synthetic.heldout_identities=4",
    "data.synthetic.template_identities=4",  # a template set of 8 images: the synth_ijb path, no TPR
    "data.synthetic.templates_per_identity=2",
    "data.synthetic.images_per_template=1",
    "data.general=4",
    "data.identities=2",
    "data.images_per_identity=2",
    "data.batch_size=8",
    "optim.lr=0.01",  # two steps at 0.1 can wreck a network that has no warm-up
    "schedule.warmup_epochs=0",
    "schedule.milestones=[100]",
    "trainer.max_steps=2",
    "benchmark.batch_size=2",
    "benchmark.iterations=1",
    "benchmark.warmup=0",
    "eval.batch_size=40",
    "eval.roc_points=20",
)


# The experiment files of each tier: (teacher, student). The study's benchmark and budget are calibrated
# (experiments/synthetic/_study.yaml; BENCHMARKS.md, "Calibration of the study").
TIER_EXPERIMENTS: dict[str, tuple[str, str]] = {
    "demo": ("synthetic/teacher", "synthetic/student"),
    "study": ("synthetic/study_teacher", "synthetic/study_student"),
}
STUDY_SEEDS = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-demo",
        description="Train a teacher, a no-KD student and every distillation method on the synthetic "
        "benchmark, then print the comparison table.",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default demo_out/<time>)")
    parser.add_argument(
        "--student", choices=sorted(STUDENTS), default="mobilefacenet", help="student network"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated method files (distill configs) to train after the teacher "
        "(default: those marked demo: true, the EKD paper's Table 2 rows)",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of extra configs (e.g. its distill/<method>.yaml); repeatable",
    )
    parser.add_argument("--seed", type=int, default=0, help="the teacher's seed and the students' first seed")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per student row: --seed, --seed + 1, ... (default 1; {STUDY_SEEDS} with --study)",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="the calibrated study: its benchmark and budget, every row x --seeds seeds; resumable",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="student runs trained side by side, each in its own process with CPUs / jobs threads and its "
        "output in <out>/logs/ (default 1; 2 on a 2-core CPU trains about 1.4x as many images per second)",
    )
    parser.add_argument(
        "--teacher-cache",
        action="store_true",
        help="compute the teacher's embeddings of the training images once (<out>/teacher_cache) and let the "
        "student rows read them instead of running the teacher",
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 steps per run (for tests)")
    parser.add_argument("--wandb", action="store_true", help="log every run to W&B (offline) instead of CSV")
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides applied to every run, e.g. trainer.max_epochs=2"
    )
    return parser


def select_methods(text: str | None, config_dirs: Sequence[Path]) -> list[str]:
    """The methods to run: those named in ``text`` (comma-separated), else every ``demo: true`` one."""
    known = list_methods(config_dirs)
    if text is None:
        return [m.name for m in known if m.demo]
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in {k.name for k in known}]
    if unknown:
        raise SystemExit(f"ekd-demo: unknown methods {unknown}; known: {', '.join(k.name for k in known)}")
    return methods


def search_path_override(config_dirs: Sequence[Path]) -> list[str]:
    """``hydra.searchpath=[file://...]`` for extra config folders (none: no override)."""
    if not config_dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in config_dirs) + "]"]


def compose_run_config(experiment: str, overrides: Sequence[str]):  # -> DictConfig
    """Compose ``conf/train.yaml`` with ``experiment=<experiment>`` and ``overrides`` (Hydra compose API)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="ekd-demo"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])


def run_folder(out: Path, method: str, seed: int, several: bool) -> Path:
    """``<out>/<method>`` for one seed, ``<out>/<method>/seed<k>`` for several."""
    return out / method / f"seed{seed}" if several else out / method


def eta_text(durations: Sequence[float], remaining: int, jobs: int = 1) -> str:
    """``ETA 12.3 min`` from the mean of the runs trained so far, ``jobs`` of them at a time (``ETA ?``
    before the first)."""
    if not durations:
        return "ETA ?"
    return f"ETA {sum(durations) / len(durations) * math.ceil(remaining / jobs) / 60:.1f} min"


@dataclass(frozen=True)
class StudentJob:
    """One student run of the demo: its folder and the config it is composed from."""

    method: str
    seed: int
    folder: Path
    experiment: str
    overrides: tuple[str, ...]
    teacher_checkpoint: str
    sweep: str
    log_file: Path | None = None  # where a worker process sends the run's output (None: this terminal)
    teacher_cache: str | None = None  # a folder written by ekd-cache build (None: the teacher runs online)


def train_student(job: StudentJob) -> float | None:
    """Compose and run one student (``ekd.run.run``); the seconds its training took, None when its
    folder already held a finished run (``resume=auto`` leaves it alone)."""
    global _worker_busy
    if _worker_parent is not None and os.getppid() != _worker_parent:
        # a worker whose ekd-demo died: the jobs already queued to it are left for the next call
        print(f"ekd-demo worker {os.getpid()}: the demo is gone; not starting {job.folder}", file=sys.stderr)
        os._exit(1)
    _worker_busy = True
    try:
        return _compose_and_run(job)
    finally:
        _worker_busy = False


def ensure_teacher_cache(checkpoint: str, data_root: Path, data_fingerprint: str, output: Path) -> Path:
    """``output`` holding the teacher embedding cache of ``checkpoint`` on the training data in
    ``data_root`` (of fingerprint ``data_fingerprint``): kept when a finished cache there matches both,
    else (re)built with ``ekd-cache build`` on this machine's CPU."""
    from ekd.cli.cache import main as cache_main
    from ekd.distill.cache import INDEX_FILE, TeacherCacheError, TeacherEmbeddingCache
    from ekd.models.loading import file_sha256

    if (output / INDEX_FILE).is_file():
        try:
            cache = TeacherEmbeddingCache(output)
            teacher_matches = cache.teacher_sha256 == file_sha256(checkpoint)
            data_matches = cache.dataset_fingerprint == data_fingerprint
        except TeacherCacheError as err:
            print(f"ekd-demo: rebuilding the teacher cache: {err}", flush=True)
        else:
            if teacher_matches and data_matches:
                print(
                    f"ekd-demo: teacher cache {output} matches the teacher and the data; reused", flush=True
                )
                return output
            print(f"ekd-demo: {output} was built for another teacher or data; rebuilding it", flush=True)
    build = ["build", "--checkpoint", checkpoint, "--data", str(data_root), "--output", str(output)]
    build += ["--device", "cpu", "--num-workers", "0", "--batch-size", "64", "--overwrite"]
    if cache_main(build) != 0:
        raise SystemExit(f"ekd-demo: building the teacher cache in {output} failed (see the error above)")
    return output


def _compose_and_run(job: StudentJob) -> float | None:
    from ekd.run import run
    from ekd.runs import folder_state

    with _output_to(job.log_file):
        was_finished = folder_state(job.folder) == "finished"
        cfg = compose_run_config(job.experiment, job.overrides)
        if cfg.distill.objectives:
            cfg.teacher.checkpoint = job.teacher_checkpoint
            cfg.distill.teacher_cache = job.teacher_cache
        run_started = time.time()
        try:
            run(cfg, job.folder, experiment=job.experiment, sweep=job.sweep)
        except Exception:
            traceback.print_exc()  # into the run's log (the demo prints one line)
            raise
        return None if was_finished else time.time() - run_started


@contextlib.contextmanager
def _output_to(log_file: Path | None) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so that native and logging
    output follow) to ``log_file`` for the duration; no-op for None."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


_worker_parent: int | None = None  # in a worker process: the pid of the ekd-demo that started it
_worker_busy = False  # in a worker process: a run is in progress


def _exit_when_orphaned(parent: int) -> None:
    """Worker watchdog thread: end the process once the ekd-demo ``parent`` is gone and no run is in
    progress (an idle worker would otherwise wait for jobs forever)."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent and not _worker_busy:
            os._exit(1)


def _worker_init(threads: int) -> None:
    """Process-pool initializer: ``threads`` intra-op threads for this worker's runs and, on Linux, a
    SIGTERM when the ekd-demo process dies, so that a killed demo leaves no orphan run behind (the run's
    own SIGTERM handling saves its last checkpoint and stops it; the next call resumes it), after which
    :func:`train_student` starts none of the jobs still queued to this worker."""
    import threading

    global _worker_parent
    _worker_parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(_worker_parent,), daemon=True).start()
    if sys.platform == "linux":  # first: the parent may die while torch is imported
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() == 1:  # the parent died before the request: nothing will signal this worker
            raise SystemExit(1)
    import torch

    torch.set_num_threads(threads)


def report_failure(job: StudentJob, error: BaseException) -> None:
    """One line on stderr for a student run that failed (the traceback is in its log or above)."""
    where = f"; its output: {job.log_file}" if job.log_file is not None else ""
    print(
        f"ekd-demo: {job.method} seed {job.seed} failed ({type(error).__name__}: {error}){where}",
        file=sys.stderr,
        flush=True,
    )


def train_side_by_side(
    jobs: Sequence[StudentJob],
    workers: int,
    stage: Callable[..., None],
    durations: list[float],
) -> list[StudentJob]:
    """Train ``jobs`` in ``workers`` processes (spawned, each with CPUs / workers threads), reporting
    each finished run through ``stage``; returns the jobs that failed. A failed run does not stop the
    others (a study runs unattended for hours): its output is in the job's log file, and a new call
    retries it (``resume=auto``)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        pending = {pool.submit(train_student, job): job for job in jobs}
        done_count = 1  # the teacher
        failed: list[StudentJob] = []
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                done_count += 1
                try:
                    took = future.result()
                except Exception as error:  # the run's own failure: the others go on
                    report_failure(job, error)
                    failed.append(job)
                    continue
                except BaseException:  # the pool broke or the demo is stopping: start nothing more
                    for other in pending:
                        other.cancel()
                    raise
                if took is not None:
                    durations.append(took)
                what = "finished earlier" if took is None else f"{took:.0f} s"
                title = f"done: {job.experiment} distill={job.method} seed={job.seed} ({what})"
                stage(done_count, title, remaining=len(jobs) + 1 - done_count)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    methods = select_methods(args.methods, args.config_dir)
    seeds_count = args.seeds if args.seeds is not None else (STUDY_SEEDS if args.study else 1)
    if seeds_count < 1:
        raise SystemExit(f"ekd-demo: --seeds must be at least 1, got {seeds_count}")
    if args.jobs < 1:
        raise SystemExit(f"ekd-demo: --jobs must be at least 1, got {args.jobs}")
    if args.study and args.quick:
        raise SystemExit("ekd-demo: --study and --quick exclude each other")
    seeds = [args.seed + k for k in range(seeds_count)]
    from rich.console import Console

    from ekd.report import build_tables, collect_results, save_tables, to_markdown
    from ekd.run import run

    console = Console()
    started = time.time()
    stamp = _datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or Path("demo_out") / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "logger=" + ("wandb" if args.wandb else "csv"),
        # the same command on the same --out continues: finished runs are skipped, others resumed
        "resume=auto",
        # the final evaluation of every run makes the in-training verification redundant here
        "callbacks.verification=null",
        *search_path_override(args.config_dir),
        *(QUICK_OVERRIDES if args.quick else ()),
        *args.overrides,
    ]
    total = 1 + len(methods) * len(seeds)
    tier = "study" if args.study else "demo"
    teacher_experiment, experiment = TIER_EXPERIMENTS[tier]

    def heading(text: str) -> None:
        """A rule on a terminal; a whole line in a log file (a rule is cut to 80 columns there)."""
        if console.is_terminal:
            console.rule(text)
        else:
            print(f"== {text}", flush=True)

    heading(
        f"ekd-demo ({tier}): teacher + {len(methods)} rows x {len(seeds)} seed(s) -> {out}"
        + (f", {args.jobs} runs at a time" if args.jobs > 1 else "")
    )
    durations: list[float] = []  # of the runs trained in this invocation (skipped ones excluded)

    def stage(index: int, title: str, remaining: int | None = None) -> None:
        """Progress line; ``remaining``: runs still to train (default: this one and those after it)."""
        elapsed = time.time() - started
        left = total - index + 1 if remaining is None else remaining
        eta = eta_text(durations, left, args.jobs)
        heading(f"[{index}/{total}] {title}   (elapsed {elapsed / 60:.1f} min, {eta})")

    stage(1, f"teacher ({teacher_experiment})")
    teacher_dir = out / "teacher"
    teacher_cfg = compose_run_config(teacher_experiment, [f"seed={args.seed}", *common])
    teacher = run(teacher_cfg, teacher_dir, experiment=teacher_experiment, sweep=out.name)
    checkpoint = str(teacher.checkpoint or teacher.backbone_file)
    student_overrides = [*common, f"student={STUDENTS[args.student]}"]
    teacher_cache = None
    if args.teacher_cache:
        from ekd.run import build_datamodule

        data = build_datamodule(compose_run_config(experiment, student_overrides))  # the students' data
        teacher_cache = str(
            ensure_teacher_cache(checkpoint, Path(data.root), data.fingerprint(), out / "teacher_cache")
        )
    jobs = [
        StudentJob(
            method=method,
            seed=seed,
            folder=run_folder(out, method, seed, len(seeds) > 1),
            experiment=experiment,
            overrides=(f"seed={seed}", *student_overrides, f"distill={method}"),
            teacher_checkpoint=checkpoint,
            sweep=out.name,
            log_file=out / "logs" / f"{method}-seed{seed}.log" if args.jobs > 1 else None,
            teacher_cache=teacher_cache,
        )
        for method in methods
        for seed in seeds
    ]
    if args.jobs == 1:
        failed: list[StudentJob] = []
        for index, job in enumerate(jobs, start=2):
            stage(index, f"{experiment} distill={job.method} seed={job.seed}")
            try:
                took = train_student(job)
            except Exception as error:  # traceback printed above; the other runs go on
                report_failure(job, error)
                failed.append(job)
                continue
            if took is not None:
                durations.append(took)
    else:
        failed = train_side_by_side(jobs, args.jobs, stage, durations)

    tables = build_tables(collect_results([out]))
    paths = save_tables(tables, out)
    elapsed = time.time() - started
    heading(f"comparison ({elapsed / 60:.1f} min in all)")
    print(to_markdown(tables))
    for fmt, path in paths.items():
        print(f"{fmt}: {path}")
    (out / "demo_time.txt").write_text(f"{elapsed:.1f} s ({os.cpu_count()} CPUs)\n")
    if failed:
        listing = ", ".join(f"{job.method} seed {job.seed}" for job in failed)
        print(
            f"ekd-demo: {len(failed)} of {len(jobs)} student runs failed ({listing}); the table leaves them "
            "out. The same command retries them and skips the finished runs.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
