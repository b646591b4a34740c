"""Training: the loop (loop.py), one step (step.py), the schedule, what changes between epochs
(curriculum.py), what a checkpoint carries to continue (state.py), stopping (stop.py), stuck runs (stall.py)."""
