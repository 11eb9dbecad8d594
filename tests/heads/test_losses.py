"""Center loss, triplet loss with in-batch mining, and the recognition loss on one process."""

import math

import numpy as np
import pytest
import torch

from ekd import heads


def test_center_loss_value_and_update_rule_on_a_hand_example():
    loss_fn = heads.CenterLoss(embedding_size=2, num_classes=3, alpha=0.5).double()
    centres = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    loss_fn.centres.copy_(torch.tensor(centres))
    x = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 2.0], [0.0, 2.0]])
    y = np.array([0, 0, 1, 0])
    embeddings = torch.tensor(x, requires_grad=True)
    loss = loss_fn(embeddings, torch.tensor(y))
    # 0.5 ||x - c||^2 per sample: 0.5 * [1, 13, 2, 4] -> mean 2.5
    assert loss.item() == pytest.approx(0.5 * (1 + 13 + 2 + 4) / 4)
    loss.backward()
    np.testing.assert_allclose(embeddings.grad.numpy(), (x - centres[y]) / 4)
    # class 0: delta = sum(c - x) / (1 + 3) = ([0,0]-[1,0] + [0,0]-[3,2] + [0,0]-[0,2]) / 4 = [-1, -1]
    # class 1: delta = ([1,1] - [2,2]) / 2 = [-0.5, -0.5]; class 2 unseen: delta = 0
    expected = centres - 0.5 * np.array([[-1.0, -1.0], [-0.5, -0.5], [0.0, 0.0]])
    np.testing.assert_allclose(loss_fn.centres.numpy(), expected)
    assert not any(p.requires_grad for p in loss_fn.parameters())  # centres are not the optimiser's


