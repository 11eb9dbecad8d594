"""Non-finite guard through the real Trainer with checkpointing: the run stops naming the step and the
term, and the last good checkpoint on disk is intact; in "skip" mode the run goes on with finite weights,
and a run whose weights diverged for good still finishes: verification (in training and after), the
throughput measurement and the results file record null metrics instead of raising."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ekd.data.datamodule import FaceDataModule
from ekd.eval import evaluate_backbone, evaluate_ijb_sets, evaluate_trained, measure_throughput
from ekd.eval.callback import VerificationCallback
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import NonFiniteLossError
from ekd.report import RunResults, build_tables, load_results, write_results
from tests.eval.test_ijb import _write_miniature
from tests.reliability.common import module_options, teacher_file, trainer, write_records

LABELS = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
BAD_STEP = 3


class PoisonBatch(pl.Callback):
    """Puts a NaN pixel into the batch of global step ``BAD_STEP`` (as a corrupt image would)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == BAD_STEP:
            batch.images[0, 0, 0, 0] = math.nan


class Diverge(pl.Callback):
    """Makes every student weight NaN before global step ``BAD_STEP``: the network diverged for good."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == BAD_STEP:
            with torch.no_grad():
                for parameter in pl_module.student.parameters():
                    parameter.fill_(math.nan)


def _fit(tmp_path, nonfinite: str, poison: pl.Callback | None = None, callbacks: tuple = (), **options):
    pl.seed_everything(0, verbose=False)
    data_root = write_records(tmp_path / "data", LABELS)
    module = DistillationModule(
        **module_options(
            teacher_file(tmp_path / "teacher.pth"), objectives={"mimic": {"weight": 1.0}}, nonfinite=nonfinite
        )
    )
    data = FaceDataModule(
        source="rec", root=str(data_root), sampler="random", batch_size=4, num_workers=0, val_sets=[]
    )
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    fit = trainer(
        max_steps=5,
        callbacks=[poison or PoisonBatch(), checkpoints, *callbacks],
        enable_checkpointing=True,
        **options,
    )
    return module, fit, data


@pytest.mark.parametrize("every", [50, 1])
def test_stop_names_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, every):
    """The check is read back on log steps (every ``log_every_n_steps``), at epoch ends and before every
    checkpoint. With 50, the bad step's update happens and the checkpoint due after it is refused;
    with 1, the bad step itself is caught before its update."""
    module, fit, data = _fit(tmp_path, "stop", log_every_n_steps=every)
    with pytest.raises(NonFiniteLossError) as err:
        fit.fit(module, datamodule=data)
    message = str(err.value)
    assert f"non-finite loss at global step {BAD_STEP} (epoch 0)" in message
    assert "recognition=nan" in message and "mimic=nan" in message
    detected = BAD_STEP + 1 if every > 1 else BAD_STEP
    assert f"Training stopped at global step {detected}" in message
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == [f"step={s}.ckpt" for s in range(1, BAD_STEP + 1)]  # nothing after the bad step
    last = torch.load(tmp_path / "ckpt" / f"step={BAD_STEP}.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == BAD_STEP
    parameters = dict(module.named_parameters())
    for key, value in last["state_dict"].items():
        assert bool(torch.isfinite(value.float()).all()), key
        if key in parameters and every == 1:
            # no update happened at the failed step: the weights are those of the checkpoint (BN
            # running statistics in memory did see the bad forward; the file did not)
            torch.testing.assert_close(value, parameters[key].detach(), rtol=0, atol=0, msg=key)
    if every > 1:  # the bad step's update ran before the check (in memory only)
        assert not all(bool(torch.isfinite(p).all()) for p in module.student.parameters())
    # and it resumes
    resumed = DistillationModule.load_from_checkpoint(tmp_path / "ckpt" / f"step={BAD_STEP}.ckpt")
    assert resumed.hparams.nonfinite == "stop"


def test_skip_mode_goes_on_with_finite_weights(tmp_path):
    module, fit, data = _fit(tmp_path, "skip")
    fit.fit(module, datamodule=data)
    assert fit.global_step == 5 and module.skipped_steps == 1
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    before = torch.load(tmp_path / "ckpt" / f"step={BAD_STEP}.ckpt", weights_only=False)["state_dict"]
    after = torch.load(tmp_path / "ckpt" / f"step={BAD_STEP + 1}.ckpt", weights_only=False)["state_dict"]
    # the skipped step left every weight and BN statistic as it was
    for key in before:
        if key.startswith("student.") and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)


def _pairs(num_pairs: int = 20):
    """A verification set: 2N random uint8 images and alternating same / different labels."""
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, (2 * num_pairs, 3, 112, 112), dtype=np.uint8))
    return images, [index % 2 == 0 for index in range(num_pairs)]


def test_skip_mode_with_diverged_weights_finishes_with_null_metrics(tmp_path):
    sets = {"pairs": _pairs()}
    verification = VerificationCallback(sets=sets, every_n_steps=2, every_n_epochs=None, batch_size=8)
    module, fit, data = _fit(tmp_path, "skip", poison=Diverge(), callbacks=(verification,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(module, datamodule=data)
    # steps 3 and 4 ran on NaN weights: skipped, and the run still reached max_steps
    assert fit.global_step == 5 and module.skipped_steps == 2
    diverged = [w for w in caught if "trainable weights are non-finite" in str(w.message)]
    assert len(diverged) == 1 and "global step 3" in str(diverged[0].message)  # said once, not per step
    # the in-training verification at step 4 (after the divergence) logged NaN instead of raising
    assert verification.latest == {
        "step": 4,
        "epoch": 0,  # 16 images in batches of 4: steps 1-4 are epoch 0
        "mean_acc": None,
        "sets": {"pairs": {"accuracy": None, "error": "non-finite embeddings"}},
    }
    assert math.isnan(float(fit.callback_metrics["val/pairs/acc"]))
    assert math.isnan(float(fit.callback_metrics["val/mean_acc"]))

    # the final evaluation of ekd-train: a null record per set and no ROC curve, with a warning
    with pytest.warns(UserWarning, match="verification set pairs: the backbone produces non-finite"):
        metrics, rocs = evaluate_backbone(module.student, sets, batch_size=8)
    assert metrics == {"pairs": {"accuracy": None, "error": "non-finite embeddings"}}
    assert rocs == {}
    # IJB (a miniature IJB-C on disk): NaN pair scores would make the ROC raise; the set is recorded null
    _write_miniature(tmp_path / "ijb")
    with pytest.warns(UserWarning, match="IJB set IJBC: the backbone has non-finite weights"):
        ijb_metrics, ijb_rocs = evaluate_ijb_sets(module.student, tmp_path / "ijb", ["IJBC"], batch_size=4)
    assert (ijb_metrics, ijb_rocs) == ({"ijbc": {"accuracy": None, "error": "non-finite embeddings"}}, {})
    # both through the one call ekd-train makes: no mean accuracy
    with pytest.warns(UserWarning, match="non-finite"):
        found = evaluate_trained(module.student, sets, 8, ijb_root=str(tmp_path / "ijb"), ijb_sets=["IJBC"])
    assert found == ({**metrics, **ijb_metrics}, {}, None)
    throughput = measure_throughput(module.student, batch_size=2, warmup=1, iterations=2)
    assert throughput["images_per_s"] > 0 and throughput["iterations"] == 2
    assert module.student.training  # its mode is restored

    # the results file stores the null metrics, and the table shows the set as a missing cell
    record = RunResults(
        method="mimic",
        dataset="synthetic",
        student="iresnet18",
        seed=0,
        metrics=metrics,
        throughput=throughput,
    )
    read = load_results(write_results(tmp_path / "run", record))
    assert read.status == "finished"
    assert read.metrics == {"pairs": {"accuracy": None, "error": "non-finite embeddings"}}
    (table,) = build_tables([read])
    assert table.row("mimic").n == 1 and table.row("mimic").cells == {}
