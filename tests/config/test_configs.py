"""Hydra configs: every experiment and group option composes, typos fail clearly, YAML hyper-parameters
match the signatures of the parts they configure."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ekd.config import CONF_DIR, EXPERIMENTS_DIR, register_configs, register_experiments

register_configs()

EXPERIMENT_FILES = sorted(EXPERIMENTS_DIR.rglob("*.yaml"))
EXPERIMENTS = [p.relative_to(EXPERIMENTS_DIR).with_suffix("").as_posix() for p in EXPERIMENT_FILES]
GROUPS = ["data", "student", "teacher", "head", "distill", "trainer", "logger", "callbacks"]
PAPER_ROWS = [
    "none",
    "fitnet",
    "kd",
    "darkrank",
    "sp",
    "cckd",
    "rkd",
    "shrinkteanet",
    "triplet",
    "margin",
    "ekd",
]


def _compose(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_cfg)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Each Table-2 row is one command: the scale's student experiment, a student and a method (distill) file.
STUDENTS = {"ms1mv2": ("mobilefacenet", "resnet18"), "synthetic": ("tiny_mobilefacenet", "tiny_resnet18")}
ROWS = [
    (scale, student, row)
    for scale, students in STUDENTS.items()
    for student in students
    for row in PAPER_ROWS
]


def test_every_table2_row_has_an_experiment_for_both_students_and_scales():
    for scale in ("ms1mv2", "synthetic"):
        assert f"{scale}/teacher" in EXPERIMENTS and f"{scale}/student" in EXPERIMENTS
    assert set(PAPER_ROWS) <= set(_options("distill"))
    assert {f"tiny_{s}" for s in STUDENTS["ms1mv2"]} <= set(_options("student"))


def test_no_two_experiment_files_differ_by_a_single_line():
    texts = {path: path.read_text().splitlines() for path in EXPERIMENT_FILES}
    for a, lines_a in texts.items():
        for b, lines_b in texts.items():
            if a < b:
                diff = set(lines_a) ^ set(lines_b)
                assert len(diff) > 2, f"{a} and {b} differ by one line: {diff}"


def test_teacher_experiments_compose():
    for scale in ("ms1mv2", "synthetic"):
        cfg = _compose(f"experiment={scale}/teacher")
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.method == "teacher" and not cfg.distill.objectives and cfg.teacher is None
        assert cfg.data.name == scale and cfg.order == 0


@pytest.mark.parametrize(("scale", "student", "row"), ROWS)
def test_experiment_composes(scale, student, row):
    cfg = _compose(f"experiment={scale}/student", f"student={student}", f"distill={row}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    parts = [scale]
    assert cfg.data.name == parts[0]
    assert cfg.student.name == student.removeprefix("tiny_")
    assert cfg.method == row
    if row == "none":
        assert not cfg.distill.objectives
    else:
        assert list(cfg.distill.objectives) == [row]
        assert cfg.teacher is not None
    # the EKD recipe: general + balanced batches, cross-entropy on the general rows only
    assert cfg.data.sampler.value == "ekd"
    assert cfg.recognition_rows == cfg.data.general
    assert cfg.head.name == "arcface" and cfg.head.kwargs.m == 0.4
    if parts[0] == "ms1mv2":
        assert cfg.data.general == 32 and cfg.data.identities == 8 and cfg.data.images_per_identity == 4
        assert cfg.head.kwargs.s == 64.0
        assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 5e-4)
        assert list(cfg.schedule.milestones) == [10, 18, 22] and cfg.trainer.max_epochs == 26
        assert cfg.trainer.precision == "32-true" and cfg.data.flip
        # the paper's IJB columns: TFace's scoring (docs/methods.md)
        assert cfg.eval.ijb_protocol.value == "tface"
    else:
        assert cfg.eval.ijb_protocol.value == "insightface"
    assert cfg.eval.precision == "32-true"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    options = _options(group)
    assert options
    for option in options:
        cfg = _compose(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)


def test_launchers_and_hparams_search_compose():
    cfg = _compose(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", hydra_cfg=True
    )
    launcher = cfg.hydra.launcher
    # one SLURM task per device, so Lightning runs DDP over them without relaunching
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert launcher._target_.endswith("SlurmLauncher")
    assert _compose("hydra/launcher=local", hydra_cfg=True).hydra.launcher._target_.endswith("LocalLauncher")
    assert _compose("hydra/launcher=parallel", hydra_cfg=True).hydra.launcher.n_jobs == 2
    sweeper = _compose("hparams_search=optuna", hydra_cfg=True).hydra.sweeper
    assert sweeper.direction == "maximize" and "optim.lr" in sweeper.params


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
        ("data.sampler=ekdd", "Invalid value 'ekdd', expected one of [random, ekd, pk]"),
        ("seed=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("distill=ekdd", "Could not find 'distill/ekdd'"),
        ("head.kwargs.scale=3", "Could not override 'head.kwargs.scale'"),
        ("eval.ijb_protocol=arcface", "Invalid value 'arcface', expected one of [insightface, tface]"),
        ("eval.ijb_flip=concat", "expected one of [sum, plain, sum_normalised, concat_normalised]"),
    ],
)
def test_command_line_typos_fail_clearly(override, expected):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    message = str(info.value) + "".join(f"\n{e}" for e in _causes(info.value))
    assert expected in message


def _causes(error: BaseException):
    while error.__cause__ is not None:
        error = error.__cause__
        yield error


def test_typo_in_an_experiment_file_fails_clearly(tmp_path):
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "bad.yaml").write_text("# @package _global_\ntrainer:\n  max_epoch: 3\n")
    assert register_experiments(tmp_path) == ["typo/bad"]
    with pytest.raises(ConfigCompositionException) as info:
        _compose("experiment=typo/bad")
    message = "\n".join([str(info.value), *map(str, _causes(info.value))])
    assert "Key 'max_epoch' not in 'TrainerConfig'" in message
    assert "full_key: trainer.max_epoch" in message
    (tmp_path / "typo" / "broken.yaml").write_text("trainer: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        register_experiments(tmp_path)


def _accepted(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _group_file(group: str, option: str):
    node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    node.pop("defaults", None)
    return node


def test_yaml_hyperparameters_exist_in_the_parts_they_configure():
    import ekd.distill as distill
    from ekd.heads import HEADS
    from ekd.models import list_backbones
    from ekd.models.registry import BACKBONES

    objectives = set(distill.list_objectives())
    for option in _options("distill"):
        for name, spec in _group_file("distill", option).objectives.items():
            assert name in objectives, (option, name)
            unknown = set(spec) - {"weight"} - _accepted(distill.OBJECTIVES.get(name).__init__)
            assert not unknown, f"distill/{option}.yaml: {name} does not take {unknown}"
    for option in _options("head"):
        node = _group_file("head", option)
        unknown = set(node.kwargs) - _accepted(HEADS.get(node.name).__init__)
        assert not unknown, f"head/{option}.yaml: {node.name} does not take {unknown}"
    for group in ("student", "teacher"):
        for option in _options(group):
            node = _compose(f"{group}={option}")[group] if group == "teacher" else _group_file(group, option)
            if not node.name.startswith("timm/"):
                assert node.name in list_backbones()
            factory, _ = BACKBONES.resolve(node.name)
            params = inspect.signature(factory).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            unknown = set(node.kwargs) - set(params)
            assert takes_any or not unknown, f"{group}/{option}.yaml: {node.name} does not take {unknown}"


def test_output_directories_carry_a_per_process_id():
    cfg = _compose(hydra_cfg=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert "${ekd.uid:}" in run_dir and "${ekd.uid:}" in cfg.hydra.sweep._get_node("dir")._value()
    from ekd.config import run_uid

    # stable within a process (Hydra may resolve the directory more than once), different in another one
    assert run_uid() == run_uid() and len(run_uid()) == 8
    script = "from ekd.config import run_uid; print(run_uid())"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert len(other.strip()) == 8 and other.strip() != run_uid()


def test_conf_dir_is_the_source_tree():
    # the editable install: configs are read from the repository, next to the package
    assert Path(__file__).resolve().parents[2] / "conf" == CONF_DIR
    assert (CONF_DIR / "train.yaml").is_file()


def test_keys_appended_with_plus_are_checked_against_the_schema():
    from ekd.config import ConfigError, validate_config

    cfg = _compose("+trainer.max_epoch=3")  # '+' lifts the struct flag, so composition accepts it
    with pytest.raises(
        ConfigError, match=r"trainer\.max_epoch \(not a key of TrainerConfig; known: .*max_epochs"
    ):
        validate_config(cfg)
    # free-form mappings (backbone options) are checked by the backbone factory, not here
    validate_config(_compose("+student.kwargs.dropout=0.1"))


def test_eval_protocol_settings_and_precision_are_checked():
    from ekd.config import ConfigError, check_config
    from ekd.eval import config_ijb_protocol

    cfg = _compose("experiment=synthetic/student", "distill=none", "eval.ijb_protocol=tface")
    assert config_ijb_protocol(cfg.eval).label == "tface"
    cfg = _compose("eval.ijb_detector_score=true", "eval.ijb_flip=sum")
    assert config_ijb_protocol(cfg.eval).label == "insightface"  # the preset's own values
    cfg = _compose("eval.ijb_protocol=tface", "eval.ijb_norm_score=true", "eval.ijb_flip=concat_normalised")
    assert config_ijb_protocol(cfg.eval).label == "tface (flip_mode=concat_normalised, norm_score=on)"
    check_config(_compose("eval.precision=bf16-mixed"))
    with pytest.raises(
        ConfigError, match=r"eval\.precision: unknown precision 'fp16'; expected one of 32-true"
    ):
        check_config(_compose("eval.precision=fp16"))
