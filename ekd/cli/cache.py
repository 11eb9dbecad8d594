"""``ekd-cache``: build and inspect teacher embedding caches (see ``ekd.distill.cache``).

Sub-commands::

    ekd-cache build --checkpoint TEACHER --data ROOT --output DIR [--teacher NAME --teacher-kwargs JSON]
                    [--batch-size 256] [--num-workers 4] [--device auto] [--devices N] [--precision 32]
    ekd-cache info DIR [--json]

``build`` embeds every training image of ROOT (an insightface RecordIO folder or an identity image
folder) and its mirror image with the frozen teacher and writes the cache to DIR. The teacher is the
network the checkpoint holds: for an ekd checkpoint (``last.ckpt`` of the teacher's own ``ekd-train``
run) the ``student`` network that run trained, for a ``backbone.pth`` with its ``backbone.json`` the
recorded one; both need no ``--teacher``. An insightface ``backbone.pth`` records nothing and takes
``--teacher NAME`` (and ``--teacher-kwargs``, e.g. ``{"embedding_size": 256}``). Given flags must agree
with the record. ``build`` shards the images over ranks when launched by ``torchrun`` (every rank runs
this command), or over ``--devices N`` GPUs by spawning one process per GPU itself. A DIR that already
holds a finished cache is refused unless ``--overwrite``.

Bad input ends with a one-line ``error: ...`` naming the file or value, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-cache build --checkpoint runs/teacher/checkpoints/last.ckpt --data faces_emore --output cache/r50
      ekd-cache build --teacher iresnet50 --checkpoint insightface/backbone.pth --data faces_emore \\
                      --output cache/r50
      ekd-cache info cache/r50
    """
)
BUILD_EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-cache build --checkpoint runs/teacher/checkpoints/last.ckpt --data faces_emore --output cache/r50
      ekd-cache build --checkpoint runs/teacher/backbone.pth --data faces_emore --output cache/r50
      ekd-cache build --teacher iresnet50 --checkpoint insightface/backbone.pth --data faces_emore \\
                      --output cache/r50 --devices 4

    The teacher is what the checkpoint records (an ekd checkpoint: the student network its run
    trained; a backbone.pth: its backbone.json). An insightface backbone.pth needs --teacher NAME
    (and --teacher-kwargs unless the defaults).
    """
)
INFO_EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-cache info cache/r50
      ekd-cache info cache/r50 --json
    """
)
# how the teacher arguments are spelled in ekd.models.loading's messages
ARGUMENT_NAMES = {
    "name": "--teacher",
    "embedding_size": "--teacher-kwargs embedding_size",
    "kwargs": "--teacher-kwargs",
}


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ekd-cache",
        description="Build and inspect teacher embedding caches.",
        epilog=EPILOG,
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser(
        "build",
        help="compute the teacher embeddings of every training image (and its flip)",
        description="Compute the teacher embeddings of every training image and its mirror image.",
        epilog=BUILD_EPILOG,
        formatter_class=raw,
    )
    build.add_argument(
        "--teacher",
        default=None,
        help="teacher backbone name (e.g. iresnet50); default: the one the checkpoint records",
    )
    build.add_argument(
        "--checkpoint",
        required=True,
        help="teacher weights (ekd .ckpt, backbone.pth with its backbone.json, insightface backbone.pth)",
    )
    build.add_argument(
        "--data", required=True, help="training data: RecordIO folder (train.rec/.idx) or image folder"
    )
    build.add_argument("--output", required=True, help="cache folder to write")
    build.add_argument(
        "--source",
        choices=("auto", "rec", "folder"),
        default="auto",
        help="data kind (auto: rec when DATA/train.rec exists)",
    )
    build.add_argument(
        "--teacher-kwargs",
        default=None,
        help="JSON options for the teacher backbone, e.g. '{\"embedding_size\": 256}' "
        "(default: the recorded ones)",
    )
    build.add_argument(
        "--prefix", default=None, help="key prefix inside a Lightning checkpoint (default student.)"
    )
    build.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256)")
    build.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (default 4)")
    build.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    build.add_argument("--devices", type=int, default=1, help="spawn one process per GPU (default 1)")
    build.add_argument(
        "--precision", choices=("32", "bf16"), default="32", help="teacher precision (default 32)"
    )
    build.add_argument("--overwrite", action="store_true", help="replace a finished cache in OUTPUT")

    info = sub.add_parser(
        "info",
        help="print a cache's index",
        description="Print a teacher cache's index (teacher, data set, sizes).",
        epilog=INFO_EPILOG,
        formatter_class=raw,
    )
    info.add_argument("directory")
    info.add_argument("--json", action="store_true", help="print index.json as is")
    return parser


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ValueError(f"{name}={value}: expected an integer >= {minimum}")


