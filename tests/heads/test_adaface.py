"""The AdaFace head against an independent float64 restatement of the official code, its limiting
cases, its feature-norm statistics (buffers, checkpoints, margin-free calls, DDP) and a training run.

Official code: mk-minchul/AdaFace @ c60eaa786a42c03444f3df7096dbaf9d57ae010d, ``head.py`` class
``AdaFace`` (init L46-75, forward L77-126) fed as its ``train_val.py`` feeds it: the backbone
(``net.py`` ``Backbone.forward`` L329-332) returns ``(x / ||x||, ||x||)`` and the head gets both.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ekd import heads
from ekd.config import CONF_DIR
from ekd.heads import AdaFaceHead, RecognitionLoss
from ekd.registry import UnknownOptionError

D, C, N = 6, 5, 8


# ------------------------------------------------------------------------- the official head, restated
def official_init(embedding_size: int, classnum: int) -> torch.Tensor:
    """head.py L56-59: ``kernel = Parameter(torch.Tensor(D, C)); kernel.data.uniform_(-1, 1).renorm_(2, 1,
    1e-5).mul_(1e5)``."""
    kernel = torch.Tensor(embedding_size, classnum)
    return kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)


def official_backbone_output(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """net.py L329-332: ``norm = torch.norm(x, 2, 1, True); output = torch.div(x, norm)``."""
    norm = torch.norm(x, 2, 1, True)
    return torch.div(x, norm), norm


def official_forward(kernel, state, embbedings, norms, label, m, h, s, t_alpha):
    """head.py ``AdaFace.forward`` (L77-126) line by line; ``state`` holds the buffers and is updated
    the way the official module reassigns them. Returns the scaled logits."""
    eps = 1e-3  # L61
    kernel_norm = torch.div(kernel, torch.norm(kernel, 2, 0, True))  # l2_norm(kernel, axis=0)
    cosine = torch.mm(embbedings, kernel_norm)
    cosine = cosine.clamp(-1 + eps, 1 - eps)

    safe_norms = torch.clip(norms, min=0.001, max=100)
    safe_norms = safe_norms.clone().detach()

    with torch.no_grad():
        mean = safe_norms.mean().detach()
        std = safe_norms.std().detach()
        state["batch_mean"] = mean * t_alpha + (1 - t_alpha) * state["batch_mean"]
        state["batch_std"] = std * t_alpha + (1 - t_alpha) * state["batch_std"]

    margin_scaler = (safe_norms - state["batch_mean"]) / (state["batch_std"] + eps)
    margin_scaler = margin_scaler * h
    margin_scaler = torch.clip(margin_scaler, -1, 1)

    m_arc = torch.zeros(label.size()[0], cosine.size()[1], dtype=cosine.dtype)
    m_arc.scatter_(1, label.reshape(-1, 1), 1.0)
    g_angular = m * margin_scaler * -1
    m_arc = m_arc * g_angular
    theta = cosine.acos()
    theta_m = torch.clip(theta + m_arc, min=eps, max=math.pi - eps)
    cosine = theta_m.cos()

    m_cos = torch.zeros(label.size()[0], cosine.size()[1], dtype=cosine.dtype)
    m_cos.scatter_(1, label.reshape(-1, 1), 1.0)
    g_add = m + (m * margin_scaler)
    m_cos = m_cos * g_add
    cosine = cosine - m_cos

    return cosine * s


# ------------------------------------------------------------------------------------------- inputs
def _batch(step: int, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw embeddings with norms from 2 to ~150 (some above the 100 clip), and rows that sit on the
    clamps: one along its own centre (cos -> 1, theta clipped at eps when its margin is negative), one
    opposite (cos -> -1, theta clipped at pi - eps when its angular margin is positive)."""
    generator = torch.Generator().manual_seed(100 + step)
    labels = torch.randint(0, C, (N,), generator=generator)
    direction = F.normalize(torch.randn(N, D, generator=generator, dtype=torch.float64), dim=1)
    norms = torch.exp(
        torch.empty(N, 1, dtype=torch.float64).uniform_(math.log(2), math.log(150), generator=generator)
    )
    unit_w = F.normalize(weight, dim=1)
    direction[0] = unit_w[labels[0]]
    direction[1] = -unit_w[labels[1]]
    norms[0], norms[1] = 120.0, 2.0
    return direction * norms, labels