def test_center_loss_sum_reduction_eval_mode_and_errors():
    loss_fn = heads.CenterLoss(2, 3, alpha=1.0, reduction="sum")
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert loss_fn(x, torch.tensor([0, 2])).item() == pytest.approx(0.5 * (1 + 4))
    # alpha = 1 with one sample per class: c <- c - (c - x) / 2
    torch.testing.assert_close(loss_fn.centres, torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    loss_fn.eval()
    loss_fn(x, torch.tensor([0, 2]))
    torch.testing.assert_close(loss_fn.centres, torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="alpha must lie in"):
        heads.CenterLoss(2, 3, alpha=2.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        loss_fn(x, torch.tensor([0, 3]))


# A hand-made batch on the unit circle: squared distance 2 - 2 cos(angle difference)
ANGLES = np.radians([0.0, 20.0, 50.0, 12.0, 30.0, 180.0])
LABELS = np.array([0, 0, 0, 1, 1, 2])


def _batch() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    points = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    d = 2 - 2 * np.cos(ANGLES[:, None] - ANGLES[None, :])
    return torch.tensor(points * 3.0), torch.tensor(LABELS), d  # scale: the loss normalises


def test_squared_distances_on_normalised_embeddings():
    x, _, d = _batch()
    np.testing.assert_allclose(heads.normalised_pairwise_squared_distances(x).numpy(), d, atol=1e-12)


def test_batch_hard_mining_picks_farthest_positive_and_closest_negative():
    x, y, d = _batch()
    a, p, n = (
        t.tolist() for t in heads.batch_hard_triplets(heads.normalised_pairwise_squared_distances(x), y)
    )
    # sample 5 (class 2) has no positive: not an anchor
    assert a == [0, 1, 2, 3, 4]
    # anchor 0 (0 deg): positives at 20, 50 deg -> 50 (idx 2); negatives at 12, 30, 180 deg -> 12 (idx 3)
    # anchor 1 (20): positives at 20, 30 deg -> idx 2; negatives at 8 (idx 3), 10, 160 deg -> idx 3
    # anchor 2 (50): positives at 50, 30 deg -> idx 0; negatives at 38, 20 (idx 4), 130 deg -> idx 4
    # anchor 3 (12): positive idx 4; negatives at 12, 8 (idx 1), 38, 168 deg -> idx 1
    # anchor 4 (30): positive idx 3; negatives at 30, 10 (idx 1), 20, 150 deg -> idx 1
    assert p == [2, 2, 0, 4, 3]
    assert n == [3, 3, 4, 1, 1]
    loss = heads.TripletLoss(margin=0.2, mining="batch_hard")(x, y)
    expected = np.mean([max(0.0, d[i, j] - d[i, k] + 0.2) for i, j, k in zip(a, p, n)])
    assert loss.item() == pytest.approx(expected)


def test_semi_hard_mining_all_pairs_with_fallback():
    x, y, d = _batch()
    a, p, n = (
        t.tolist() for t in heads.semi_hard_triplets(heads.normalised_pairwise_squared_distances(x), y)
    )
    pairs = list(zip(a, p))
    assert pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]
    # (0,1): d_ap at 20 deg; negatives at 12 (closer), 30, 180 -> closest farther: 30 deg (idx 4), and
    #        2 - 2 cos 30 < 2 - 2 cos 20 + 0.2: a semi-hard negative
    # (0,2): d_ap at 50; negatives at 12, 30 closer, 180 farther -> idx 5 (beyond the margin: zero loss)
    # (1,0): 20 deg; negatives at 8, 10, 160 deg -> 160 (idx 5);  (1,2): 30 deg; same -> idx 5
    # (2,0): 50 deg; negatives at 38, 20, 130 -> 130 (idx 5);  (2,1): 30 deg -> 38 deg (idx 3), semi-hard
    # (3,4): 18 deg; negatives at 12, 8, 38, 168 -> 38 deg (idx 2)
    # (4,3): 18 deg; negatives at 30, 10, 20, 150 -> 20 deg (idx 2), semi-hard
    assert n == [4, 5, 5, 5, 5, 3, 2, 2]
    semi_hard = [d[i, j] < d[i, k] < d[i, j] + 0.2 for i, j, k in zip(a, p, n)]
    assert semi_hard == [True, False, False, False, False, True, False, True]
    loss = heads.TripletLoss(margin=0.2)(x, y)
    expected = np.mean([max(0.0, d[i, j] - d[i, k] + 0.2) for i, j, k in zip(a, p, n)])
    assert loss.item() == pytest.approx(expected)


def test_semi_hard_fallback_uses_the_least_hard_negative_when_all_are_closer():
    # anchor at 0 deg, positive at 90 deg, negatives at 10 and 30 deg (both closer than the positive)
    angles = np.radians([0.0, 90.0, 10.0, 30.0])
    x = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1))
    y = torch.tensor([0, 0, 1, 2])
    a, p, n = heads.semi_hard_triplets(heads.normalised_pairwise_squared_distances(x), y)
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == [(0, 1, 3), (1, 0, 2)]
    # (1, 0): d_ap at 90 deg; negatives at 80 and 60 deg: both closer -> farthest, 80 deg (idx 2)


