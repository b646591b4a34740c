"""From files to network input: image decoding, CIFAR-10 and ImageNet sources, the prepared shards, the
datasets and their batches, uint8 augmentation, the input pipeline and the test views."""
