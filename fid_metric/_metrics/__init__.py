"""The torchmetrics Metrics: their configuration, update() through the accumulators, and compute()."""
