"""Compare two Gauntlet results folders row by row, column by column (e.g. runner=ray vs runner=local).

Usage: python scripts/compare_results.py A B   → exit 0 when every column of every row is identical.
"""

from __future__ import annotations

import sys

import pyarrow.dataset as ds

KEY = [("task_id", "ascending"), ("level", "ascending"), ("sample_id", "ascending")]


def main(a: str, b: str) -> int:
    ta = ds.dataset(f"{a}/results", format="parquet").to_table().sort_by(KEY)
    tb = ds.dataset(f"{b}/results", format="parquet").to_table().sort_by(KEY)
    if ta.num_rows != tb.num_rows or ta.column_names != tb.column_names:
        print(f"different shapes: {ta.num_rows} vs {tb.num_rows} rows, {ta.column_names} vs {tb.column_names}")
        return 1
    differ = [c for c in ta.column_names if not ta[c].equals(tb[c])]
    print(f"{ta.num_rows} rows × {len(ta.column_names)} columns; differing columns: {differ or 'none'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
