"""faasx benchmarks: faasx side by side with Parsl's HighThroughputExecutor (see README.md)."""