def _weight(seed: int = 0) -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _head(weight: torch.Tensor | None = None, **hparams) -> AdaFaceHead:
    head = heads.create("adaface", D, C, **hparams).double()
    if weight is not None:
        with torch.no_grad():
            head.weight.copy_(weight)
    return head


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ equal to the official
@pytest.mark.parametrize(
    "hparams",
    [
        {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01},  # the paper's (scripts/run_ir*_ms1mv2.sh)
        {"m": 0.5, "h": 1.0, "s": 30.0, "t_alpha": 0.5},  # fast-moving statistics, scaler hits +-1
    ],
    ids=["defaults", "fast_ema"],
)
def test_logits_gradients_and_statistics_equal_the_official_head_over_several_steps(hparams):
    weight = _weight()
    head = _head(weight, **hparams)
    kernel = weight.t().clone().requires_grad_(True)  # official layout D x C
    state = {
        "batch_mean": torch.full((1,), 20.0, dtype=torch.float64),
        "batch_std": torch.full((1,), 100.0, dtype=torch.float64),
    }
    saw_clipped_scaler, theta_clips = False, set()
    for step in range(4):
        x, labels = _batch(step, weight=head.weight.detach())
        probe = torch.randn(N, C, generator=torch.Generator().manual_seed(step), dtype=torch.float64)

        x_ekd = x.clone().requires_grad_(True)
        logits = head(x_ekd, labels)
        (F.cross_entropy(logits, labels) + 0.01 * (logits * probe).sum()).backward()

        x_off = x.clone().requires_grad_(True)
        embeddings, norms = official_backbone_output(x_off)
        expected = official_forward(kernel, state, embeddings, norms, labels, **hparams)
        (F.cross_entropy(expected, labels) + 0.01 * (expected * probe).sum()).backward()

        _close(logits, expected)
        _close(head.batch_mean, state["batch_mean"])
        _close(head.batch_std, state["batch_std"])
        _close(x_ekd.grad, x_off.grad)
        _close(head.weight.grad, kernel.grad.t())
        assert head.batch_mean.shape == head.batch_std.shape == (1,)

        scaler = head.margin_scaler(head.safe_norms(x))
        saw_clipped_scaler |= bool((scaler.abs() == 1).any())
        # which clips of theta + g_angular to [eps, pi - eps] the batch reached (gradient 0 there)
        cos_y = (F.normalize(x, dim=1) * F.normalize(head.weight.detach(), dim=1)[labels]).sum(1)
        shifted = torch.acos(cos_y.clamp(-1 + 1e-3, 1 - 1e-3)) - hparams["m"] * scaler
        theta_clips |= {"low"} if bool((shifted < 1e-3).any()) else set()
        theta_clips |= {"high"} if bool((shifted > math.pi - 1e-3).any()) else set()
        # the same SGD step on both, so the next step starts from moved centres
        with torch.no_grad():
            head.weight -= 0.5 * head.weight.grad
            kernel -= 0.5 * kernel.grad
        head.weight.grad = kernel.grad = None
    assert saw_clipped_scaler == (hparams["h"] == 1.0)
    assert theta_clips == ({"low", "high"} if hparams["h"] == 1.0 else {"low"})
    # the statistics did evolve
    assert float(head.batch_mean) != 20.0 and float(head.batch_std) != 100.0


def test_initial_centres_and_statistics_equal_the_official_init():
    torch.manual_seed(3)
    kernel = official_init(D, C)
    torch.manual_seed(3)
    head = heads.create("adaface", D, C)
    assert torch.equal(head.weight.detach(), kernel.t())
    _close(head.weight.detach().norm(dim=1), torch.ones(C), tol=1e-6)
    assert head.batch_mean.tolist() == [20.0] and head.batch_std.tolist() == [100.0]
    head.batch_mean.fill_(3.0)
    head.reset_parameters()
    assert head.batch_mean.tolist() == [20.0]


