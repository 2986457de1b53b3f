"""Studies built on the library: the statistical benchmark, configuration search, comparisons, throughput, the demo."""
