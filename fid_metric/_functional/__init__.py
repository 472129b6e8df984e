"""Numbers from features and statistics: mean and covariance, the Fréchet distance, KID, Precision/Recall."""
