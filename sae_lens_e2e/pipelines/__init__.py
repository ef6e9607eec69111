"""Pipelines: the commands that wire a model, SAEs, training, evaluation and a report together
(quickstart, evaluate), and the pieces they share (the tiny LM, the token store, output folders).
They sit above analysis/, training/ and loading/ and nothing below imports them."""
