"""Flip-sum embedding extraction: closed-form check, XNorm, eval-mode handling, ONNX parity, sharding,
repeated images embedded once."""

import numpy as np
import pytest
import torch

from ekd.data.batch import normalise_batch
from ekd.dist import shard_bounds
from ekd.eval import embed as embed_module
from ekd.eval.embed import OnnxEmbedder, distinct_images, extract_embeddings
from ekd.eval.verification import verify
from tests.eval.helpers import AutocastProbe, LinearNet, TinyConvNet, random_pair_images


def _linear_by_hand(images: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f, f_flip)``: LinearNet's outputs for the images and their mirrors, in float64."""
    x = (images.astype(np.float64) - 127.5) / 127.5
    mirrored = x[:, :, :, ::-1]  # horizontal flip = reversed width axis
    return x.reshape(len(x), -1) @ weight.T, mirrored.reshape(len(x), -1) @ weight.T


def _assert_flip_sum_and_xnorm(result, f: np.ndarray, f_flip: np.ndarray) -> None:
    raw = f + f_flip
    np.testing.assert_allclose(result.raw.numpy(), raw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        result.embeddings.numpy(), raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    xnorm = np.mean(np.concatenate([np.linalg.norm(f, axis=1), np.linalg.norm(f_flip, axis=1)]))
    assert result.xnorm == pytest.approx(xnorm, rel=1e-5)


def test_flip_sum_and_xnorm_of_linear_model_by_hand():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 3 * 4 * 6)) / 10
    images = rng.integers(0, 256, size=(7, 3, 4, 6), dtype=np.uint8)
    result = extract_embeddings(LinearNet(weight.astype(np.float32)), images, batch_size=3)
    f, f_flip = _linear_by_hand(images, weight)
    _assert_flip_sum_and_xnorm(result, f, f_flip)

    plain = extract_embeddings(LinearNet(weight.astype(np.float32)), images, flip=False)
    np.testing.assert_allclose(plain.raw.numpy(), f, rtol=1e-5, atol=1e-5)
    assert plain.xnorm == pytest.approx(np.mean(np.linalg.norm(f, axis=1)), rel=1e-5)


def test_symmetric_images_give_twice_the_embedding():
    rng = np.random.default_rng(1)
    half = rng.integers(0, 256, size=(3, 3, 4, 3), dtype=np.uint8)
    images = np.concatenate([half, half[..., ::-1]], axis=3)  # mirror-symmetric 4 x 6 images
    model = LinearNet(rng.normal(size=(4, 72)).astype(np.float32))
    with_flip = extract_embeddings(model, images)
    without = extract_embeddings(model, images, flip=False)
    torch.testing.assert_close(with_flip.raw, 2 * without.raw)
    torch.testing.assert_close(with_flip.embeddings, without.embeddings)


def test_normalise_batch_range():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = normalise_batch(x)
    torch.testing.assert_close(out[0, 0].flatten(), torch.tensor([-1.0, -0.5 / 127.5, 0.5 / 127.5, 1.0]))


def test_batch_size_does_not_change_result_and_eval_mode_is_restored():
    model = TinyConvNet()
    images, _ = random_pair_images(10)
    model.train()
    model.act.eval()  # a mixed state must come back exactly
    a = extract_embeddings(model, images, batch_size=3)
    b = extract_embeddings(model, images, batch_size=64)
    torch.testing.assert_close(a.embeddings, b.embeddings)
    assert model.training and model.conv.training and not model.act.training
    # eval mode was used: BN running statistics, so each image is independent of its batch
    model.eval()
    with torch.no_grad():
        x = normalise_batch(images)
        expected = torch.nn.functional.normalize(model(x) + model(torch.flip(x, dims=[3])))
    torch.testing.assert_close(a.embeddings, expected, rtol=1e-5, atol=1e-6)


def test_bad_images_are_reported():
    model = TinyConvNet()
    with pytest.raises(ValueError, match="uint8"):
        extract_embeddings(model, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        extract_embeddings(model, torch.zeros(2, 16, 16, 3, dtype=torch.uint8))


def test_onnx_and_torch_give_the_same_numbers(tmp_path):
    from ekd.models import export_onnx

    model = TinyConvNet().eval()
    with torch.no_grad():  # non-trivial BN statistics so the comparison means something
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path)
    images, issame = random_pair_images(60, seed=3)
    from_torch = extract_embeddings(model, images, batch_size=16)
    from_onnx = extract_embeddings(path, images, batch_size=16)
    torch.testing.assert_close(from_onnx.embeddings, from_torch.embeddings, rtol=1e-4, atol=1e-5)
    assert from_onnx.xnorm == pytest.approx(from_torch.xnorm, rel=1e-5)
    res_torch = verify(from_torch.embeddings, issame, n_folds=5)
    res_onnx = verify(from_onnx.embeddings, issame, n_folds=5)
    assert res_onnx.fold_accuracies == res_torch.fold_accuracies
    assert res_onnx.auc == pytest.approx(res_torch.auc, abs=1e-9)


