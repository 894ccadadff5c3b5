"""training.augment against NumPy references: crop, flip, cutout, their draws, streams and TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.config import TTA_MODES, TTA_VIEWS
from cnnlab.errors import CnnlabError
from cnnlab.training import augment
from cnnlab.training.augment import AugmentDraws

ALL_OFF = dict(flip=False, crop_padding=0, crop_padding_mode="reflect", cutout=0)


def seeded(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_images(count: int, channels: int, height: int, width: int, seed: int = 0):
    """uint8 NCHW images with no zero pixel, so any zero in an output was written."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (count, channels, height, width), dtype=np.uint8)


def numpy_reference(images: np.ndarray, draws: AugmentDraws, padding_mode: str) -> np.ndarray:
    """torchvision's RandomCrop, RandomHorizontalFlip, then DeVries's cutout, image by image."""
    padding, side = draws.crop_padding, draws.cutout
    _, _, height, width = images.shape
    output = np.empty_like(images)
    for index, image in enumerate(images):
        if draws.crop_offsets is not None:
            padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)), padding_mode)
            top, left = draws.crop_offsets[:, index].tolist()
            image = padded[:, top : top + height, left : left + width]
        if draws.flipped is not None and draws.flipped[index]:
            image = image[:, :, ::-1]
        image = image.copy()
        if draws.cutout_centres is not None:
            row, column = draws.cutout_centres[:, index].tolist()
            top, left = row - side // 2, column - side // 2  # the square's bottom-right is > 0
            image[:, max(0, top) : top + side, max(0, left) : left + side] = 0
        output[index] = image
    return output


def draws_for(images: torch.Tensor, seed: int, **options) -> AugmentDraws:
    """The draws augment_batch makes from a generator seeded with `seed`."""
    count, _, height, width = images.shape
    options.pop("crop_padding_mode", None)
    return augment.draw_augmentations(count, height, width, **options, generator=seeded(seed))


@st.composite
def augment_problems(draw):
    mode = draw(st.sampled_from(["reflect", "constant"]))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    side = min(height, width)
    largest_padding = side - 1 if mode == "reflect" else side
    options = dict(
        flip=draw(st.booleans()),
        crop_padding=draw(st.integers(0, largest_padding)),
        crop_padding_mode=mode,
        cutout=draw(st.integers(0, side)),
    )
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 4)), height, width)
    return shape, options


