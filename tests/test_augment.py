import pytest
import torch

from alexnet.data.augment import (
    TEN_CROP_ORDER,
    center_crop,
    crop_at,
    flip_lr,
    flip_where,
    normalize,
    pca_lighting,
    random_crop,
    random_crop_offsets,
    random_flips,
    subtract_mean_image,
    ten_crop,
)
from fixtures import index_images


def test_random_crop_takes_contiguous_windows_and_keeps_images_apart():
    imgs = index_images(n=32, size=8)
    out = random_crop(imgs, 5, 0, torch.Generator().manual_seed(1))
    assert out.shape == (32, 3, 5, 5) and out.dtype == torch.uint8
    for i in range(32):
        top, left = divmod(int(out[i, 0, 0, 0]), 8)
        assert torch.equal(out[i, 0], imgs[i, 0, top:top + 5, left:left + 5])
        assert torch.all(out[i, 1] == i) and torch.all(out[i, 2] == 7)
    corners = {int(out[i, 0, 0, 0]) for i in range(32)}
    assert len(corners) > 5 and max(c // 8 for c in corners) <= 3 and max(c % 8 for c in corners) <= 3


def test_random_crop_with_padding_is_a_window_of_the_zero_padded_image():
    imgs = index_images(n=64, size=8) + 1  # no zero pixels inside the image: zero means padding
    out = random_crop(imgs, 8, 2, torch.Generator().manual_seed(0))
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    shifts = set()
    for i in range(64):
        inside = out[i, 0].nonzero()[0]  # one pixel that came from the image: its code says where
        row, col = divmod(int(out[i, 0, inside[0], inside[1]]) - 1, 8)
        dy, dx = row - int(inside[0]), col - int(inside[1])  # window offset in image coordinates, -2..2
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        for r in range(8):  # every pixel: the image pixel at (r + dy, c + dx), or zero outside it
            for c in range(8):
                y, x = r + dy, c + dx
                want = (y * 8 + x + 1, i + 1, 8) if 0 <= y < 8 and 0 <= x < 8 else (0, 0, 0)
                assert tuple(out[i, :, r, c].tolist()) == want
        shifts.add((dy, dx))
    assert (0, 0) in shifts and len(shifts) > 10  # 25 possible windows, the unshifted one among them


def test_crop_is_seeded():
    imgs = index_images(n=16)
    a = random_crop(imgs, 6, 1, torch.Generator().manual_seed(3))
    b = random_crop(imgs, 6, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, random_crop(imgs, 6, 1, torch.Generator().manual_seed(4)))


def test_flip_lr_mirrors_some_images_exactly():
    imgs = index_images(n=64)
    out = flip_lr(imgs, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], imgs[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], imgs[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48


def test_center_crop_and_normalize():
    imgs = index_images(n=2, size=8)
    assert int(center_crop(imgs, 4)[0, 0, 0, 0]) == 2 * 8 + 2
    out = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_random_crop_offsets_cover_every_window_uniformly_and_are_seeded():
    dy, dx = random_crop_offsets(4000, 8, 10, 5, torch.Generator().manual_seed(4))
    assert dy.shape == dx.shape == (4000,) and dy.dtype == dx.dtype == torch.int64 and dy.device.type == "cpu"
    assert dy.min() == 0 and dy.max() == 3 and dx.min() == 0 and dx.max() == 5  # 8 - 5 and 10 - 5: all windows
    assert dy.bincount().min() > 4000 / 4 * 0.85 and dx.bincount().min() > 4000 / 6 * 0.85  # about uniform
    again = random_crop_offsets(4000, 8, 10, 5, torch.Generator().manual_seed(4))
    assert torch.equal(dy, again[0]) and torch.equal(dx, again[1])
    assert random_crop_offsets(3, 8, 8, 8, torch.Generator())[0].tolist() == [0, 0, 0]  # the whole image
    with pytest.raises(ValueError, match="crop size 9 is larger than the 8x8 images"):
        random_crop_offsets(3, 8, 8, 9, torch.Generator())


def test_crop_at_cuts_each_image_at_its_own_offset():
    imgs = index_images(n=5, size=8)
    dy, dx = torch.tensor([0, 3, 0, 3, 1]), torch.tensor([0, 0, 3, 3, 2])
    out = crop_at(imgs, dy, dx, 5)
    assert out.shape == (5, 3, 5, 5) and out.dtype == torch.uint8
    for i in range(5):
        top, left = divmod(int(out[i, 0, 0, 0]), 8)  # the window's top-left pixel says where it was cut
        assert (top, left) == (int(dy[i]), int(dx[i]))
        rows, cols = torch.arange(5)[:, None], torch.arange(5)[None, :]
        assert torch.equal(out[i, 0], ((top + rows) * 8 + left + cols).to(torch.uint8))
        assert torch.all(out[i, 1] == i) and torch.all(out[i, 2] == 7)
    one = crop_at(imgs[2], dy, dx, 5)  # one (C, H, W) image, such as the mean image: cut at every offset
    assert one.shape == (5, 3, 5, 5) and torch.all(one[:, 1] == 2)
    assert [divmod(int(v), 8) for v in one[:, 0, 0, 0]] == list(zip(dy.tolist(), dx.tolist()))


def test_mean_image_is_cut_at_the_same_window_as_each_crop_and_mirrored_with_it():
    imgs = index_images(n=16, size=8)
    mean_image = imgs[0].float() + 0.5  # same position code in channel 0 as every image
    generator = torch.Generator().manual_seed(2)
    dy, dx = random_crop_offsets(16, 8, 8, 5, generator)
    flip = random_flips(16, generator)
    crops = flip_where(crop_at(imgs, dy, dx, 5), flip)
    mean_crops = flip_where(crop_at(mean_image, dy, dx, 5), flip)
    out = subtract_mean_image(crops, mean_crops)
    assert mean_crops.shape == (16, 3, 5, 5) and out.dtype == torch.float32
    assert torch.all(out[:, 0] == -0.5)  # every pixel met its own mean pixel
    assert flip.any() and not flip.all()
    for i in range(16):  # subtract at full size, then cut and mirror with plain slicing: the paper's order
        full = imgs[i].double() - mean_image.double()
        window = full[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5]
        expected = window.flip(-1) if flip[i] else window
        assert torch.equal(out[i].double(), expected)
        top, left = divmod(int(crops[i, 0, 0, -1 if flip[i] else 0]), 8)  # the pixels say where, and if mirrored
        assert (top, left) == (int(dy[i]), int(dx[i]))
        assert 0 <= top <= 3 and 0 <= left <= 3 and torch.all(out[i, 1] == i - 0.5)


def test_flip_lr_mirrors_the_images_whose_seeded_draw_is_below_p():
    import numpy as np

    imgs = index_images(n=32)
    out = flip_lr(imgs, torch.Generator().manual_seed(5)).numpy()
    draws = torch.rand(32, generator=torch.Generator().manual_seed(5)).numpy()  # one uniform draw per image
    for i, image in enumerate(imgs.numpy()):
        expected = image[:, :, ::-1] if draws[i] < 0.5 else image  # numpy's own reversal of the columns
        assert np.array_equal(out[i], expected)
        assert (out[i][0, 0, 0] == 7) == (draws[i] < 0.5)  # the position code says which were mirrored
    assert not flip_lr(imgs, torch.Generator(), p=0.0).ne(imgs).any()
    assert torch.equal(flip_lr(imgs, torch.Generator(), p=1.0), imgs.flip(-1))


def test_ten_crop_gives_corners_centre_and_their_mirrors_image_major():
    imgs = index_images(n=3, size=8)
    out = ten_crop(imgs, 5)
    assert out.shape == (30, 3, 5, 5) and out.dtype == torch.uint8 and len(TEN_CROP_ORDER) == 10
    top_left = [0, 3, 3 * 8, 3 * 8 + 3, 1 * 8 + 1]  # (row * 8 + col) of tl, tr, bl, br, centre
    for i in range(3):
        for j in range(5):
            r, c = divmod(top_left[j], 8)
            window = imgs[i, :, r:r + 5, c:c + 5]
            assert torch.equal(out[10 * i + j], window)
            assert torch.equal(out[10 * i + 5 + j], window.flip(-1))
        assert torch.all(out[10 * i:10 * i + 10, 1] == i)
    with pytest.raises(ValueError, match="crop size 9 is larger"):
        ten_crop(imgs, 9)


def test_pca_lighting_adds_one_rgb_offset_per_image():
    x = torch.rand(8, 3, 4, 5) * 255
    eigval, eigvec = torch.tensor([50.0, 5.0, 1.0]), torch.linalg.qr(torch.randn(3, 3))[0]
    out = pca_lighting(x, eigval, eigvec, torch.Generator().manual_seed(0))
    shift = out - x
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))  # same for every pixel
    assert len({tuple(s.tolist()) for s in shift[:, :, 0, 0].round(decimals=3)}) == 8  # differs per image
    again = pca_lighting(x, eigval, eigvec, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, pca_lighting(x, eigval, eigvec, torch.Generator().manual_seed(1)))


