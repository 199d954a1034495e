"""Store: the run folder — out_dir and its lock, the Parquet result store, compaction, readers."""