def test_triplet_loss_no_valid_triplet_is_zero_with_graph_and_margin_tensor():
    x = torch.randn(3, 4, requires_grad=True)
    loss = heads.TripletLoss()(x, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    d = heads.normalised_pairwise_squared_distances(torch.eye(3, dtype=torch.float64))
    idx = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    value = heads.triplet_margin_loss(d, *idx, margin=torch.tensor([0.3], dtype=torch.float64))
    assert value.item() == pytest.approx(0.3)  # all squared distances are 2
    with pytest.raises(ValueError, match="mining must be one of"):
        heads.TripletLoss(mining="hardest")


def test_triplet_loss_is_scale_invariant_and_gradient_flows():
    x, y, _ = _batch()
    x = x.clone().requires_grad_(True)
    loss = heads.TripletLoss(mining="batch_hard")(x, y)
    assert loss.item() == pytest.approx(heads.TripletLoss(mining="batch_hard")(x * 10, y).item())
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    top = logits.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_recognition_loss_is_cross_entropy_on_head_logits():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    labels = np.array([0, 1, 2, 3, 4, 0])
    loss_fn = heads.RecognitionLoss("cosface", 4, 5, s=16.0, m=0.2).double()
    loss_fn.set_centres(torch.tensor(w))
    loss, logits = loss_fn(torch.tensor(x), torch.tensor(labels))
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    target = cos.copy()
    target[np.arange(6), labels] -= 0.2
    assert loss.item() == pytest.approx(_np_cross_entropy(16 * target, labels), rel=1e-12)
    np.testing.assert_allclose(logits.detach().numpy(), 16 * target, rtol=1e-12)
    np.testing.assert_allclose(
        loss_fn.margin_free_logits(torch.tensor(x)).detach().numpy(), 16 * cos, rtol=1e-12
    )
    torch.testing.assert_close(loss_fn.centres(), torch.tensor(w))
    loss_fn.set_centres(torch.tensor(w), freeze=True)
    assert not loss_fn.head.weight.requires_grad
    with pytest.raises(ValueError, match=r"centres must have shape \(5, 4\)"):
        loss_fn.set_centres(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="sample_rate must lie in"):
        heads.RecognitionLoss("arcface", 4, 5, sample_rate=0.0)


@pytest.mark.parametrize("name", ["softmax", "arcface", "sphereface", "normface"])
def test_sharded_path_on_one_process_equals_full_softmax(name):
    torch.manual_seed(1)
    x = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    full = heads.RecognitionLoss(name, 4, 5).double()
    sharded = heads.RecognitionLoss(name, 4, 5, sharded=True).double()
    sharded.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        sharded.head.weight.copy_(full.head.weight)
        if full.head.bias is not None:
            sharded.head.bias.copy_(full.head.bias)
    results = []
    for module in (full, sharded):
        xi = x.clone().requires_grad_(True)
        loss, logits = module(xi, labels)
        loss.backward()
        results.append((loss.detach(), xi.grad, module.head.weight.grad, logits))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2])
    assert results[1][3] is None and results[0][3] is not None


def test_sampling_keeps_positives_and_reaches_the_quota():
    loss_fn = heads.RecognitionLoss("arcface", 4, 20, sample_rate=0.25)
    assert loss_fn.sharded
    classifier = loss_fn.classifier
    labels = torch.tensor([3, 17, 3, 9])
    for _ in range(5):
        loss, logits = loss_fn(torch.randn(4, 4), labels)
        index = classifier.sampled_index
        assert logits is None and torch.isfinite(loss)
        assert len(index) == math.ceil(0.25 * 20) and set(labels.tolist()) <= set(index.tolist())
        assert torch.equal(index, index.sort().values)
    many = torch.arange(8)  # more positives than the quota: all of them, nothing else
    loss_fn(torch.randn(8, 4), many)
    assert classifier.sampled_index.tolist() == list(range(8))
    loss_fn.eval()  # evaluation uses every class
    loss_fn(torch.randn(4, 4), labels)
    assert classifier.sampled_index is None


def test_sampled_loss_is_the_softmax_over_the_sampled_classes():
    torch.manual_seed(3)
    loss_fn = heads.RecognitionLoss("cosface", 4, 12, sample_rate=0.5).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([1, 7, 7])
    loss, _ = loss_fn(x, labels)
    index = loss_fn.classifier.sampled_index
    head = heads.create("cosface", 4, 12).double()
    with torch.no_grad():
        head.weight.copy_(loss_fn.head.weight)
    logits = head(x, labels)[:, index].detach().numpy()
    local = np.searchsorted(index.numpy(), labels.numpy())
    assert loss.item() == pytest.approx(_np_cross_entropy(logits, local), rel=1e-12)
