"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012): the paper's network, data, training and evaluation."""

from .checkpoint import load_checkpoint, save_checkpoint
from .model import AlexNet, ModelConfig
from .predict import features
from .run import load_model, load_run

__all__ = ["AlexNet", "ModelConfig", "features", "load_checkpoint", "load_model", "load_run", "save_checkpoint"]
__version__ = "0.1.0"
