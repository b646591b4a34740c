"""PCA lighting's two readings on real photos: how far each moves a pixel.

Decodes every image in a folder the way `alexnet prepare` stores it (shorter side 256, centre
256x256; `decode_stored`), takes the 3x3 RGB covariance of all their pixels on the 0..255 scale,
and prints, for `data.pca_scale=sqrt` (this project: sqrt(lambda_i)) and `fb` (fb.resnet.torch:
lambda_i of 0..1 pixels), the shift per unit alpha along each principal component and the RMS
shift of a pixel at the paper's sigma 0.1, in levels of 0..255. One JSON line.

    .venv/bin/python benchmarks/pca_scale.py ../shared/data/imagenet-samples
"""

import argparse
import json
import math
from pathlib import Path

import torch

from alexnet.data.augment import rgb_eigen
from alexnet.data.decode import decode_stored, is_image_name
from alexnet.data.pipeline import lighting_magnitude

FB_EIGVAL = (0.2175, 0.0188, 0.0045)  # fb.resnet.torch's ImageNet eigenvalues, 0..1 pixels (descending)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sigma", type=float, default=0.1, help="alpha's standard deviation (the paper's 0.1)")
    args = parser.parse_args()
    files = sorted(p for p in args.folder.rglob("*") if p.is_file() and is_image_name(p.name))
    images, skipped = [], []
    for path in files:
        try:
            images.append(decode_stored(path.read_bytes()))
        except Exception as error:  # noqa: BLE001 - a bad file is reported, not fatal
            skipped.append(f"{path.name}: {error}")
    eigval, _ = rgb_eigen(torch.stack(images))
    eigval = eigval.flip(0)  # descending, as fb lists them
    result = {"folder": str(args.folder), "images": len(images), "skipped": skipped, "sigma": args.sigma,
              "eigval_0_1_scale": [round(v, 4) for v in (eigval / 255**2).tolist()], "fb_eigval_imagenet": FB_EIGVAL}
    for scale in ("sqrt", "fb"):
        magnitude = lighting_magnitude(eigval, scale)
        result[f"{scale}_levels_per_unit_alpha"] = [round(v, 1) for v in magnitude.tolist()]
        result[f"{scale}_rms_shift_levels"] = round(args.sigma * math.sqrt(float((magnitude ** 2).sum())), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
