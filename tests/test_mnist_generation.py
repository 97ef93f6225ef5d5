"""LODO's autoregressive MNIST task (papers/lodo.md §3.3): the CNN, its initialisation, the masked input,
the data split, the metrics and the digit sampler."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.mnist_generation import PIXELS, TRAIN, AtanCNN, MNISTGeneration, masked_inputs

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CNN batches on a shared 2-core machine run many times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(one_thread):
    return MNISTGeneration(seed=0, device=CPU, dtype=torch.float32, batch_size=4, val_positions=2, test_pairs=8)


def test_cnn_has_94696_parameters_and_maps_to_256_logits():
    model = AtanCNN()
    count = sum(p.numel() for p in model.parameters())
    assert count == 94_696, f"expected 94,696 parameters (120 + 20 x 4,460 + 5,376), got {count}"
    assert model(torch.zeros(2, 5, 28, 28)).shape == (2, 256)


def test_initialisation_is_normal_with_variance_one_over_fan_in_plus_one():
    model = AtanCNN()
    model.reset_parameters(torch.Generator().manual_seed(0))
    for name, fan_in, module in (("head", 20, model.head), ("depthwise", 9, model.body[0].depthwise),
                                 ("project", 120, model.body[0].project)):
        w = module.weight.detach()
        expected = 1.0 / math.sqrt(fan_in + 1)
        assert w.std().item() == pytest.approx(expected, rel=0.1), f"{name}: std {w.std():.4f}, expected {expected:.4f}"
        assert abs(w.mean().item()) < 3 * expected / math.sqrt(w.numel()) + 1e-3, f"{name}: mean {w.mean():.4f}"


def test_same_average_pool_averages_only_valid_pixels():
    pool = AtanCNN().body[4]
    assert isinstance(pool, torch.nn.AvgPool2d)
    x = torch.arange(49.0).view(1, 1, 7, 7)
    out = pool(x)
    assert out.shape == (1, 1, 4, 4), f"7x7 -> 4x4 (TF SAME), got {tuple(out.shape)}"
    assert out[0, 0, 3, 3].item() == 48.0, "the corner window holds one valid pixel, its average is that pixel"
    assert out[0, 0, 0, 3].item() == pytest.approx((6.0 + 13.0) / 2), "edge window: mean of its 2 valid pixels"


def test_masked_input_channels_on_a_tiny_example():
    image = torch.arange(PIXELS, dtype=torch.int64).remainder(256).to(torch.uint8).view(1, 28, 28)
    r, c = 2, 5
    x = masked_inputs(image, torch.tensor([r]), torch.tensor([c]), torch.float64)[0]
    assert x.shape == (5, 28, 28)
    for row in range(28):
        for col in range(28):
            visible = row < r or (row == r and col < c)
            expected = (image[0, row, col].item() / 256.0 * visible, 2.0 * (col <= c) - 1, 2.0 * visible - 1,
                        2 * row / 28 - 1, 2 * col / 28 - 1)
            got = tuple(x[:, row, col].tolist())
            assert got == pytest.approx(expected), f"pixel ({row}, {col}): expected {expected}, got {got}"


def test_split_batch_targets_and_initial_loss(task):
    assert len(task.train_images) == TRAIN == 59_936 and len(task.val_images) == 64
    inputs, targets = task.sample_batch()
    assert inputs.shape == (4, 5, 28, 28) and targets.shape == (4,) and targets.dtype == torch.int64
    for i in range(4):  # the query is the first invisible pixel; its raw intensity is the target
        visible = inputs[i, 2] > 0
        q = int(visible.sum())
        r, c = divmod(q, 28)
        assert not visible.view(-1)[q:].any(), "visible pixels must be a raster-order prefix"
        assert (inputs[i, 1, 0, :] > 0).sum().item() == c + 1, "channel 2 marks the columns <= c"
        assert inputs[i, 0, r, c].item() == 0.0, "the query pixel itself is hidden"
        assert 0 <= targets[i].item() <= 255
    loss = task.loss((inputs, targets)).item()
    assert math.isfinite(loss) and loss > 1.0, f"initial loss should be O(ln 256), got {loss}"


def test_validation_and_test_metrics(task):
    val = task.evaluate()
    assert set(val) == {"val_loss"} and math.isfinite(val["val_loss"])
    test = task.final_metrics()
    assert set(test) == {"test_loss"} and math.isfinite(test["test_loss"])
    pairs = task.test_images[:2], torch.tensor([0, 1]), torch.tensor([0, 400])
    with torch.no_grad():
        manual = [float(torch.nn.functional.cross_entropy(
            task.model(masked_inputs(pairs[0][i:i + 1], pairs[2][i:i + 1] // 28, pairs[2][i:i + 1] % 28,
                                     torch.float32)),
            pairs[0][i:i + 1, pairs[2][i] // 28, pairs[2][i] % 28].long())) for i in range(2)]
    assert task.pairs_loss(*pairs) == pytest.approx(sum(manual) / 2, rel=1e-5)


def test_sampler_output_shape_and_raster_order(task):
    images = task.sample(2, torch.Generator().manual_seed(0), pixels=30)
    assert images.shape == (2, 28, 28) and images.dtype == torch.uint8
    assert not images.view(2, -1)[:, 30:].any(), "pixels after the sampled prefix stay 0"


def test_sample_digits_writes_a_png_from_a_record(task, tmp_path):
    import json

    from runners.records import Record
    from scripts.sample_digits import sample_record

    record = Record(tmp_path, "abc")
    record.write_params(task.state_dict())
    (record.dir / "config.json").write_text(json.dumps({
        "task": {"name": "mnist_generation", "dtype": "float32",
                 "options": {"batch_size": 4, "val_positions": 2, "test_pairs": 8}}, "task_seed": 0}))
    path = sample_record(record.dir, tmp_path / "digits.png", count=2, pixels=3)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "a PNG grid is expected"
