"""Per-job stage timing and aggregate percentiles per stage over a time window."""