def test_defaults_and_config_file_are_the_official_training_values():
    head = heads.create("adaface", D, C)
    assert (head.m, head.h, head.s, head.t_alpha, head.sync_stats) == (0.4, 0.333, 64.0, 0.01, True)
    node = OmegaConf.load(Path(CONF_DIR) / "head" / "adaface.yaml")
    assert node.name == "adaface"
    assert dict(node.kwargs) == {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01, "sync_stats": True}


# ----------------------------------------------------------------------------------- limiting cases
def _target_columns(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(labels)), labels]


def _moderate_batch(norms: torch.Tensor, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings with the given norms, targets at angles well inside (0.7, 2.2) rad: no clamp or clip
    is active, so the closed forms hold exactly."""
    generator = torch.Generator().manual_seed(seed + 1000)  # not the centres' stream
    weight = _weight(seed)
    labels = torch.arange(len(norms)) % C
    unit_w = F.normalize(weight, dim=1)
    angles = torch.linspace(0.7, 2.2, len(norms), dtype=torch.float64)
    other = F.normalize(torch.randn(len(norms), D, generator=generator, dtype=torch.float64), dim=1)
    other = F.normalize(other - (other * unit_w[labels]).sum(1, keepdim=True) * unit_w[labels], dim=1)
    direction = torch.cos(angles)[:, None] * unit_w[labels] + torch.sin(angles)[:, None] * other
    return direction * norms[:, None], labels, weight


def test_h_zero_is_cosface_with_margin_m():
    norms = torch.tensor([1.0, 5.0, 30.0, 90.0, 400.0], dtype=torch.float64)
    x, labels, weight = _moderate_batch(norms)
    head = _head(weight, h=0.0, m=0.4, s=64.0)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    expected = 64.0 * cos.index_put((torch.arange(5), labels), _target_columns(cos, labels) - 0.4)
    _close(head(x, labels), expected)


def test_all_norms_at_the_batch_mean_give_cosface():
    # t_alpha = 1: the statistics are this batch's; equal norms -> mean = the norm, std = 0 -> scaler 0
    x, labels, weight = _moderate_batch(torch.full((5,), 7.0, dtype=torch.float64))
    head = _head(weight, t_alpha=1.0, m=0.4, s=64.0, h=0.333)
    logits = head(x, labels)
    _close(head.batch_mean, torch.tensor([7.0], dtype=torch.float64))
    assert float(head.batch_std) < 1e-12
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    expected = 64.0 * cos.index_put((torch.arange(5), labels), _target_columns(cos, labels) - 0.4)
    _close(logits, expected, tol=1e-8)


def test_low_norm_is_arcface_and_high_norm_the_hard_sample_margin():
    # frozen statistics mean 50, std 1 and a large h put the scaler at -1 (norm 10) or +1 (norm 90)
    x, labels, weight = _moderate_batch(
        torch.tensor([10.0, 10.0, 10.0, 90.0, 90.0, 90.0], dtype=torch.float64)
    )
    head = _head(weight, t_alpha=0.0, m=0.4, s=64.0, h=10.0)
    head.batch_mean.fill_(50.0)
    head.batch_std.fill_(1.0)
    logits = head(x, labels)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    theta = torch.acos(_target_columns(cos, labels))
    arcface = torch.cos(theta + 0.4)  # scaler -1: g_angular = +m, g_additive = 0
    hard = torch.cos(theta - 0.4) - 0.8  # scaler +1: g_angular = -m, g_additive = 2m
    expected = torch.where(torch.arange(6) < 3, arcface, hard)
    _close(_target_columns(logits, labels), 64.0 * expected)
    # non-target logits are s cos theta
    mask = torch.ones_like(cos, dtype=torch.bool)
    mask[torch.arange(6), labels] = False
    _close(logits[mask], 64.0 * cos[mask])


def test_t_alpha_zero_keeps_the_statistics_fixed():
    head = _head(_weight(), t_alpha=0.0)
    for step in range(3):
        x, labels = _batch(step, head.weight.detach())
        head(x, labels).sum().backward()
    assert head.batch_mean.tolist() == [20.0] and head.batch_std.tolist() == [100.0]


def test_t_alpha_one_takes_each_batch_statistics():
    head = _head(_weight(), t_alpha=1.0)
    x, labels = _batch(0, head.weight.detach())
    head(x, labels)
    safe = x.norm(dim=1).clamp(0.001, 100)
    _close(head.batch_mean, safe.mean().reshape(1))
    _close(head.batch_std, safe.std().reshape(1))


def test_margin_is_detached_from_the_norm():
    # the margin depends on ||x|| only through the detached statistics: the embedding gradient is
    # orthogonal to x (logits depend on the direction only)
    head = _head(_weight(), t_alpha=0.3)
    x, labels = _batch(1, head.weight.detach())
    x.requires_grad_(True)
    F.cross_entropy(head(x, labels), labels).backward()
    _close((x.grad * x.detach()).sum(1), torch.zeros(N, dtype=torch.float64))


# ------------------------------------------------------------------------------------- statistics
def test_margin_free_and_eval_calls_leave_the_statistics_alone():
    head = _head(_weight(), t_alpha=0.5)
    x, labels = _batch(0, head.weight.detach())
    before = (head.batch_mean.clone(), head.batch_std.clone())
    free = head(x)  # training mode, no labels
    assert torch.equal(head.batch_mean, before[0]) and torch.equal(head.batch_std, before[1])
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    _close(free, 64.0 * cos.clamp(-1 + 1e-3, 1 - 1e-3))
    loss_fn = RecognitionLoss("adaface", D, C, t_alpha=0.5).double()
    loss_fn.margin_free_logits(x)
    assert loss_fn.head.batch_mean.tolist() == [20.0]
    # eval mode with labels: the margin with the stored statistics, no update
    head.eval()
    head.batch_mean.fill_(15.0)
    head.batch_std.fill_(4.0)
    logits = head(x, labels)
    assert head.batch_mean.tolist() == [15.0] and head.batch_std.tolist() == [4.0]
    state = {
        "batch_mean": torch.tensor([15.0], dtype=torch.float64),
        "batch_std": torch.tensor([4.0], dtype=torch.float64),
    }
    embeddings, norms = official_backbone_output(x)
    # the official forward with t_alpha = 0 is the margin under frozen statistics
    expected = official_forward(
        head.weight.detach().t(), state, embeddings, norms, labels, 0.4, 0.333, 64.0, 0.0
    )
    _close(logits, expected)


def test_state_dict_round_trip_keeps_the_statistics():
    head = _head(_weight(), t_alpha=0.5)
    for step in range(3):
        x, labels = _batch(step, head.weight.detach())
        head(x, labels)
    state = head.state_dict()
    assert set(state) == {"weight", "batch_mean", "batch_std"}
    restored = heads.create("adaface", D, C, t_alpha=0.5).double()
    assert restored.batch_mean.tolist() == [20.0]
    restored.load_state_dict(state)
    assert torch.equal(restored.batch_mean, head.batch_mean) and torch.equal(
        restored.batch_std, head.batch_std
    )
    head.eval(), restored.eval()
    x, labels = _batch(9, head.weight.detach())
    assert torch.equal(restored(x, labels), head(x, labels))


def test_a_batch_of_one_keeps_the_std_finite():
    head = _head(_weight(), t_alpha=0.5)
    x, labels = _batch(0, head.weight.detach())
    logits = head(x[:1], labels[:1])
    assert torch.isfinite(logits).all()
    assert head.batch_std.tolist() == [100.0]  # official: NaN (std of one sample)
    _close(
        head.batch_mean, (0.5 * 100.0 + 0.5 * 20.0) * torch.ones(1, dtype=torch.float64)
    )  # norm 120 -> 100
    head(x[:0], labels[:0])  # empty batch: nothing moves
    assert head.batch_std.tolist() == [100.0]


def test_half_precision_cosines_keep_finite_margins():
    head = heads.create("adaface", D, C).to(torch.bfloat16)
    x, labels = _batch(0, head.weight.detach().double())
    x = x.to(torch.bfloat16).requires_grad_(True)
    logits = head(x, labels)
    logits.float().sum().backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all() and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------- registry, errors
def test_registry_builds_it_and_rejects_unknown_and_bad_options():
    assert "adaface" in heads.list_heads() and heads.head_class("adaface") is AdaFaceHead
    with pytest.raises(
        UnknownOptionError, match="'adaface' has no hyper-parameter 'bogus'.*accepts: m, h, s, t_alpha"
    ):
        heads.create("adaface", 8, 5, bogus=1)
    for bad, match in [
        ({"t_alpha": 1.5}, r"t_alpha must lie in \[0.0, 1.0\]"),
        ({"s": 0.0}, "s must be a positive number"),
        ({"m": -0.1}, r"m must lie in \[0.0, inf\]"),
        ({"h": float("nan")}, "h must be a finite number"),
        ({"sync_stats": "yes"}, "sync_stats must be true or false"),
    ]:
        with pytest.raises(ValueError, match=match):
            heads.create("adaface", D, C, **bad)


# ------------------------------------------------------------------------------------ sharded, DDP
def _sum_loss(loss_fn: RecognitionLoss, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss_fn(x, labels)[0]


def test_sharded_classifier_on_one_process_equals_the_replicated_head():
    weight = _weight()
    for sample_rate in (1.0, 0.6):
        replicated = RecognitionLoss("adaface", D, C, t_alpha=0.5).double()
        sharded = RecognitionLoss(
            "adaface", D, C, sharded=True, sample_rate=sample_rate, t_alpha=0.5
        ).double()
        replicated.set_centres(weight)
        sharded.set_centres(weight)
        for step in range(3):
            x, labels = _batch(step, weight)
            a, b = _sum_loss(replicated, x, labels), _sum_loss(sharded, x, labels)
            if sample_rate == 1.0:
                _close(a, b)
            _close(replicated.head.batch_mean, sharded.head.batch_mean)
            _close(replicated.head.batch_std, sharded.head.batch_std)
        state = sharded.state_dict()
        assert "classifier.head.batch_mean" in state and "classifier.head.batch_std" in state


ROWS = [slice(0, 3), slice(3, 8)]  # uneven local batches: 3 rows on rank 0, 5 on rank 1


def _gloo_worker(rank: int, world_size: int) -> dict:
    weight = _weight()
    out: dict = {}
    for name, options in [
        ("replicated_sync", {}),
        ("replicated_local", {"sync_stats": False}),
        ("sharded_sync", {"sharded": True}),
    ]:
        loss_fn = RecognitionLoss("adaface", D, C, t_alpha=0.5, **options).double()
        loss_fn.set_centres(weight)
        steps = []
        for step in range(3):
            x, labels = _batch(step, weight)
            local = x[ROWS[rank]].clone().requires_grad_(True)
            loss, logits = loss_fn(local, labels[ROWS[rank]])
            loss.backward()
            steps.append(
                {
                    "loss": loss.detach(),
                    "logits": None if logits is None else logits.detach(),
                    "grad": local.grad,
                    "stats": torch.cat([loss_fn.head.batch_mean, loss_fn.head.batch_std]).clone(),
                }
            )
        out[name] = steps
    loss_fn = RecognitionLoss("adaface", D, C, sharded=True, sync_stats=False).double()
    x, labels = _batch(0, weight)
    try:
        loss_fn(x[ROWS[rank]], labels[ROWS[rank]])
        out["sharded_local_error"] = None
    except ValueError as error:
        out["sharded_local_error"] = str(error)
    return out


@pytest.fixture(scope="module")
def gloo_results() -> list[dict]:
    from tests.ddp_utils import run_gloo

    return run_gloo(_gloo_worker)


def _single_process(rows_of_rank: slice | None) -> list[dict]:
    """The same three steps on one process: the whole batch, or one rank's rows only."""
    weight = _weight()
    loss_fn = RecognitionLoss("adaface", D, C, t_alpha=0.5).double()
    loss_fn.set_centres(weight)
    steps = []
    for step in range(3):
        x, labels = _batch(step, weight)
        x = x.clone().requires_grad_(True)
        rows = slice(None) if rows_of_rank is None else rows_of_rank
        loss, logits = loss_fn(x[rows], labels[rows])
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "logits": logits.detach(),
                "grad": x.grad,
                "stats": torch.cat([loss_fn.head.batch_mean, loss_fn.head.batch_std]).clone(),
            }
        )
    return steps


