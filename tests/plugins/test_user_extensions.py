"""A user's objective, backbone and data source, in a module outside the ekd package, run through the
real ``ekd-train``, ``ekd-demo`` and ``ekd-table`` commands without editing ekd (docs/extending.md).

The test writes ``my_ext.py`` (the three registry entries) and ``my_conf/distill/<method>.yaml`` (the
table row) into a temporary folder, then runs each command in a fresh process from that folder:
``imports=[my_ext]`` imports the module, ``hydra.searchpath`` / ``--config-dir`` find the method file,
and ``ekd-table`` reads the row's label and order from results.json without importing the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ekd.data import write_synthetic
from ekd.data.synthetic import SyntheticConfig
from ekd.models import create_backbone

EXTENSION = '''
"""A user's extensions of ekd (written by the test)."""

import torch
import torch.nn.functional as F
from torch import nn

from ekd.data import DataSource, FaceRecordDataset, register_data_source
from ekd.distill import Objective, register_objective
from ekd.models import FaceBackbone, Features, register_backbone


@register_objective("user_cosine")
class UserCosine(Objective):
    requires = frozenset({"embedding"})
    default_weight = 2.0

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student, teacher, labels):
        return (1 - F.cosine_similarity(student.embedding, teacher.embedding, dim=1, eps=self.eps)).mean()


class UserNet(FaceBackbone):
    def __init__(self, embedding_size: int = 512, width: int = 8) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.stage_shapes = {"stage4": (width, 7, 7)}
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=16, padding=1), nn.AdaptiveAvgPool2d(7))
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 49, embedding_size), nn.BatchNorm1d(embedding_size)
        )

    def forward_features(self, x):
        self.check_input(x)
        stage4 = self.body(x)
        return Features(embedding=self.neck(stage4), stages={"stage4": stage4})


@register_backbone("user_net")
def user_net(embedding_size: int = 512, width: int = 8) -> UserNet:
    return UserNet(embedding_size, width)


@register_data_source("user_faces")
class UserFaces(DataSource):
    def build_dataset(self, flip: bool):
        return FaceRecordDataset(self.root, flip=flip)

    def default_val_sets(self):
        return ["synth_frontal"]
'''

METHOD = """
method: user_cosine
label: UserCosine
order: 115
paper_row: null
demo: false
objectives:
  user_cosine: {eps: 1.0e-6}
"""

STUDENT = """
name: user_net
label: UserNet
embedding_size: 32
kwargs: {width: 4}
"""

TINY = [
    "data.general=4",  # the recipe's EKD batches, small: 4 uniform + 2 identities x 2 images
    "data.identities=2",
    "data.images_per_identity=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "trainer=cpu",
    "trainer.max_steps=2",
    "logger=csv",
    "callbacks.verification=null",
    "callbacks.progress_bar=null",
    "benchmark.enabled=false",
    "eval.batch_size=40",
]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture
def user_folder(tmp_path) -> Path:
    (tmp_path / "my_ext.py").write_text(textwrap.dedent(EXTENSION))
    (tmp_path / "my_conf" / "distill").mkdir(parents=True)
    (tmp_path / "my_conf" / "distill" / "user_cosine.yaml").write_text(METHOD)
    (tmp_path / "my_conf" / "student").mkdir()
    (tmp_path / "my_conf" / "student" / "user_net.yaml").write_text(STUDENT)
    write_synthetic(
        tmp_path / "faces",
        SyntheticConfig(
            identities=6, images_per_identity=4, pairs=20, heldout_identities=4, template_identities=0
        ),
    )
    torch.manual_seed(0)
    teacher = create_backbone("iresnet18", embedding_size=32, base_width=8)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    return tmp_path


def test_user_objective_backbone_and_data_source_run_through_train_demo_and_table(user_folder):
    env = dict(
        os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", EKD_DATA_DIR=str(user_folder / "cache")
    )
    env.pop("PYTHONPATH", None)  # my_ext is found in the working directory, as a user would have it
    search_path = f"hydra.searchpath=[file://{user_folder / 'my_conf'}]"

    # ekd-train: the user's objective (through its method file), backbone (through its student file)
    # and data source
    train = [sys.executable, "-m", "ekd.cli.train", "experiment=synthetic/student", "imports=[my_ext]"]
    train += [
        search_path,
        "distill=user_cosine",
        "data.source=user_faces",
        "data.name=user_faces",
        "data.synthetic=null",
        f"data.root={user_folder / 'faces'}",
    ]
    train += ["student=user_net"]
    train += [
        "teacher=tiny",
        "teacher.embedding_size=32",
        f"teacher.checkpoint={user_folder / 'teacher.pth'}",
    ]
    train += [*TINY, f"hydra.run.dir={user_folder / 'runs' / 'train'}"]
    _run(train, user_folder, env)
    trained = json.loads((user_folder / "runs" / "train" / "results.json").read_text())
    assert (trained["method"], trained["label"], trained["order"]) == ("user_cosine", "UserCosine", 115.0)
    assert trained["objectives"] == {"user_cosine": {"eps": 1e-6}}  # weight: the class's default_weight
    assert trained["student"] == "user_net" and list(trained["metrics"]) == ["synth_frontal"]
    assert trained["global_step"] == 2
    config = (user_folder / "runs" / "train" / "config.yaml").read_text()
    assert "source: user_faces" in config and "- my_ext" in config

    # ekd-demo: the user's method beside a built-in one, found through --config-dir
    demo = [sys.executable, "-m", "ekd.cli.demo", "--quick", "--out", str(user_folder / "runs" / "demo")]
    demo += [
        "--config-dir",
        str(user_folder / "my_conf"),
        "--methods",
        "none,user_cosine",
        "imports=[my_ext]",
    ]
    printed = _run(demo, user_folder, env).stdout
    assert "| UserCosine |" in printed and "MobileFaceNet (no KD)" in printed

    # ekd-table, in a process that never imports my_ext: rows named and ordered from results.json
    script = (
        "import sys; from ekd.cli.table import main; "
        f"code = main([{str(user_folder / 'runs' / 'demo')!r}, '--formats', 'md']); "
        "assert 'my_ext' not in sys.modules; sys.exit(code)"
    )
    printed = _run([sys.executable, "-c", script], user_folder, env).stdout
    rows = [line.split("|")[1].strip() for line in printed.splitlines() if line.startswith("| ")]
    assert rows[2:] == ["IResNet18/8 (teacher)", "MobileFaceNet (no KD)", "UserCosine"]  # after the header
