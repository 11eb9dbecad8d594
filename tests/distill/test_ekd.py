"""EKD objective: golden values from an independent float64 loop implementation, threshold state,
invariances, limiting cases, gradcheck, checkpoints and bad input (DDP cases in test_ekd_ddp.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ekd.distill import create, list_objectives
from ekd.distill.ekd import EKDLoss, soft_rank, threshold_positions
from ekd.eval.metrics import fpr_key
from ekd.models.features import Features

# ------------------------------------------------------------------ independent float64 reference
# Plain Python floats and explicit loops over pairs, written from the published algorithm.


def ref_unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def ref_pairs(emb_s, emb_t, labels):
    """[(student cos, teacher cos, is_positive)] for all i < j in row-major order."""
    us, ut = [ref_unit(r) for r in emb_s], [ref_unit(r) for r in emb_t]
    out = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            cs = sum(a * b for a, b in zip(us[i], us[j]))
            ct = sum(a * b for a, b in zip(ut[i], ut[j]))
            out.append((cs, ct, labels[i] == labels[j]))
    return out


def ref_batch_thresholds(values: list[float], anchors: list[int]) -> list[float]:
    ordered = sorted(values, reverse=True)
    return [ordered[len(ordered) // a] for a in anchors]  # integer anchors: exact floor(M / a)


def ref_rank(x: float, taus: list[float], temperature: float) -> float:
    total = 0.0
    for tau in taus:
        z = min(max((x - tau) / temperature, -50.0), 50.0)
        total += 1.0 / (1.0 + math.exp(-z))
    return total


def ref_step(emb_s, emb_t, labels, tau_s, tau_t, hp, training=True, n_updates=0):
    """One EKD forward: returns (loss, loss_pos, loss_neg, new tau_s, new tau_t, n_pos, n_sel, n_updates)."""
    pairs = ref_pairs(emb_s, emb_t, labels)
    negatives = [(cs, ct) for cs, ct, pos in pairs if not pos]
    positives = [(cs, ct) for cs, ct, pos in pairs if pos]
    mu = hp["momentum"]
    if training and negatives:
        batch_s = ref_batch_thresholds([cs for cs, _ in negatives], hp["anchors"])
        batch_t = ref_batch_thresholds([ct for _, ct in negatives], hp["anchors"])
        tau_s = [mu * b + (1 - mu) * old for b, old in zip(batch_s, tau_s)]
        tau_t = [mu * b + (1 - mu) * old for b, old in zip(batch_t, tau_t)]
        n_updates += 1
    use_s, use_t = tau_s, tau_t
    if hp.get("warm_start") == "bias_corrected" and n_updates > 0:
        c = 1 - (1 - mu) ** n_updates
        use_s, use_t = [v / c for v in tau_s], [v / c for v in tau_t]
    T = hp["temperature"]

    def mse(items):
        if not items:
            return 0.0
        return sum((ref_rank(cs, use_s, T) - ref_rank(ct, use_t, T)) ** 2 for cs, ct in items) / len(items)

    hardest = sorted(negatives, key=lambda p: p[0], reverse=True)[: hp["topk"]]
    l_pos, l_neg = mse(positives), mse(hardest)
    loss = hp["pos_weight"] * l_pos + hp["neg_weight"] * l_neg
    return loss, l_pos, l_neg, tau_s, tau_t, len(positives), len(hardest), n_updates


def polar(angles_deg, norms):
    return [[r * math.cos(math.radians(a)), r * math.sin(math.radians(a))] for a, r in zip(angles_deg, norms)]


def feats(x: torch.Tensor) -> Features:
    return Features(embedding=x)


GOLDEN_HP = dict(topk=4, temperature=0.1, anchors=[2, 5, 20], momentum=0.5, pos_weight=0.02, neg_weight=0.01)
LABELS6 = [0, 0, 1, 1, 2, 2]
# Hand-made 2-D embeddings (angle in degrees, norm): 6 samples of 3 identities, two steps.
STEP1_S = polar([0, 17, 71, 96, 158, 203], [1.0, 2.0, 0.5, 3.0, 1.5, 0.7])
STEP1_T = polar([5, 12, 80, 110, 150, 212], [2.0, 1.0, 1.0, 0.3, 4.0, 1.0])
STEP2_S = polar([10, 35, 60, 104, 170, 193], [1.0, 1.0, 2.0, 1.0, 0.5, 1.0])
STEP2_T = polar([0, 25, 70, 90, 175, 200], [1.0, 3.0, 1.0, 1.0, 1.0, 2.0])


def _module(**overrides) -> EKDLoss:
    hp = {**GOLDEN_HP, **overrides}
    return EKDLoss(**hp).double()


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------ golden values
def test_golden_values_two_steps_zero_start():
    # the student negatives are distinct, so the top-k selection is well defined
    for emb_s, emb_t in ((STEP1_S, STEP1_T), (STEP2_S, STEP2_T)):
        neg = sorted(cs for cs, _, pos in ref_pairs(emb_s, emb_t, LABELS6) if not pos)
        assert min(b - a for a, b in zip(neg, neg[1:])) > 1e-3
    # step 1: the 4 hardest negatives by student similarity differ from those by teacher similarity,
    # so selecting by the wrong model would change the golden value
    negatives = [
        (k, cs, ct) for k, (cs, ct, pos) in enumerate(ref_pairs(STEP1_S, STEP1_T, LABELS6)) if not pos
    ]
    by_student = {k for k, _, _ in sorted(negatives, key=lambda p: -p[1])[:4]}
    assert by_student != {k for k, _, _ in sorted(negatives, key=lambda p: -p[2])[:4]}
    module = _module()
    labels = torch.tensor(LABELS6)
    tau_s, tau_t, n = [0.0] * 3, [0.0] * 3, 0
    for emb_s, emb_t in ((STEP1_S, STEP1_T), (STEP2_S, STEP2_T)):
        loss, l_pos, l_neg, tau_s, tau_t, n_pos, n_sel, n = ref_step(
            emb_s, emb_t, LABELS6, tau_s, tau_t, GOLDEN_HP, n_updates=n
        )
        got = module(feats(_t(emb_s)), feats(_t(emb_t)), labels)
        assert got.item() == pytest.approx(loss, rel=1e-12, abs=1e-15)
        assert module.student_thresholds.tolist() == pytest.approx(tau_s, rel=1e-12)
        assert module.teacher_thresholds.tolist() == pytest.approx(tau_t, rel=1e-12)
        items = module.log_items()
        assert items["ekd/loss_pos"].item() == pytest.approx(l_pos, rel=1e-12, abs=1e-15)
        assert items["ekd/loss_neg"].item() == pytest.approx(l_neg, rel=1e-12, abs=1e-15)
        assert items["ekd/num_pos_pairs"].item() == n_pos == 3
        assert items["ekd/num_neg_selected"].item() == n_sel == 4
        assert items["ekd/num_neg_pairs"].item() == 12
        assert items["ekd/tau_s@5e-1"].item() == pytest.approx(tau_s[0], rel=1e-12)
        assert items["ekd/tau_t@5e-2"].item() == pytest.approx(tau_t[2], rel=1e-12)
    assert module.num_updates.item() == 2
    # both loss terms and all thresholds are non-trivial, so the check exercised every step
    assert l_pos > 1e-4 and l_neg > 1e-4 and min(abs(v) for v in tau_s + tau_t) > 1e-3


def test_golden_values_bias_corrected():
    module = _module(warm_start="bias_corrected")
    hp = {**GOLDEN_HP, "warm_start": "bias_corrected"}
    labels = torch.tensor(LABELS6)
    tau_s, tau_t, n = [0.0] * 3, [0.0] * 3, 0
    for emb_s, emb_t in ((STEP1_S, STEP1_T), (STEP2_S, STEP2_T)):
        loss, *_, tau_s, tau_t, _, _, n = ref_step(emb_s, emb_t, LABELS6, tau_s, tau_t, hp, n_updates=n)
        got = module(feats(_t(emb_s)), feats(_t(emb_t)), labels)
        assert got.item() == pytest.approx(loss, rel=1e-12, abs=1e-15)
        # buffers hold the raw zero-started average; the correction only applies on use
        assert module.student_thresholds.tolist() == pytest.approx(tau_s, rel=1e-12)
    c = 1 - (1 - 0.5) ** 2
    assert module.log_items()["ekd/tau_s@5e-1"].item() == pytest.approx(tau_s[0] / c, rel=1e-12)


def test_eval_mode_uses_but_does_not_update_thresholds():
    module = _module()
    labels = torch.tensor(LABELS6)
    module(feats(_t(STEP1_S)), feats(_t(STEP1_T)), labels)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.eval()
    got = module(feats(_t(STEP2_S)), feats(_t(STEP2_T)), labels)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    tau_s, tau_t = before["student_thresholds"].tolist(), before["teacher_thresholds"].tolist()
    loss = ref_step(STEP2_S, STEP2_T, LABELS6, tau_s, tau_t, GOLDEN_HP, training=False)[0]
    assert got.item() == pytest.approx(loss, rel=1e-12)


def test_soft_rank_literals():
    # sigmoid(0) = 1/2 per threshold; far above every threshold counts all of them
    taus = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    x = torch.tensor([0.4, 10.0, -10.0], dtype=torch.float64)
    r = soft_rank(x, taus, 0.1)
    expected0 = 1 / (1 + math.exp(-2.0)) + 0.5 + 1 / (1 + math.exp(2.0))
    assert r.tolist() == pytest.approx([expected0, 3.0, 0.0], abs=1e-15)
    # the clamp: beyond |x - tau| / T = 50 the value is sigmoid(+-50) and the gradient is zero
    x = torch.tensor([0.2 + 0.01 * 60], dtype=torch.float64, requires_grad=True)
    r = soft_rank(x, taus[:1], 0.01)
    r.sum().backward()
    assert r.item() == 1 / (1 + math.exp(-50.0)) and x.grad.item() == 0.0


# ------------------------------------------------------------------------------ thresholds
def test_threshold_positions_literals():
    anchors = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
    assert threshold_positions(130432, anchors) == [13043, 1304, 130, 13, 1, 0]
    assert threshold_positions(1968, anchors) == [196, 19, 1, 0, 0, 0]
    assert threshold_positions(9, anchors) == [0, 0, 0, 0, 0, 0]
    assert threshold_positions(12, (2.5, 3)) == [4, 4]  # non-integer anchor: floor(4.8)
    with pytest.raises(ValueError, match="must be >= 0"):
        threshold_positions(-1, anchors)


def test_fpr_labels():
    assert [fpr_key(1.0 / a) for a in (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)] == [
        "1e-1",
        "1e-2",
        "1e-3",
        "1e-4",
        "1e-5",
        "1e-6",
    ]
    assert fpr_key(1.0 / 20) == "5e-2" and fpr_key(1.0 / 3) == "3.33e-1"
    keys = set(EKDLoss().log_items())
    assert keys == {f"ekd/tau_{m}@1e-{k}" for m in "st" for k in range(1, 7)}


def _random_batch(n_ids=6, per_id=4, dim=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    emb_s = torch.randn(n_ids * per_id, dim, generator=gen, dtype=dtype)
    emb_t = torch.randn(n_ids * per_id, dim, generator=gen, dtype=dtype) + 0.5 * emb_s
    return emb_s, emb_t, labels


@pytest.mark.parametrize("n", [1, 5])
def test_identical_batches_converge_geometrically(n):
    emb_s, emb_t, labels = _random_batch()
    zero = EKDLoss().double()  # official defaults: momentum 0.01, zero start
    corrected = EKDLoss(warm_start="bias_corrected").double()
    for _ in range(n):
        zero(feats(emb_s), feats(emb_t), labels)
        corrected(feats(emb_s), feats(emb_t), labels)
    anchors = [10, 100, 1000, 10**4, 10**5, 10**6]
    pairs = ref_pairs(emb_s.tolist(), emb_t.tolist(), labels.tolist())
    batch_s = ref_batch_thresholds([cs for cs, _, pos in pairs if not pos], anchors)
    batch_t = ref_batch_thresholds([ct for _, ct, pos in pairs if not pos], anchors)
    factor = 1 - 0.99**n
    assert zero.student_thresholds.tolist() == pytest.approx([factor * v for v in batch_s], rel=1e-12)
    assert zero.teacher_thresholds.tolist() == pytest.approx([factor * v for v in batch_t], rel=1e-12)
    tau_s, tau_t = corrected.effective_thresholds()
    assert tau_s.tolist() == pytest.approx(batch_s, rel=1e-12)
    assert tau_t.tolist() == pytest.approx(batch_t, rel=1e-12)
    assert zero.num_updates.item() == n


def test_float32_buffers_track_the_batch_threshold():
    emb_s, emb_t, labels = _random_batch(dtype=torch.float32)
    module = EKDLoss(momentum=0.5)
    for _ in range(3):
        module(feats(emb_s), feats(emb_t), labels)
    assert module.student_thresholds.dtype == torch.float32
    pairs = ref_pairs(emb_s.double().tolist(), emb_t.double().tolist(), labels.tolist())
    batch_s = ref_batch_thresholds(
        [cs for cs, _, pos in pairs if not pos], [10, 100, 1000, 10**4, 10**5, 10**6]
    )
    assert module.student_thresholds.tolist() == pytest.approx([0.875 * v for v in batch_s], rel=1e-5)


# ------------------------------------------------------------------------------ invariances and limits
def test_invariant_to_row_rescaling_and_batch_permutation():
    emb_s, emb_t, labels = _random_batch(seed=1)
    emb_s2, emb_t2, _ = _random_batch(seed=2)
    gen = torch.Generator().manual_seed(3)
    scale_s = torch.rand(emb_s.shape[0], 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    scale_t = torch.rand(emb_s.shape[0], 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    perm = torch.randperm(emb_s.shape[0], generator=gen)
    hp = dict(topk=20, anchors=(3, 10, 100), momentum=0.3, temperature=0.05)
    base, scaled, permuted = (EKDLoss(**hp).double() for _ in range(3))
    for s, t in ((emb_s, emb_t), (emb_s2, emb_t2)):
        l_base = base(feats(s), feats(t), labels)
        l_scaled = scaled(feats(s * scale_s), feats(t * scale_t), labels)
        l_perm = permuted(feats(s[perm]), feats(t[perm]), labels[perm])
        assert l_base.item() > 1e-6
        assert l_scaled.item() == pytest.approx(l_base.item(), rel=1e-10)
        assert l_perm.item() == pytest.approx(l_base.item(), rel=1e-10)
    for other in (scaled, permuted):
        torch.testing.assert_close(other.student_thresholds, base.student_thresholds, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(other.teacher_thresholds, base.teacher_thresholds, rtol=1e-12, atol=1e-14)


def test_zero_loss_and_gradient_when_student_equals_teacher():
    emb, _, labels = _random_batch(seed=4, dtype=torch.float32)
    module = EKDLoss(topk=10, momentum=0.2)
    for step in range(2):
        x = (emb + step).clone().requires_grad_(True)
        loss = module(feats(x), feats((emb + step).clone()), labels)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.count_nonzero(x.grad) == 0
        assert torch.equal(module.student_thresholds, module.teacher_thresholds)


def test_gradient_only_through_student():
    emb_s, emb_t, labels = _random_batch(seed=5)
    x = emb_s.clone().requires_grad_(True)
    t = emb_t.clone().requires_grad_(True)
    module = EKDLoss(topk=10, anchors=(3, 10), temperature=0.1, momentum=0.5).double()
    module(feats(x), feats(t), labels).backward()
    assert t.grad is None and x.grad is not None and x.grad.abs().sum() > 0
    assert not module.student_thresholds.requires_grad


def test_gradcheck_with_fixed_thresholds():
    # momentum 0 keeps the thresholds fixed at their loaded values, so the loss is a smooth function of
    # the student embedding away from the clamp edges (|x - tau| / T = 50) and top-k ties.
    emb_s, emb_t, labels = _random_batch(n_ids=3, per_id=3, dim=4, seed=6)
    module = EKDLoss(topk=8, anchors=(2, 5, 30), temperature=0.2, momentum=0.0).double()
    module.student_thresholds.copy_(torch.tensor([0.3, 0.05, -0.2]))
    module.teacher_thresholds.copy_(torch.tensor([0.4, 0.1, -0.1]))
    x = emb_s.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: module(feats(v), feats(emb_t), labels), (x,), eps=1e-6, atol=1e-8
    )
    assert module.student_thresholds.tolist() == pytest.approx([0.3, 0.05, -0.2])


def test_no_positives_no_negatives_and_topk_above_count():
    emb_s, emb_t, _ = _random_batch(n_ids=1, per_id=5, seed=7)
    # one identity: no negatives -> no threshold update, L_neg = 0
    module = EKDLoss(topk=3).double()
    loss = module(feats(emb_s), feats(emb_t), torch.zeros(5, dtype=torch.long))
    assert module.num_updates.item() == 0 and torch.count_nonzero(module.student_thresholds) == 0
    assert module.log_items()["ekd/loss_neg"].item() == 0.0 and module.log_items()["ekd/num_neg_pairs"] == 0
    assert torch.isfinite(loss) and loss.item() > 0
    # all different: no positives -> L_pos = 0; topk above the 10 negatives selects all of them
    module = EKDLoss(topk=100, anchors=(2, 4), temperature=0.1, momentum=1.0).double()
    labels = torch.arange(5)
    loss = module(feats(emb_s), feats(emb_t), labels)
    ref = ref_step(
        emb_s.tolist(),
        emb_t.tolist(),
        labels.tolist(),
        [0.0, 0.0],
        [0.0, 0.0],
        dict(topk=100, temperature=0.1, anchors=[2, 4], momentum=1.0, pos_weight=0.02, neg_weight=0.01),
    )
    assert loss.item() == pytest.approx(ref[0], rel=1e-12)
    items = module.log_items()
    assert items["ekd/loss_pos"].item() == 0.0 and items["ekd/num_neg_selected"].item() == 10


def test_grad_scale_multiplies_gradient_not_value():
    emb_s, emb_t, labels = _random_batch(seed=8)
    results = {}
    for scale in ("1", 3, "3", "world_size"):
        x = emb_s.clone().requires_grad_(True)
        module = EKDLoss(
            topk=10, anchors=(3, 10), temperature=0.1, momentum=0.5, ddp_grad_scale=scale
        ).double()
        loss = module(feats(x), feats(emb_t), labels)
        loss.backward()
        results[scale] = (loss.item(), x.grad)
        logged = {k: v.item() for k, v in module.log_items().items()}
        assert logged == results.setdefault("logged", logged)  # logged values ignore the scale
    value, grad = results["1"]
    assert grad.abs().sum() > 0
    assert results[3][0] == value and results["3"][0] == value
    torch.testing.assert_close(results[3][1], 3 * grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(results["3"][1], 3 * grad, rtol=1e-12, atol=0)
    # one process: world size 1
    assert results["world_size"][0] == value and torch.equal(results["world_size"][1], grad)


def test_autocast_does_not_lower_precision():
    emb_s, emb_t, labels = _random_batch(seed=9, dtype=torch.float32)
    plain = EKDLoss(topk=10, momentum=0.5)(feats(emb_s), feats(emb_t), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = EKDLoss(topk=10, momentum=0.5)(feats(emb_s), feats(emb_t), labels)
    assert auto.dtype == torch.float32 and auto.item() == pytest.approx(plain.item(), rel=1e-6)


# ------------------------------------------------------------------------------ state and checkpoints
def test_checkpoint_round_trip(tmp_path):
    emb_s, emb_t, labels = _random_batch(seed=10)
    batches = [_random_batch(seed=s)[:2] for s in (11, 12, 13)]
    hp = dict(topk=20, anchors=(3, 10, 100), momentum=0.3, temperature=0.05)
    trained = EKDLoss(**hp).double()
    for s, t in batches[:2]:
        trained(feats(s), feats(t), labels)
    assert set(trained.state_dict()) == {"student_thresholds", "teacher_thresholds", "num_updates"}
    path = tmp_path / "ekd.pt"
    torch.save(trained.state_dict(), path)

    restored = EKDLoss(**hp).double()
    restored.load_state_dict(torch.load(path, weights_only=True))
    for key, value in trained.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert restored.num_updates.item() == 2
    s, t = batches[2]
    assert restored(feats(s), feats(t), labels).item() == trained(feats(s), feats(t), labels).item()
    assert torch.equal(restored.student_thresholds, trained.student_thresholds)

    # inside a parent module (as in the Lightning module) the keys are prefixed and restore the same way
    parent = torch.nn.Module()
    parent.objective = EKDLoss(**hp).double()
    parent.load_state_dict({f"objective.{k}": v for k, v in trained.state_dict().items()})
    assert torch.equal(parent.objective.teacher_thresholds, trained.teacher_thresholds)

    wrong = EKDLoss(anchors=(3, 10)).double()
    with pytest.raises(RuntimeError, match="student_thresholds"):
        wrong.load_state_dict(trained.state_dict())


# ------------------------------------------------------------------------------ registry and bad input
def test_registry_and_defaults():
    assert "ekd" in list_objectives()
    module = create("ekd")
    assert isinstance(module, EKDLoss) and module.relational and module.requires == frozenset({"embedding"})
    assert (module.topk, module.temperature, module.momentum) == (2000, 0.01, 0.01)
    assert module.anchors == (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
    assert (module.pos_weight, module.neg_weight, module.warm_start, module.ddp_grad_scale) == (
        0.02,
        0.01,
        "zero",
        1,
    )
    # YAML 1.1 reads `1e4` as a string: anchors given as strings are accepted
    assert create("ekd", anchors=["1e1", "1e2"]).anchors == (10.0, 100.0)
    # as Hydra passes them: a DictConfig with a ListConfig of anchors
    from omegaconf import OmegaConf

    cfg = OmegaConf.create("{topk: 100, anchors: [1e1, 1.0e+2], ddp_grad_scale: world_size}")
    module = create("ekd", **cfg)
    assert (module.topk, module.anchors, module.ddp_grad_scale) == (100, (10.0, 100.0), "world_size")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"topk": 0}, "topk=0"),
        ({"topk": 2.5}, "topk=2.5"),
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": "abc"}, "temperature='abc'"),
        ({"anchors": []}, "anchors"),
        ({"anchors": [10, 1]}, "must be > 1"),
        ({"anchors": [10, 10.0]}, "distinct"),
        ({"momentum": 1.5}, "momentum=1.5"),
        ({"momentum": -0.1}, "momentum=-0.1"),
        ({"pos_weight": -1}, "pos_weight=-1"),
        ({"neg_weight": float("nan")}, "neg_weight=nan"),
        ({"warm_start": "ones"}, "warm_start='ones'"),
        ({"warm_start": "bias_corrected", "momentum": 0.0}, "momentum > 0"),
        ({"ddp_grad_scale": "world"}, "ddp_grad_scale='world'"),
        ({"ddp_grad_scale": 0}, "ddp_grad_scale=0"),
        ({"ddp_grad_scale": True}, "ddp_grad_scale=True"),
    ],
)
def test_bad_hparams_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EKDLoss(**kwargs)


def test_bad_inputs_have_clear_errors():
    module = EKDLoss()
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        module(feats(x), feats(x), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 samples"):
        module(feats(x[:1]), feats(x[:1]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher embedding"):
        module(feats(x), feats(torch.randn(5, 8)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="N x D"):
        module(feats(x.reshape(4, 2, 4)), feats(x.reshape(4, 2, 4)), torch.zeros(4, dtype=torch.long))
    # different widths are fine: only similarities are compared
    assert torch.isfinite(module(feats(x), feats(torch.randn(4, 3)), torch.tensor([0, 0, 1, 1])))


def test_changing_batch_size_rebuilds_the_pair_cache():
    big_s, big_t, big_labels = _random_batch(seed=14)
    small_s, small_t, small_labels = _t(STEP1_S), _t(STEP1_T), torch.tensor(LABELS6)
    hp = dict(topk=4, anchors=(2, 5), temperature=0.1, momentum=0.0)
    reused = EKDLoss(**hp).double()
    for s, t, y in (
        (small_s, small_t, small_labels),
        (big_s, big_t, big_labels),
        (small_s, small_t, small_labels),
    ):
        assert reused(feats(s), feats(t), y).item() == EKDLoss(**hp).double()(feats(s), feats(t), y).item()
