"""data.pca_scale: PCA lighting's shift per unit alpha, this project's sqrt(lambda) against fb.resnet.torch's lambda."""

from types import SimpleNamespace

import pytest
import torch

from alexnet.config import DataConfig, RunConfig, build_config, read_recipe
from alexnet.data.augment import pca_lighting
from alexnet.data.pipeline import pipeline_for
from alexnet.errors import UsageError

# fb.resnet.torch's ImageNet PCA: eigenvalues of 0..1-scale RGB pixels, eigenvectors as columns.
FB_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
FB_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def imagenet_lighting(scale: str):
    """The lighting ``pipeline_for`` builds from prepared statistics whose covariance (0..255) has fb's PCA."""
    stats = {"eigval": FB_EIGVAL * 255**2, "eigvec": FB_EIGVEC, "mean_image": torch.zeros(3, 8, 8)}
    config = RunConfig(data=DataConfig(dataset="imagenet", pca_scale=scale))
    return pipeline_for(config, SimpleNamespace(stats=stats)).lighting


def test_magnitudes_per_unit_alpha():
    sqrt, fb = imagenet_lighting("sqrt"), imagenet_lighting("fb")
    torch.testing.assert_close(sqrt.magnitude, FB_EIGVAL.sqrt() * 255)  # 118.9, 35.0, 17.1 levels
    torch.testing.assert_close(fb.magnitude, FB_EIGVAL * 255)  # 55.5, 4.8, 1.1 levels
    assert round(sqrt.magnitude[0].item(), 1) == 118.9 and round(fb.magnitude[0].item(), 1) == 55.5


@pytest.mark.parametrize("scale", ["sqrt", "fb"])
def test_shift_along_each_component_has_sigma_times_the_magnitude(scale):
    lighting = imagenet_lighting(scale)
    n = 20_000
    shift = pca_lighting(torch.zeros(n, 3, 1, 1), lighting.magnitude, lighting.eigvec,
                         torch.Generator().manual_seed(0), lighting.sigma)[:, :, 0, 0]
    along = shift.double() @ FB_EIGVEC.double()  # coordinates along p_i
    torch.testing.assert_close(along.std(0), lighting.sigma * lighting.magnitude.double(), rtol=0.03, atol=0)


def test_pca_scale_is_validated():
    assert DataConfig().pca_scale == "sqrt"
    with pytest.raises(ValueError, match="data.pca_scale must be one of sqrt, fb"):
        DataConfig(pca_scale="lambda")
    assert build_config(read_recipe("cifar10"), ["data.pca_scale=fb"]).data.pca_scale == "fb"
    with pytest.raises(UsageError, match="pca_scale"):
        build_config(read_recipe("cifar10"), ["data.pca_scale='eig'"])
