"""The offline quickstart: a tiny language model and the local / e2e / e2e_ds sweep on it."""