@pytest.mark.ddp
def test_global_statistics_under_ddp_equal_one_process_on_the_whole_batch(gloo_results):
    whole = _single_process(None)
    for rank, result in enumerate(gloo_results):
        for mine, ref in zip(result["replicated_sync"], whole):
            _close(mine["stats"], ref["stats"])
            # the replicated head's logits of the local rows equal the whole-batch logits of those rows
            _close(mine["logits"], ref["logits"][ROWS[rank]])
        for mine, ref in zip(result["sharded_sync"], whole):
            _close(mine["stats"], ref["stats"])
            _close(mine["loss"], ref["loss"])  # the sharded loss is the global-batch loss
            # ekd.dist convention: world size x the exact gradient of the local rows
            _close(mine["grad"], 2 * ref["grad"][ROWS[rank]])


@pytest.mark.ddp
def test_sync_stats_false_is_the_official_per_rank_statistics(gloo_results):
    for rank, result in enumerate(gloo_results):
        local = _single_process(ROWS[rank])
        for mine, ref in zip(result["replicated_local"], local):
            _close(mine["stats"], ref["stats"])
            _close(mine["logits"], ref["logits"])
        assert not torch.allclose(
            result["replicated_local"][-1]["stats"], result["replicated_sync"][-1]["stats"]
        )
        assert "sync_stats=False" in result["sharded_local_error"]
        assert "needs replicated class centres" in result["sharded_local_error"]


