"""Images -> features: input checks, preprocessing (compat modes), the networks (Inception, DINOv2), weights."""
