"""Analysis: evaluation of spliced SAEs, decoder/encoder geometry, the report."""
