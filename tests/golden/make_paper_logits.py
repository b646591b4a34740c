"""Writes paper_logits.safetensors, the golden output test_model.py checks the paper network against:
the logits of two fixed images and the first 1,024 pool5 features (at the paper's init the logits
hardly depend on the image, so the features pin conv1-pool5 more tightly).

Run it only when the network is meant to change (and say why in the commit):
    .venv/bin/python tests/golden/make_paper_logits.py
The logits were first written by the network of commit 927f476.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from alexnet import AlexNet, ModelConfig

SEED, INPUT_SEED = 0, 1
GOLDEN = Path(__file__).with_name("paper_logits.safetensors")


def golden_input() -> torch.Tensor:
    """Two 224x224 images on the paper's input scale (0..255 minus the mean: std about 60)."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(INPUT_SEED)) * 60


def paper_outputs() -> dict[str, torch.Tensor]:
    """{"logits": (2, 1000), "pool5": (2, 1024)} of the paper's network at seed SEED, in eval mode."""
    torch.manual_seed(SEED)
    model = AlexNet(ModelConfig()).eval()  # the paper's network and init; no dropout at test time
    x = golden_input()
    with torch.no_grad():
        return {"logits": model(x).contiguous(), "pool5": model.features(x, "pool5")[:, :1024].contiguous()}


if __name__ == "__main__":
    save_file(paper_outputs(), str(GOLDEN), metadata={"seed": str(SEED), "input_seed": str(INPUT_SEED)})
    print(GOLDEN)
