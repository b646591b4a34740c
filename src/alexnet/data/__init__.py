"""Datasets: CIFAR-10 and ImageNet loaders, the prepared shard format and batch augmentation."""
