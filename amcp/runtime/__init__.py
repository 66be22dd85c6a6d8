"""Runtime kernel: supervision tree, lifecycle, configuration, logging, metrics, sd_notify."""