def test_pca_lighting_offsets_have_the_pca_covariance():
    n, sigma = 20000, 2.0
    eigval, eigvec = torch.tensor([3.0, 2.0, 0.5]), torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    shift = pca_lighting(torch.zeros(n, 3, 1, 1), eigval, eigvec, torch.Generator().manual_seed(7), sigma)[:, :, 0, 0]
    cov = shift.double().T.cov()  # expected: P diag(lambda^2 sigma^2) P^T, i.e. diagonal in the eigenbasis
    torch.testing.assert_close(eigvec.T @ cov @ eigvec, torch.diag((eigval.double() * sigma) ** 2), atol=0.6, rtol=0.05)
    assert shift.mean(0).abs().max() < 0.15  # sd of the mean is at most 6 / sqrt(20000) = 0.04


def test_cpu_crop_and_flip_fast_paths_equal_the_gather_and_select():
    from alexnet.data.augment import crop_at, flip_where

    g = torch.Generator().manual_seed(0)
    for images in (torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8),
                   torch.randint(0, 256, (6, 20, 20, 3), dtype=torch.uint8).permute(0, 3, 1, 2)):
        dy, dx = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
        flip = torch.rand(6, generator=g) < 0.5
        rows = (dy[:, None] + torch.arange(16))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(16))[:, None, None, :]
        gathered = images[torch.arange(6)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
        crops = crop_at(images, dy, dx, 16)
        assert torch.equal(crops, gathered)
        selected = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        assert torch.equal(flip_where(crops, flip), selected)
