"""Starting, stopping and measuring local processes: shared by the tests and the benchmarks."""
