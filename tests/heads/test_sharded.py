"""Sharded class centres in 2 gloo processes equal the single-process full softmax."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ekd import dist, heads

D, C = 4, 7  # 7 classes over 2 ranks: shards of 4 and 3 rows
HEADS = ["arcface", "softmax", "sphereface", "combined"]
LABELS = torch.tensor([0, 6, 3, 4, 1, 4, 5])  # 3 rows on rank 0, 4 on rank 1; targets on both shards
ROWS = [slice(0, 3), slice(3, 7)]


def _data(name: str) -> dict:
    generator = torch.Generator().manual_seed(7)
    return {
        "x": torch.randn(7, D, generator=generator, dtype=torch.float64),
        "weight": torch.randn(C, D, generator=generator, dtype=torch.float64),
        "bias": torch.randn(C, generator=generator, dtype=torch.float64) if name == "softmax" else None,
        "probe": torch.randn(7, C, generator=generator, dtype=torch.float64),
        "backbone": torch.randn(D, 3, generator=generator, dtype=torch.float64),
        "images": torch.randn(7, 3, generator=generator, dtype=torch.float64),
    }


def _load(loss_fn: heads.RecognitionLoss, data: dict) -> None:
    loss_fn.set_centres(data["weight"])
    if data["bias"] is not None:
        start, count = loss_fn.classifier.class_start, loss_fn.classifier.num_local
        with torch.no_grad():
            loss_fn.head.bias.copy_(data["bias"][start : start + count])


class _Model(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, D, bias=False)
        self.loss = heads.RecognitionLoss(name, D, C, sharded=True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(self.backbone(images), labels)[0]


def _worker(rank: int, world_size: int) -> dict:
    out: dict = {}
    rows = ROWS[rank]
    for name in HEADS:
        data = _data(name)
        loss_fn = heads.RecognitionLoss(name, D, C, sharded=True).double()
        _load(loss_fn, data)
        x = data["x"][rows].clone().requires_grad_(True)
        loss, logits = loss_fn(x, LABELS[rows])
        loss.backward()
        out[name] = {
            "loss": loss.detach(),
            "logits": logits,
            "x_grad": x.grad,
            "w_grad": loss_fn.head.weight.grad,
            "b_grad": None if loss_fn.head.bias is None else loss_fn.head.bias.grad,
            "start": loss_fn.classifier.class_start,
            "count": loss_fn.classifier.num_local,
        }

    # margin-free logits against all centres; each rank a different local loss (as KD computes)
    data = _data("cosface")
    loss_fn = heads.RecognitionLoss("cosface", D, C, sharded=True).double()
    _load(loss_fn, data)
    x = data["x"][rows].clone().requires_grad_(True)
    logits = loss_fn.margin_free_logits(x)
    (logits * data["probe"][rows]).sum().backward()
    out["margin_free"] = {"logits": logits.detach(), "x_grad": x.grad, "w_grad": loss_fn.head.weight.grad}
    out["centres"] = loss_fn.centres()
    out["state_dict"] = loss_fn.state_dict()
    replaced = {k: v.clone() for k, v in out["state_dict"].items()}
    replaced["classifier.head.weight"] = data["weight"] * 2
    loss_fn.load_state_dict(replaced)
    out["loaded_shard"] = loss_fn.head.weight.detach().clone()

    # sampling: every class labelled anywhere in the global batch stays among this rank's rows
    sampled = heads.RecognitionLoss("arcface", D, 40, sharded=True, sample_rate=0.1)
    labels = torch.tensor([[2, 25, 2], [31, 7, 39]][rank])
    sampled(torch.randn(3, D), labels)
    out["sampled"] = (sampled.classifier.class_start, sampled.classifier.sampled_index)

    # a real DDP step: the backbone gradient is averaged, the shards are left alone
    data = _data("arcface")
    model = _Model("arcface").double()
    with torch.no_grad():
        model.backbone.weight.copy_(data["backbone"])
    _load(model.loss, data)
    model.loss.shard_(root=model)
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp(data["images"][rows], LABELS[rows]).backward()
    out["ddp"] = {
        "ignored": sorted(model._ddp_params_and_buffers_to_ignore),
        "shard": model.loss.head.weight.detach().clone(),
        "backbone_grad": model.backbone.weight.grad,
        "w_grad": model.loss.head.weight.grad,
    }
    return out


def _reference(name: str, data: dict, x: torch.Tensor) -> tuple:
    head = heads.create(name, D, C).double()
    with torch.no_grad():
        head.weight.copy_(data["weight"])
        if data["bias"] is not None:
            head.bias.copy_(data["bias"])
    loss = F.cross_entropy(head(x, LABELS), LABELS)
    return loss, head


@pytest.fixture(scope="module")
def gloo_results() -> list:
    from tests.ddp_utils import run_gloo

    return run_gloo(_worker)


@pytest.mark.ddp
def test_sharded_softmax_two_processes_equals_full_softmax(gloo_results):
    results = gloo_results
    for name in HEADS:
        data = _data(name)
        x = data["x"].clone().requires_grad_(True)
        loss, head = _reference(name, data, x)
        loss.backward()
        assert [r[name]["start"] for r in results] == [0, 4] and [r[name]["count"] for r in results] == [4, 3]
        for rank, result in enumerate(results):
            got = result[name]
            assert got["logits"] is None
            torch.testing.assert_close(got["loss"], loss.detach(), msg=f"{name} loss on rank {rank}")
            # ekd.dist convention: world size x the exact gradient on the local rows (exact after DDP)
            torch.testing.assert_close(got["x_grad"], 2 * x.grad[ROWS[rank]], msg=f"{name} embeddings")
            shard = slice(got["start"], got["start"] + got["count"])
            torch.testing.assert_close(got["w_grad"], head.weight.grad[shard], msg=f"{name} centres")
            if head.bias is not None:
                torch.testing.assert_close(got["b_grad"], head.bias.grad[shard])


@pytest.mark.ddp
def test_sharded_margin_free_logits_centres_and_checkpoints(gloo_results):
    data = _data("cosface")
    head = heads.create("cosface", D, C).double()
    with torch.no_grad():
        head.weight.copy_(data["weight"])
    x = data["x"].clone().requires_grad_(True)
    logits = head(x)
    (logits * data["probe"]).sum().backward()
    for rank, result in enumerate(gloo_results):
        got = result["margin_free"]
        torch.testing.assert_close(got["logits"], logits.detach()[ROWS[rank]])
        torch.testing.assert_close(got["x_grad"], x.grad[ROWS[rank]])  # local rows: no gather
        shard = slice(4 * rank, 4 if rank == 0 else C)
        # the shard gets the mean over ranks of their gradients (what DDP gives a replicated head)
        torch.testing.assert_close(got["w_grad"], head.weight.grad[shard] / 2)
        torch.testing.assert_close(result["centres"], data["weight"])
        torch.testing.assert_close(result["state_dict"]["classifier.head.weight"], data["weight"])
        torch.testing.assert_close(result["loaded_shard"], 2 * data["weight"][shard])


@pytest.mark.ddp
def test_sharded_sampling_keeps_every_positive(gloo_results):
    global_labels = {2, 25, 31, 7, 39}
    for result in gloo_results:
        start, index = result["sampled"]
        local_positives = {y - start for y in global_labels if start <= y < start + 20}
        assert len(index) == max(2, len(local_positives))  # ceil(0.1 * 20) = 2
        assert local_positives <= set(index.tolist())


@pytest.mark.ddp
def test_real_ddp_step_averages_backbone_and_keeps_shard_gradients(gloo_results):
    data = _data("arcface")
    backbone = data["backbone"].clone().requires_grad_(True)
    embeddings = data["images"] @ backbone.t()
    loss, head = _reference("arcface", data, embeddings)
    loss.backward()
    for rank, result in enumerate(gloo_results):
        got = result["ddp"]
        assert got["ignored"] == ["loss.classifier.head.weight"]
        shard = slice(4 * rank, 4 if rank == 0 else C)
        torch.testing.assert_close(got["shard"], data["weight"][shard])  # not overwritten by rank 0's
        torch.testing.assert_close(got["backbone_grad"], backbone.grad)
        torch.testing.assert_close(got["w_grad"], head.weight.grad[shard])


def _start_and_count(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    bounds = [dist.shard_bounds(num_classes, world_size, rank) for rank in range(world_size)]
    return [(start, end - start) for start, end in bounds]


def test_shard_range_splits_evenly_and_rejects_too_few_classes(monkeypatch):
    assert _start_and_count(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert _start_and_count(8, 2) == [(0, 4), (4, 4)]
    classifier = heads.ShardedClassifier("softmax", 4, 1)
    # pretend to be rank 0 of 2 so that shard_ splits without a process group
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 0)
    with pytest.raises(ValueError, match="cannot shard 1 classes over 2 ranks"):
        classifier.shard_()
