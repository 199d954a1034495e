"""Where results go: Parquet files (the record), the terminal summary, later wandb, plots and reports."""
