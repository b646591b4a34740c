"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012): the paper's network, data, training and evaluation.

The Python API: ``AlexNet(ModelConfig())`` is the paper's network; ``features(model, x, layer)`` its
activations at any stage; ``save_checkpoint(path, model)`` writes a checkpoint every command accepts;
``load_model(path)`` and ``load_run(path)`` read any checkpoint (the network alone, or with its config,
classes and preprocessing).
"""

from .nn.model import AlexNet, ModelConfig, features
from .runs.checkpoint import load_checkpoint, save_checkpoint
from .runs.load import load_model, load_run

__all__ = ["AlexNet", "ModelConfig", "features", "load_checkpoint", "load_model", "load_run", "save_checkpoint"]
__version__ = "0.1.0"
