"""The paper's experiments: Figure 1, the ablations, Figures 3 and 4, and the run report."""
