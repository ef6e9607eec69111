"""`sae-lens-e2e export`: SAELens SAE folders -> a reference e2e_sae checkpoint."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from sae_lens_e2e.cli.convert import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `export` (SAELens -> reference)."""
    p = subparsers.add_parser(
        "export",
        help="export SAELens SAE folders to the reference e2e_sae state-dict format",
        description="Write SAELens standard SAE(s) as a reference .pt state dict plus a "
        "final_config.yaml, loadable by e2e_sae's SAETransformer.from_local_path.",
    )
    p.add_argument("sae_dirs", nargs="+", type=Path, metavar="SAE_DIR", help="SAELens folder(s)")
    p.add_argument("--out", required=True, type=Path, help="output .pt (e.g. samples_0.pt)")
    p.add_argument("--config-out", type=Path, help="config path (default: final_config.yaml "
                   "beside --out)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from sae_lens_e2e.loading.export import export_reference_checkpoint
    from sae_lens_e2e.loading.reference_format import E2EConversionError
    from sae_lens_e2e.sae_files import load_sae_folder

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            saes = []
            for d in args.sae_dirs:
                if not (d / "cfg.json").is_file():
                    raise E2EConversionError(f"{d}: not a SAELens folder (no cfg.json)")
                saes.append(load_sae_folder(d))
            pt, cfg = export_reference_checkpoint(saes, args.out, args.config_out, args.overwrite)
    except E2EConversionError as e:
        return fail(str(e))
    for line in notes(caught):
        print(f"sae-lens-e2e export: note: {line}", file=sys.stderr)
    print(f"wrote {pt} and {cfg}")
    return 0


def notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Warnings raised while exporting, as one line each (no source line, no category).
    SAELens's advice to load the model with the SAE's kwargs concerns using the SAE, not
    exporting it, and is left out."""
    lines = []
    for warning in caught:
        text = " ".join(str(warning.message).split())
        if not text.startswith("This SAE has non-empty model_from_pretrained_kwargs"):
            lines.append(text)
    return list(dict.fromkeys(lines))