@settings(max_examples=80, deadline=None)
@given(
    problem=augment_problems(),
    dtype=st.sampled_from([torch.uint8, torch.float32]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_augment_batch_matches_the_numpy_reference(problem, dtype, channels_last, seed):
    shape, options = problem
    reference_input = random_images(*shape, seed=seed % 1000)
    images = torch.from_numpy(reference_input).to(dtype)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    augmented = augment.augment_batch(images, **options, generator=seeded(seed))
    draws = draws_for(images, seed, **options)
    expected = numpy_reference(reference_input, draws, options["crop_padding_mode"])
    np.testing.assert_array_equal(augmented.numpy(), expected.astype(augmented.numpy().dtype))
    assert augmented.dtype == images.dtype
    assert augmented.stride() == images.stride()


@pytest.mark.parametrize("padding_mode", ["reflect", "constant"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("padding", [0, 1, 3])
@pytest.mark.parametrize("cutout", [0, 3])
def test_every_option_combination_matches_the_numpy_reference(padding_mode, flip, padding, cutout):
    # Enough images that every offset, with and without a flip, occurs (hypothesis samples).
    source = random_images(200, 3, 5, 6)
    options = dict(flip=flip, crop_padding=padding, crop_padding_mode=padding_mode, cutout=cutout)
    images = torch.from_numpy(source).contiguous(memory_format=torch.channels_last)
    augmented = augment.augment_batch(images, **options, generator=seeded(4))
    expected = numpy_reference(source, draws_for(images, 4, **options), padding_mode)
    np.testing.assert_array_equal(augmented.numpy(), expected)


@pytest.mark.parametrize("padding_mode", ["reflect", "constant"])
def test_every_crop_is_a_window_of_the_padded_image_and_every_offset_occurs(padding_mode):
    padding, count = 2, 500
    source = random_images(count, 3, 6, 6)
    images = torch.from_numpy(source)
    options = ALL_OFF | dict(crop_padding=padding, crop_padding_mode=padding_mode)
    cropped = augment.augment_batch(images, **options, generator=seeded(1)).numpy()
    pad_width = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    padded = np.pad(source, pad_width, padding_mode)
    offsets = [(top, left) for top in range(2 * padding + 1) for left in range(2 * padding + 1)]
    windows = np.stack([padded[:, :, top : top + 6, left : left + 6] for top, left in offsets])
    matches = (windows == cropped[None]).all(axis=(2, 3, 4))  # (offsets, images)
    assert matches.any(axis=0).all()  # each output is one of the windows
    assert matches.sum(axis=0).max() == 1  # random pixels: the window is unique
    assert set(matches.argmax(axis=0)) == set(range(len(offsets)))


def test_reflect_padding_never_repeats_the_edge_pixel():
    row = torch.tensor([10, 20, 30, 40], dtype=torch.uint8)
    images = row.expand(1, 1, 3, 4)  # three identical rows
    crops = {}
    for left in (0, 1, 4):
        offsets = torch.tensor([[2], [left]])
        draws = AugmentDraws(2, offsets, None, 0, None)
        crops[left] = augment.apply_augmentations(images, draws, "reflect")[0, 0, 0].tolist()
    assert crops == {0: [30, 20, 10, 20], 1: [20, 10, 20, 30], 4: [30, 40, 30, 20]}
    # PyTorch's own reflect padding agrees (and NumPy's symmetric mode, which repeats, would not).
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    assert padded[0, 0, 0, :4].tolist() == crops[0]


def test_flip_mirrors_about_half_the_images():
    count = 2000
    source = random_images(count, 2, 3, 5)
    options = ALL_OFF | dict(flip=True)
    flipped = augment.augment_batch(torch.from_numpy(source), **options, generator=seeded(2))
    same = (flipped.numpy() == source).all(axis=(1, 2, 3))
    mirrored = (flipped.numpy() == source[:, :, :, ::-1]).all(axis=(1, 2, 3))
    assert (same ^ mirrored).all()  # each output is its image or its mirror, never anything else
    assert 0.45 < mirrored.mean() < 0.55


@pytest.mark.parametrize("side", [4, 5])
def test_cutout_zeroes_exactly_the_clipped_square(side):
    count, height, width = 400, 8, 7
    source = random_images(count, 3, height, width)
    options = ALL_OFF | dict(cutout=side)
    cut = augment.augment_batch(torch.from_numpy(source), **options, generator=seeded(3)).numpy()
    rows, columns = draws_for(torch.from_numpy(source), 3, **options).cutout_centres.numpy()
    expected_zero = np.zeros((count, height, width), dtype=bool)
    for index, (row, column) in enumerate(zip(rows, columns, strict=True)):
        top, left = row - side // 2, column - side // 2
        expected_zero[index, max(0, top) : top + side, max(0, left) : left + side] = True
    zero = cut == 0
    assert (zero == expected_zero[:, None]).all()  # every channel, the square and nothing else
    assert (cut[~zero] == source[~zero]).all()
    area = expected_zero.sum(axis=(1, 2))
    assert area.max() == side * side and area.min() < side * side  # some squares were clipped
    assert {0, height - 1} <= set(rows) and {0, width - 1} <= set(columns)  # centres on borders


def test_cutout_at_a_corner_is_clipped_to_the_image():
    images = torch.ones(2, 1, 6, 6, dtype=torch.uint8)
    centres = torch.tensor([[0, 5], [0, 5]])  # image 0 at the top-left, image 1 bottom-right
    cut = augment.apply_augmentations(images, AugmentDraws(0, None, None, 4, centres), "reflect")
    expected = torch.ones(2, 1, 6, 6, dtype=torch.uint8)
    expected[0, :, 0:2, 0:2] = 0  # rows and columns [-2, 2) clipped to [0, 2)
    expected[1, :, 3:6, 3:6] = 0  # [3, 7) clipped to [3, 6)
    assert torch.equal(cut, expected)


def test_same_seed_same_batch_other_seed_other_batch():
    images = torch.from_numpy(random_images(64, 3, 8, 8))
    options = dict(flip=True, crop_padding=2, crop_padding_mode="reflect", cutout=3)
    first = augment.augment_batch(images, **options, generator=seeded(5))
    again = augment.augment_batch(images, **options, generator=seeded(5))
    other = augment.augment_batch(images, **options, generator=seeded(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, images)


def test_all_off_returns_the_input_and_draws_nothing():
    images = torch.from_numpy(random_images(4, 3, 5, 5))
    generator = seeded(7)
    state = generator.get_state()
    assert augment.augment_batch(images, **ALL_OFF, generator=generator) is images
    assert torch.equal(generator.get_state(), state)


def test_draws_follow_the_documented_order():
    count, height, width = 50, 7, 9
    generator = seeded(13)
    offsets = torch.randint(0, 2 * 3 + 1, (2, count), generator=generator)
    flipped = torch.rand(count, generator=generator) < 0.5
    rows = torch.randint(0, height, (count,), generator=generator)
    columns = torch.randint(0, width, (count,), generator=generator)
    draws = augment.draw_augmentations(
        count, height, width, flip=True, crop_padding=3, cutout=2, generator=seeded(13)
    )
    assert torch.equal(draws.crop_offsets, offsets)
    assert torch.equal(draws.flipped, flipped)
    assert torch.equal(draws.cutout_centres, torch.stack([rows, columns]))


def test_enabling_a_later_transform_keeps_the_earlier_draws():
    def draw(**options):
        return augment.draw_augmentations(300, 8, 8, **options, generator=seeded(8))

    crop_only = draw(flip=False, crop_padding=3, cutout=0)
    everything = draw(flip=True, crop_padding=3, cutout=4)
    assert torch.equal(crop_only.crop_offsets, everything.crop_offsets)
    flip_only = draw(flip=True, crop_padding=0, cutout=0)
    flip_and_cutout = draw(flip=True, crop_padding=0, cutout=4)
    assert torch.equal(flip_only.flipped, flip_and_cutout.flipped)
    assert not torch.equal(flip_only.flipped, everything.flipped)  # the crop drew first there


def test_layout_and_dtype_are_kept():
    images = torch.from_numpy(random_images(16, 3, 8, 8))
    options = dict(flip=True, crop_padding=2, crop_padding_mode="constant", cutout=3)
    for dtype in (torch.uint8, torch.float64):
        planar = images.to(dtype)
        packed = planar.contiguous(memory_format=torch.channels_last)
        from_planar = augment.augment_batch(planar, **options, generator=seeded(9))
        from_packed = augment.augment_batch(packed, **options, generator=seeded(9))
        assert from_planar.is_contiguous() and from_planar.dtype == dtype
        assert from_packed.is_contiguous(memory_format=torch.channels_last)
        assert from_packed.dtype == dtype
        assert torch.equal(from_planar, from_packed)


def test_an_empty_batch_stays_empty():
    images = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    options = dict(flip=True, crop_padding=2, crop_padding_mode="reflect", cutout=3)
    assert augment.augment_batch(images, **options, generator=seeded(0)).shape == images.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_batch_on_cuda_matches_the_numpy_reference():
    source = random_images(256, 3, 32, 32)
    images = torch.from_numpy(source).cuda().contiguous(memory_format=torch.channels_last)
    for padding_mode in ("reflect", "constant"):
        options = dict(flip=True, crop_padding=4, crop_padding_mode=padding_mode, cutout=8)
        augmented = augment.augment_batch(images, **options, generator=seeded(10, "cuda"))
        draws = augment.draw_augmentations(
            256, 32, 32, flip=True, crop_padding=4, cutout=8, generator=seeded(10, "cuda")
        )
        cpu_draws = AugmentDraws(
            4, draws.crop_offsets.cpu(), draws.flipped.cpu(), 8, draws.cutout_centres.cpu()
        )
        expected = numpy_reference(source, cpu_draws, padding_mode)
        assert augmented.is_cuda
        assert augmented.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(augmented.cpu().numpy(), expected)


# --- the streams --------------------------------------------------------------------------------


def first_draws(generator: torch.Generator) -> list[int]:
    return torch.randint(0, 2**30, (8,), generator=generator).tolist()


def test_epoch_generators_are_reproducible_and_independent():
    assert first_draws(augment.epoch_generator(3, 1, "cpu")) == first_draws(
        augment.epoch_generator(3, 1, "cpu")
    )
    streams = [
        first_draws(augment.epoch_generator(seed, epoch, "cpu"))
        for seed in (3, 4)
        for epoch in (0, 1, 2)
    ]
    # The run's own streams (train.generators): initialisation, shuffles, dropout.
    for seed in (3, 4):
        for state in np.random.SeedSequence(seed).generate_state(3):
            streams.append(first_draws(torch.Generator().manual_seed(int(state))))
    assert len({tuple(stream) for stream in streams}) == len(streams)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        (dict(crop_padding=8), ["crop_padding", "0 to 7", "8x9", "reflect"]),
        (dict(crop_padding=9, crop_padding_mode="constant"), ["crop_padding", "0 to 8"]),
        (
            dict(crop_padding=2, crop_padding_mode="wrap"),
            ["crop_padding_mode", "'wrap'", "reflect"],
        ),
        (dict(crop_padding=-1), ["crop_padding", "0 to 7"]),
        (dict(cutout=-2), ["cutout", "0 to 8"]),
        (dict(cutout=9), ["cutout", "0 to 8"]),
    ],
)
def test_bad_options_are_one_line_errors(changes, names):
    images = torch.zeros(2, 3, 8, 9, dtype=torch.uint8)
    with pytest.raises(CnnlabError) as raised:
        augment.augment_batch(images, **ALL_OFF | changes, generator=seeded(0))
    message = str(raised.value)
    assert "\n" not in message
    assert all(name in message for name in names), message


def test_constant_padding_may_be_as_wide_as_the_image():
    """(Wider is refused: the padded batch's memory stays bounded by the images' size.)"""
    images = torch.from_numpy(random_images(3, 1, 2, 2))
    options = ALL_OFF | dict(crop_padding=2, crop_padding_mode="constant")
    cropped = augment.augment_batch(images, **options, generator=seeded(0))
    draws = draws_for(images, 0, **options)
    np.testing.assert_array_equal(
        cropped.numpy(), numpy_reference(images.numpy(), draws, "constant")
    )


def test_unknown_tta_mode_is_a_one_line_error():
    with pytest.raises(CnnlabError, match=r"^tta: unknown mode 'rotate'; expected one of none"):
        augment.tta_logits(lambda images: images, torch.zeros(1, 1, 4, 4), "rotate")


# --- test-time augmentation ---------------------------------------------------------------------


def small_net() -> nn.Module:
    """A conv net in eval mode that is not mirror- or translation-invariant, in float64."""
    generator = torch.Generator().manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 7, 5),
    ).double()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
        net[1].running_mean.copy_(torch.randn(4, generator=generator, dtype=torch.float64))
        net[1].running_var.copy_(torch.rand(4, generator=generator, dtype=torch.float64) + 0.5)
    return net.eval()


def test_tta_logits_match_explicit_compositions():
    net = small_net()
    source = np.random.default_rng(12).random((5, 3, 6, 7))
    images = torch.from_numpy(source)

    def logits(array: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(np.ascontiguousarray(array))).detach().numpy()

    def mirror_mean(array: np.ndarray) -> np.ndarray:
        return (logits(array) + logits(array[:, :, :, ::-1])) / 2

    padded = np.pad(source, ((0, 0), (0, 0), (1, 1), (1, 1)), "reflect")
    shifted_down_right = padded[:, :, :6, :7]  # pixel (y, x) shows the image's (y - 1, x - 1)
    shifted_up_left = padded[:, :, 2:, 2:]
    expected = {
        "none": logits(source),
        "flip": mirror_mean(source),
        "flip-translate": mirror_mean(source) / 2
        + (mirror_mean(shifted_down_right) + mirror_mean(shifted_up_left)) / 4,
    }
    with torch.no_grad():
        got = {mode: augment.tta_logits(net, images, mode).numpy() for mode in expected}
        assert torch.equal(augment.tta_logits(net, images, "none"), net(images))
    for mode in expected:
        np.testing.assert_allclose(got[mode], expected[mode], rtol=1e-12, atol=1e-12)
    # The net sees the difference, so the comparisons above could have failed.
    assert not np.allclose(got["none"], got["flip"])
    assert not np.allclose(got["flip"], got["flip-translate"])
    np.testing.assert_array_equal(shifted_down_right[:, :, 1:, 1:], source[:, :, :-1, :-1])


@pytest.mark.parametrize("mode", TTA_MODES)
def test_tta_feeds_the_net_its_views_in_the_layout_it_was_given(mode):
    net = small_net()
    images = torch.rand(4, 3, 6, 7, dtype=torch.float64)
    seen = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.stride())
        return net(batch)

    packed = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        from_packed = augment.tta_logits(forward, packed, mode)
        np.testing.assert_allclose(
            from_packed.numpy(), augment.tta_logits(net, images, mode).numpy()
        )
    assert seen == [packed.stride()] * TTA_VIEWS[mode]
    assert set(TTA_VIEWS) == set(TTA_MODES)
