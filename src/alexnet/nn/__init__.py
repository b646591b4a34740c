"""The network: AlexNet and its switches (model.py), local response normalisation (lrn.py), the paper's
two-device split (towers.py)."""
