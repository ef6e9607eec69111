"""Loading: the reference (e2e_sae) checkpoint format, wandb / Hugging Face fetching, the paper's SAEs."""
