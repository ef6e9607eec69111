"""Training: configs, the e2e SAE architectures, splicing, loss terms, trainer, runner, and the
evaluation the runner and every pipeline share (CE / KL / L0 / alive / explained variance)."""
