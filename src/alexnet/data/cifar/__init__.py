"""CIFAR-10: where it comes from (source.py), decoding it (decode.py), loading and caching it (load.py)."""
