"""A run on disk: checkpoints (checkpoint.py), the run folder and its files (folder.py), and reading a
checkpoint into a ready network (load.py)."""
