"""Analysis: decoder/encoder geometry and the report (table, comparisons, plots)."""
