"""Training: the data, the session, the loop, fused groups and evaluation."""
