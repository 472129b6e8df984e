"""Features -> states: the accumulators and what happens to their states at every boundary (sync, checkpoint, merge)."""
