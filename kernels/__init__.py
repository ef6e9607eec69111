"""Triton kernels for the SAE hot path (no SAELens import)."""
