"""Speed against a baseline measured in the same run: the data path, the model, a recipe end to end."""
