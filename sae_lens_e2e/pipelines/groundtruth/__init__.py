"""The ground-truth study: a model whose functionally important features are known
(`model.py`) and the local / e2e / e2e_ds sweep scored against them (`study.py`)."""