def _teacher_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"--teacher-kwargs {text!r}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--teacher-kwargs {text!r}: expected a JSON object")
    return value


def _dataset(root: str, source: str):
    from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset
    from ekd.data.errors import DataError

    path = Path(root)
    if not path.is_dir():
        raise DataError(f"--data {root}: no such folder")
    if source == "auto":
        source = "rec" if (path / "train.rec").is_file() else "folder"
    kind = FaceRecordDataset if source == "rec" else FaceFolderDataset
    return kind(path, flip=False)


def _load_teacher(args: argparse.Namespace):
    """(teacher, sha256 of its file, BackboneSpec): the recorded network unless --teacher names one."""
    from ekd.models.loading import file_sha256, load_recorded_backbone

    kwargs = _teacher_kwargs(args.teacher_kwargs)
    sha256 = file_sha256(args.checkpoint)  # FileNotFoundError names the path
    teacher, spec = load_recorded_backbone(
        args.checkpoint, prefix=args.prefix, name=args.teacher, kwargs=kwargs, argument_names=ARGUMENT_NAMES
    )
    teacher.requires_grad_(False)
    return teacher, sha256, spec


def _resolve_device(name: str, local_rank: int = 0) -> str:
    import torch

    if name == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return name


def _progress(prefix: str):
    state = {"last": 0.0}

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - state["last"] > 10 or done == total:
            state["last"] = now
            print(f"{prefix}{done}/{total} images", file=sys.stderr, flush=True)

    return report


def _spawned_shard(rank: int, world_size: int, args: argparse.Namespace) -> None:
    """One GPU of ``--devices N``: fill shard ``rank`` of the prepared cache (no process group needed)."""
    from ekd.distill.cache import fill_cache_shard

    teacher, _, _ = _load_teacher(args)
    fill_cache_shard(
        teacher,
        _dataset(args.data, args.source),
        args.output,
        rank,
        world_size,
        args.batch_size,
        args.num_workers,
        f"cuda:{rank}",
        args.precision,
        _progress(f"[shard {rank}/{world_size}] "),
    )


def _build(args: argparse.Namespace) -> None:
    import torch

    from ekd.distill.cache import build_teacher_cache, finalize_cache, make_index, prepare_cache

    _positive("--batch-size", args.batch_size)
    _positive("--num-workers", args.num_workers, 0)
    _positive("--devices", args.devices)
    dataset = _dataset(args.data, args.source)
    teacher, sha256, spec = _load_teacher(args)
    # the index records every create_backbone option, so that it rebuilds the teacher on its own
    kwargs = {"embedding_size": spec.embedding_size, **spec.kwargs}
    print(
        f"teacher: {spec.name}, {spec.embedding_size}-d"
        + ("" if spec.source == "arguments" else f" (recorded in {spec.source})"),
        file=sys.stderr,
    )
    started = time.perf_counter()

    def build(device: str, progress: Any) -> Path:
        """One process's build (this rank's shard under torchrun, everything otherwise)."""
        return build_teacher_cache(
            teacher,
            dataset,
            args.output,
            spec.name,
            sha256,
            kwargs,
            args.checkpoint,
            args.batch_size,
            args.num_workers,
            device,
            args.precision,
            args.overwrite,
            progress,
        )

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # torchrun: every rank runs this command
        import torch.distributed as torch_dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _resolve_device(args.device, local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        try:
            path = build(device, _progress(f"[rank {torch_dist.get_rank()}] "))
        finally:
            torch_dist.destroy_process_group()
    elif args.devices > 1:
        if torch.cuda.device_count() < args.devices:
            raise ValueError(
                f"--devices {args.devices}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        embedding_size = int(teacher.embedding_size)
        prepare_cache(args.output, len(dataset), embedding_size, dataset.labels, overwrite=args.overwrite)
        torch.multiprocessing.start_processes(
            _spawned_shard, args=(args.devices, args), nprocs=args.devices, join=True, start_method="spawn"
        )
        index = make_index(
            dataset,
            spec.name,
            sha256,
            embedding_size,
            kwargs,
            args.checkpoint,
            args.devices,
            time.perf_counter() - started,
            args.precision,
        )
        path = finalize_cache(args.output, index)
    else:
        path = build(_resolve_device(args.device), _progress(""))
    if int(os.environ.get("RANK", "0")) == 0:
        elapsed = time.perf_counter() - started
        print(
            f"wrote the teacher embeddings of {len(dataset)} images (+ flips) to {path.parent} "
            f"in {elapsed:.1f} s"
        )


def _info(args: argparse.Namespace) -> None:
    from ekd.distill.cache import describe_index, read_index

    index = read_index(args.directory)
    print(json.dumps(index, indent=2, sort_keys=True) if args.json else describe_index(index))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"build": _build, "info": _info}
    try:
        handlers[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # DataError, TeacherCacheError, CheckpointError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
