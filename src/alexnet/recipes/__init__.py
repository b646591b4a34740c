"""The recipes: TOML files of the run config (``alexnet train --recipe NAME``)."""
