"""End-to-end SAE training for SAELens."""
