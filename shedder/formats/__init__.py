"""Files other tools or runs read: the reference code's pruning config, cached results, tour files."""
