"""Training: configs, the e2e SAE architectures, splicing, loss terms, trainer, runner."""
