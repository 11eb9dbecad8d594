"""VerificationCallback on a tiny Trainer run: logged keys, values, mode restoring, datamodule sets."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ekd.eval.callback import VerificationCallback
from ekd.eval.embed import extract_embeddings
from ekd.eval.verification import verify
from tests.eval.helpers import TinyConvNet, random_pair_images


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.student = TinyConvNet()
        self.modes_seen: list[bool] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.modes_seen.append(self.student.training)
        return self.student(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyData(pl.LightningDataModule):
    def __init__(self, sets) -> None:
        super().__init__()
        self.sets = sets

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 3, 16, 16)), batch_size=4)

    def verification_sets(self):
        return self.sets


def _trainer(callback, steps=2):
    return pl.Trainer(
        max_steps=steps,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )


def test_callback_logs_every_set_and_restores_train_mode():
    sets = {"lfw": random_pair_images(30, seed=1), "agedb_30": random_pair_images(25, seed=2)}
    module = TinyModule()
    callback = VerificationCallback(sets=sets, every_n_steps=1, every_n_epochs=None, batch_size=16)
    trainer = _trainer(callback)
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(torch.randn(8, 3, 16, 16)), batch_size=4))

    metrics = trainer.callback_metrics
    for name in sets:
        for key in ("acc", "acc_std", "xnorm", "tpr@fpr=1e-1"):
            assert f"val/{name}/{key}" in metrics
        assert f"val/{name}/tpr@fpr=1e-4" not in metrics  # 1e-4 is unresolvable with ~15 impostor pairs
    assert "val/mean_acc" in metrics
    assert module.modes_seen == [True, True]  # evaluation after step 1 handed back a training model
    assert module.student.training

    # the logged values are the protocol's numbers for the final weights
    assert callback.latest["step"] == 2
    for name, (images, issame) in sets.items():
        emb = extract_embeddings(module.student, images)
        expected = verify(emb.embeddings, issame)
        assert float(metrics[f"val/{name}/acc"]) == pytest.approx(expected.accuracy, abs=1e-6)
        assert callback.latest["sets"][name]["accuracy"] == pytest.approx(expected.accuracy, abs=1e-12)
    mean = (callback.latest["sets"]["lfw"]["accuracy"] + callback.latest["sets"]["agedb_30"]["accuracy"]) / 2
    assert callback.latest["mean_acc"] == pytest.approx(mean)


def test_callback_uses_datamodule_sets_and_callable_model_attr():
    sets = {"cfp_fp": random_pair_images(20, seed=3)}
    module = TinyModule()
    seen = []

    def get_backbone(pl_module):
        seen.append(type(pl_module).__name__)
        return pl_module.student

    callback = VerificationCallback(every_n_epochs=1, model_attr=get_backbone, batch_size=8)
    _trainer(callback).fit(module, datamodule=TinyData(sets))
    assert seen == ["TinyModule"]  # one epoch of 2 steps -> one evaluation at the epoch end
    assert set(callback.latest["sets"]) == {"cfp_fp"}


def test_callback_configuration_errors():
    with pytest.raises(ValueError, match="every_n_steps or every_n_epochs"):
        VerificationCallback(sets={}, every_n_steps=None, every_n_epochs=None)
    with pytest.raises(ValueError, match="every_n_steps must be a positive int"):
        VerificationCallback(sets={}, every_n_steps=0)
    module = TinyModule()
    callback = VerificationCallback(sets={"lfw": random_pair_images(10)}, model_attr="teacher")
    with pytest.raises(AttributeError, match="no attribute 'teacher'"):
        callback._backbone(module)
    no_sets = VerificationCallback(every_n_epochs=1)
    with pytest.raises(ValueError, match="no verification_sets"):
        _trainer(no_sets).fit(module, train_dataloaders=DataLoader(TensorDataset(torch.randn(4, 3, 16, 16))))


def test_sets_named_in_the_config_are_taken_from_the_datamodule():
    """``sets: [a, b]`` (what a callbacks config entry can give) selects those of the datamodule's sets."""
    from types import SimpleNamespace

    available = {"a": ("images a", "pairs a"), "b": ("images b", "pairs b"), "c": ("images c", "pairs c")}
    trainer = SimpleNamespace(datamodule=SimpleNamespace(verification_sets=lambda: available))
    callback = VerificationCallback(sets=["c", "a"])
    assert callback._resolve_sets(trainer) == {"c": available["c"], "a": available["a"]}
    with pytest.raises(
        ValueError, match=r"unknown verification sets \['lfw'\]; the data provides \['a', 'b', 'c'\]"
    ):
        VerificationCallback(sets=["lfw"])._resolve_sets(trainer)
