"""Where a finished sweep is shown: the terminal summary, plots, the HTML report, Weights & Biases."""
