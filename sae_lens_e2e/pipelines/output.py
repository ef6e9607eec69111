"""A pipeline's report folder: new, empty, or (with --overwrite) one the same pipeline wrote,
never a folder holding anything it did not write."""

from __future__ import annotations

from pathlib import Path

from sae_lens_e2e.analysis.report import REPORT_JSON
from sae_lens_e2e.atomic import unexpected_entries
from sae_lens_e2e.preflight import check_writable


def check_output_dir(out: Path, overwrite: bool, entries: set[str], name: str) -> None:
    """`out` may be new or empty or, to be replaced, a `name` report (of `entries` only)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    check_writable(out.absolute().parent, "output folder", "choose one you can write to")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = unexpected_entries(out, entries)
    if foreign:
        raise FileExistsError(
            f"output directory {out} holds {', '.join(foreign)}, which the {name} did not "
            "write; not replacing it (choose another --out, or move them)"
        )
    if not (out / REPORT_JSON).is_file():
        raise FileExistsError(
            f"output directory {out} is not a {name} report (no {REPORT_JSON}); not "
            "replacing it (choose another --out)"
        )
    if not overwrite:
        raise FileExistsError(
            f"output directory {out} already holds a {name} report; pass --overwrite to replace it"
        )
