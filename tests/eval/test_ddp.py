"""Evaluation under 2 gloo processes (one spawn for all checks): sharded extraction and the callback."""

from types import SimpleNamespace

import pytest
import torch

from ekd.eval.callback import VerificationCallback
from ekd.eval.embed import extract_embeddings
from tests.eval.helpers import TinyConvNet, random_pair_images
from tests.eval.test_callback import TinyModule

COUNTS = (10, 7, 1)  # even shards, uneven shards, and a rank with nothing to embed
REPEATED = [0, 3, 1, 0, 3, 3, 2, 1, 0]  # 4 distinct images (uneven shards) in 9 slots


def _evaluate_with_callback(module: TinyModule) -> dict:
    logged: dict = {}
    module.log = lambda key, value, **kwargs: logged.__setitem__(key, value)  # no Trainer loop here
    callback = VerificationCallback(
        sets={"lfw": random_pair_images(21, seed=5)}, every_n_steps=1, batch_size=4
    )
    callback.evaluate(SimpleNamespace(global_step=3, current_epoch=0), module)
    return logged


def _worker(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)
    model = TinyConvNet()
    images, _ = random_pair_images(5, seed=9)
    shards = {}
    for count in COUNTS:
        res = extract_embeddings(model, images[:count], batch_size=2, shard=True)
        shards[count] = (res.raw, res.xnorm)
    # images repeated across pairs, embedded once: the distinct ones are what the ranks share
    deduped = extract_embeddings(model, images[REPEATED], batch_size=2, shard=True, dedupe=True)
    shards["dedupe"] = (deduped.raw, deduped.xnorm)
    torch.manual_seed(0)
    module = TinyModule()
    logged = _evaluate_with_callback(module)
    return {"shards": shards, "logged": logged, "training": module.student.training}


@pytest.mark.ddp
def test_two_processes_match_one_process():
    from tests.ddp_utils import run_gloo

    results = run_gloo(_worker)

    torch.manual_seed(0)
    model = TinyConvNet()
    images, _ = random_pair_images(5, seed=9)
    torch.manual_seed(0)
    module = TinyModule()
    single_logged = _evaluate_with_callback(module)
    for rank_result in results:
        # sharded extraction: every rank ends with all embeddings, in order, and the global XNorm
        for count in COUNTS:
            single = extract_embeddings(model, images[:count], batch_size=2)
            raw, xnorm = rank_result["shards"][count]
            torch.testing.assert_close(raw, single.raw)
            assert xnorm == pytest.approx(single.xnorm, rel=1e-6)
        single = extract_embeddings(model, images[REPEATED], batch_size=2)
        raw, xnorm = rank_result["shards"]["dedupe"]
        torch.testing.assert_close(raw, single.raw)
        assert xnorm == pytest.approx(single.xnorm, rel=1e-6)
        # the callback logs the single-process numbers on every rank and hands back a training model
        assert rank_result["training"]
        assert rank_result["logged"].keys() == single_logged.keys()
        for key, value in single_logged.items():
            assert rank_result["logged"][key] == pytest.approx(value, abs=1e-9), key
