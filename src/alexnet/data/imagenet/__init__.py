"""ILSVRC-2012 and any ImageFolder: the sources (sources.py), the prepare step (prepare.py) and the
prepared shard format (shards.py)."""