def test_onnx_fixed_batch_model_is_padded(tmp_path):
    model = TinyConvNet().eval()
    path = tmp_path / "fixed.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(4, 3, 16, 16),), str(path), input_names=["data"], dynamo=False)
    embedder = OnnxEmbedder(path)
    assert embedder.fixed_batch == 4
    images, _ = random_pair_images(3, seed=4)  # 6 images: one full batch + a padded one
    torch.testing.assert_close(
        extract_embeddings(embedder, images, batch_size=6).embeddings,
        extract_embeddings(model, images).embeddings,
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxEmbedder(tmp_path / "missing.onnx")


def test_shard_bounds_cover_in_order():
    assert [shard_bounds(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]


def test_autocast_overflow_falls_back_to_fp32():
    from ekd.eval.embed import TorchEmbedder

    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(1e5)  # outputs of 4e5 exceed fp16's 65504
        model.bias.zero_()
    embedder = TorchEmbedder(model)
    assert not embedder.amp  # autocast is only used when asked for ...
    embedder.amp = True  # ... so force it here, with CPU autocast in fp16, to exercise the fallback
    x = torch.ones(2, 4)
    assert not torch.isfinite(embedder._forward(x, True)).all()
    torch.testing.assert_close(embedder(x), torch.full((2, 3), 4e5))


def test_fp32_by_default_on_every_device(monkeypatch):
    from ekd.eval import embed

    model = torch.nn.Linear(4, 3)
    # a module on a GPU used to get fp16 autocast by default; the device is all that is faked here
    monkeypatch.setattr(embed, "_module_device", lambda module: torch.device("cuda"))
    on_gpu = embed.TorchEmbedder(model)
    assert on_gpu.device.type == "cuda" and not on_gpu.amp
    assert embed.TorchEmbedder(model, precision="16-mixed").amp_dtype == torch.float16
    assert embed.TorchEmbedder(model, precision="bf16-mixed").amp_dtype == torch.bfloat16
    with pytest.raises(
        ValueError, match="unknown precision '16'; expected one of 32-true, 16-mixed, bf16-mixed"
    ):
        embed.TorchEmbedder(model, precision="16")


@pytest.mark.parametrize(
    ("precision", "dtype"), [("32-true", None), ("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_precision_reaches_the_forward(precision, dtype):
    probe = AutocastProbe()
    images, _ = random_pair_images(3, size=8)
    kwargs = {} if precision == "32-true" else {"precision": precision}
    extract_embeddings(probe, images, batch_size=4, **kwargs)
    assert probe.seen == [dtype] * 4  # 6 images in 2 batches, each with its mirror


def test_bf16_embeddings_are_bf16_arithmetic():
    """bf16-mixed: the linear map's inputs and weights rounded to bf16, products summed in fp32, the
    output rounded to bf16 (restated in float64); fp32 matches the float64 map itself."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(5, 3 * 4 * 6)) / 10
    images = rng.integers(0, 256, size=(4, 3, 4, 6), dtype=np.uint8)
    model = LinearNet(weight.astype(np.float32))
    x = ((images.astype(np.float64) - 127.5) / 127.5).reshape(4, -1)

    def bf16(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).bfloat16().double().numpy()

    exact = x @ weight.T
    half = bf16(bf16(x) @ bf16(weight).T)
    fp32 = extract_embeddings(model, images, flip=False).raw.numpy()
    low = extract_embeddings(model, images, flip=False, precision="bf16-mixed").raw.numpy()
    np.testing.assert_allclose(fp32, exact, rtol=1e-5, atol=1e-5)
    # one bf16 rounding of the output (2^-8 relative) apart at most; far from the fp32 result
    np.testing.assert_allclose(low, half, rtol=2**-8, atol=1e-6)
    assert np.abs(low - exact).max() > 1e-4


class _CountingNet(LinearNet):
    """LinearNet that counts the images it embeds."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__(weight)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return super().forward(x)


def test_dedupe_embeds_each_distinct_image_once_with_the_hand_computed_result():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(4, 3 * 4 * 6)) / 10
    distinct = rng.integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    slots = np.array([0, 1, 2, 0, 3, 1, 4, 4, 2, 0])  # pairs reuse images, as in LFW
    images = distinct[slots]
    net = _CountingNet(weight.astype(np.float32))
    result = extract_embeddings(net, images, batch_size=3, dedupe=True)
    assert net.seen == 2 * 5  # each distinct image and its mirror, once

    # by hand, in float64, over every slot (copies included: XNorm counts each copy, as without dedupe)
    _assert_flip_sum_and_xnorm(result, *_linear_by_hand(images, weight))

    net.seen = 0
    plain = extract_embeddings(net, images, batch_size=3)
    assert net.seen == 2 * len(slots)
    torch.testing.assert_close(plain.embeddings, result.embeddings)
    assert result.xnorm == pytest.approx(plain.xnorm, rel=1e-6)  # float32 outputs, other batches


def test_distinct_images_by_hand_and_a_digest_collision_does_not_merge(monkeypatch):
    a, b, c = (torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (1, 2, 3))
    images = torch.stack([b, a, b, c, a, a])
    first, inverse = distinct_images(images)
    assert first.tolist() == [0, 1, 3]
    assert inverse.tolist() == [0, 1, 0, 2, 1, 1]
    torch.testing.assert_close(images[first][inverse], images)

    class _Constant:  # every image gets the same digest
        def __init__(self, *args, **kwargs) -> None:
            pass

        def digest(self) -> bytes:
            return b"same"

    monkeypatch.setattr(embed_module.hashlib, "blake2b", _Constant)
    assert distinct_images(images)[1].tolist() == [0, 1, 0, 2, 1, 1]  # compared pixel for pixel


def test_dedupe_without_repeats_embeds_as_before():
    images, _ = random_pair_images(6, seed=2)
    model = TinyConvNet()
    torch.testing.assert_close(
        extract_embeddings(model, images, batch_size=4, dedupe=True).raw,
        extract_embeddings(model, images, batch_size=4).raw,
    )