# ------------------------------------------------------------------------------------ training run
def test_training_run_keeps_the_statistics_in_its_checkpoint_and_resumes_them(tmp_path):
    import pytorch_lightning as pl

    from tests.lit.common import loader, recognition_module, trainer

    class FirstStepStatistics(pl.Callback):
        def __init__(self) -> None:
            self.seen: list[list[float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            head = pl_module.recognition.head
            self.seen.append([float(head.batch_mean), float(head.batch_std)])

    head = {"name": "adaface", "kwargs": {"s": 16.0, "t_alpha": 0.3}}
    torch.manual_seed(0)
    first = recognition_module(head=head)
    fit = trainer(max_steps=2)
    fit.fit(first, loader(batch_size=8))
    path = tmp_path / "step2.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    stats = [saved[f"recognition.classifier.{k}"] for k in ("batch_mean", "batch_std")]
    assert torch.equal(stats[0], first.recognition.head.batch_mean)
    assert torch.equal(stats[1], first.recognition.head.batch_std)
    assert float(stats[0]) != 20.0 and float(stats[1]) != 100.0

    torch.manual_seed(123)  # other initial weights: everything must come from the file
    resumed = recognition_module(head=head)
    assert resumed.recognition.head.batch_mean.tolist() == [20.0]
    record = FirstStepStatistics()
    trainer(max_steps=4, callbacks=[record]).fit(resumed, loader(batch_size=8), ckpt_path=path)
    # the first resumed step starts from the saved statistics, and training moves them on
    assert record.seen[0] == [float(stats[0]), float(stats[1])]
    assert len(record.seen) == 2 and float(resumed.recognition.head.batch_mean) != float(stats[0])


def test_ekd_train_runs_with_head_adaface(tmp_path):
    from ekd.cli.train import run
    from tests.cli.test_train import STUDENT, _tiny

    results = run(_tiny(tmp_path / "data", *STUDENT, "head=adaface", "trainer.max_steps=2"), tmp_path / "run")
    assert results.global_step == 2
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    stats = [
        float(checkpoint["state_dict"][f"recognition.classifier.{k}"]) for k in ("batch_mean", "batch_std")
    ]
    assert stats != [20.0, 100.0] and all(math.isfinite(v) for v in stats)
    assert checkpoint["hyper_parameters"]["head"]["name"] == "adaface"
