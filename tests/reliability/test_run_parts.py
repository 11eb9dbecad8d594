"""Every callbacks / logger group of ekd-train builds (a wrong ``_target_`` would only show at run time),
and the Trainer ekd-train builds from them."""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Checkpoint, ProgressBar

from ekd.config import CONF_DIR, instantiate_entries, register_configs
from ekd.eval.callback import VerificationCallback
from ekd.lit.checkpoint import LastCheckpoint
from ekd.run import build_trainer

register_configs()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=synthetic/student", *overrides])


@pytest.mark.parametrize("group", sorted(p.stem for p in (CONF_DIR / "callbacks").glob("*.yaml")))
def test_every_callbacks_group_builds(group, tmp_path):
    cfg = _compose(f"callbacks={group}")
    cfg.output_dir = str(tmp_path)
    callbacks = instantiate_entries(cfg.callbacks, "callbacks")
    assert len(callbacks) == len([v for v in cfg.callbacks.values() if v is not None])
    assert any(isinstance(c, ProgressBar) for c in callbacks)
    if group != "minimal":
        assert any(isinstance(c, LastCheckpoint) for c in callbacks)
        assert any(isinstance(c, VerificationCallback) for c in callbacks)


@pytest.mark.parametrize("group", sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml")))
def test_every_logger_group_builds(group, tmp_path, monkeypatch):
    if group == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed (an optional package)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _compose(f"logger={group}")
    cfg.output_dir, cfg.run_group = str(tmp_path), "test"
    loggers = instantiate_entries(cfg.logger, "logger")
    assert len(loggers) == (0 if group == "none" else 1)


def test_build_trainer_has_the_run_parts_and_a_null_profiler(tmp_path):
    cfg = _compose("logger=csv")
    cfg.output_dir, cfg.run_group = str(tmp_path), "test"
    callbacks = instantiate_entries(cfg.callbacks, "callbacks")
    trainer = build_trainer(cfg, tmp_path, instantiate_entries(cfg.logger, "logger"), callbacks)
    assert trainer.log_every_n_steps == 10  # the synthetic recipe's
    assert isinstance(trainer.checkpoint_callback, Checkpoint)
    assert isinstance(trainer.progress_bar_callback, ProgressBar)
    # the profiler records nothing and hands out one shared context (no per-hook allocation)
    assert trainer.profiler.profile("a") is trainer.profiler.profile("b")
    with trainer.profiler.profile("x"):
        pass
    assert trainer.profiler.summary() == ""
