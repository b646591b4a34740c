"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012): the paper's network, data, training and evaluation."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .model import AlexNet, ModelConfig

__all__ = ["AlexNet", "ModelConfig", "load_checkpoint", "load_model", "save_checkpoint"]
__version__ = "0.1.0"
