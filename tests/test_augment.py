import torch

from alexnet.data.augment import center_crop, flip_lr, normalize, random_crop


def index_images(n=6, size=8):
    """Image i has pixel value (row * size + col) in channel 0, i in channel 1, 7 in channel 2."""
    pos = torch.arange(size * size).view(size, size)
    imgs = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    imgs[:, 0] = pos
    imgs[:, 1] = torch.arange(n).view(n, 1, 1)
    imgs[:, 2] = 7
    return imgs


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


def test_random_crop_with_padding_shifts_in_zeros():
    imgs = index_images(n=64, size=8) + 1  # no zero pixels inside the image
    out = random_crop(imgs, 8, 2, torch.Generator().manual_seed(0))
    zeros = (out[:, 2] == 0).flatten(1).sum(1)
    assert out.shape == imgs.shape and (zeros > 0).any() and (zeros == 0).any()


def test_crop_is_seeded():
    imgs = index_images(n=16)
    a = random_crop(imgs, 6, 1, torch.Generator().manual_seed(3))
    b = random_crop(imgs, 6, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


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
