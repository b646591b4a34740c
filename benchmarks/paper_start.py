"""Why the paper's recipe sits flat on few classes: its start, measured on real photos.

    .venv/bin/python benchmarks/paper_start.py --data DIR [--images 256] [--lr 0.01]

DIR is a prepared folder or an ImageFolder (e.g. the CIFAR-10 photos prepared at 256). With the
paper's init (weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7) and the paper's input
(0..255 minus the mean image), fc7's units are nearly the same for every image: about their bias
of 1, the image moving them by a few per cent. Call u the mean fc7 vector over the images. The
training loss, as a function of fc8's weights, curves along the direction that moves every logit
of one class by the same amount (the class prior) with curvature about |u|^2 / K for K classes at
a near-uniform softmax; SGD with momentum m is stable along it only while lr * |u|^2 / K < 2 (1 + m).
This script measures |u|^2 on real images and prints, per class count, lr * curvature against that
bound (the ratio) and the largest stable learning rate: the baseline is the bound itself, the
paper's lr 0.01 on ILSVRC's 1,000 classes sits far below it, and on 10 classes above it. Also per
layer: how much of each unit's activity varies from image to image (the signal the net must learn
from). One JSON line on stdout.
"""

import argparse
import json

import torch

from alexnet.config import build_config, read_recipe
from alexnet.data.datasets import load_dataset
from alexnet.data.pipeline import pipeline_for
from alexnet.nn.model import AlexNet

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args()
    config = build_config(read_recipe("paper"), [f"data.path={json.dumps(args.data)}", "model.dropout=0"])
    torch.manual_seed(0)
    data = load_dataset(config.data, config.seed)
    images = data.train_images[torch.randperm(len(data.train_labels))[:args.images]]
    x = pipeline_for(config, data).train(images, torch.Generator().manual_seed(0))
    model = AlexNet(build_config(read_recipe("paper"), ["model.dropout=0", "model.num_classes=1000"]).model).eval()
    outputs = {}
    for name in LAYERS:
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    with torch.no_grad():
        model(x)
    fc7 = torch.relu(outputs["fc7"]).flatten(1).double()
    mean_norm2 = float(fc7.mean(0).square().sum())
    bound = 2 * (1 + args.momentum)
    result = {"images": len(x), "fc7_units": fc7.shape[1], "fc7_mean_vector_norm2": round(mean_norm2, 1),
              "fc7_image_dependent_fraction": round(float(fc7.std(0).mean() / fc7.mean()), 4),
              "stability_bound": bound, "lr": args.lr, "classes": {}}
    for classes in (2, 10, 20, 50, 100, 1000):
        curvature = mean_norm2 / classes
        result["classes"][classes] = {"lr_x_curvature_vs_bound": round(args.lr * curvature / bound, 3),
                                      "largest_stable_lr": round(bound / curvature, 5)}
    result["signal"] = {name: round(float(outputs[name].flatten(1).std(0).mean() /
                                          outputs[name].flatten(1).std()), 4) for name in LAYERS}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
