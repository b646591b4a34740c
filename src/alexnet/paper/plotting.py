"""matplotlib for the commands that draw PNGs (figure1, ablate, figures, report)."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the Agg backend (files, no screen), imported on first use: the command
    line imports every command module to build its parser, and pyplot costs a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
