"""`sae-lens-e2e convert`: reference e2e checkpoints (local, wandb, Hugging Face) -> SAELens."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

CONVERT_EPILOG = textwrap.dedent(
    """\
    SOURCE is one of:
      CHECKPOINT.pt                       a local reference checkpoint; its config is --config,
                                          else final_config.yaml or CHECKPOINT.yaml beside it
      wandb:ENTITY/PROJECT/RUN_ID         the run's highest samples_<N>.pt + final_config.yaml
                                          (e.g. wandb:sparsify/gpt2/tvj2owza)
      hf:ORG/REPO/STEM                    STEM.pt + STEM.yaml on the Hugging Face hub, e.g.
                                          hf:apollo-research/e2e-saes-gpt2/e2e_similar_ce_layer_6
      paper:TYPE/LAYER[/SELECTION]        a paper SAE by name, from the Hugging Face file
                                          holding its run, else from wandb
                                          (e.g. paper:e2e/6/similar_ce; TYPE local|e2e|e2e+ds)

    Writes OUT/NAME/<hook_name>/cfg.json + sae_weights.safetensors for every SAE in the
    checkpoint, loadable with sae_lens.SAE.load_from_disk. NAME says which run it is: the
    wandb run id (also for paper:), the hub file STEM; for a local CHECKPOINT.pt its file
    name without .pt, unless that is the generic samples_<N>.pt of every reference run: then
    the run name in its final_config.yaml (wandb_run_name), else the folder holding it, else
    a short hash of the file. --name NAME chooses it. --overwrite replaces a conversion of
    the same source only. Offline: --local-dir DIR holding the files.
    """
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `convert` (reference -> SAELens)."""
    p = subparsers.add_parser(
        "convert",
        help="convert a published / reference e2e SAE checkpoint to SAELens folders",
        description="Convert an e2e_sae checkpoint (local, wandb or Hugging Face) to SAELens.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", metavar="SOURCE", help="checkpoint path, wandb:..., hf:... or paper:..."
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output directory (SAEs go to OUT/NAME/)"
    )
    p.add_argument("--config", type=Path, help="final_config.yaml for a local checkpoint")
    p.add_argument("--local-dir", type=Path, help="already-downloaded run files (no network)")
    p.add_argument("--cache-dir", type=Path, help="download cache (default $SAE_LENS_E2E_CACHE "
                   "or ~/.cache/sae_lens_e2e)")  # fmt: skip
    p.add_argument("--force-download", action="store_true", help="ignore cached downloads")
    p.add_argument("--model-name", help="override metadata.model_name (default tlens_model_name)")
    p.add_argument("--name", help="the folder under --out (default: the source's run, see below)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/NAME if converted before")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload each SAE to this HF repo")
    p.add_argument("--hub-prefix", default="", help="folder in the repo to put the SAEs under")
    p.add_argument("--private", action="store_true", help="create the hub repo as private")
    p.set_defaults(func=run_convert)


def fail(message: str) -> int:
    """A conversion error: one line on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def run_convert(args: argparse.Namespace) -> int:
    from sae_lens_e2e.loading.huggingface import push_to_hub
    from sae_lens_e2e.loading.reference_format import E2EConversionError
    from sae_lens_e2e.loading.sources import convert_source, source_name
    from sae_lens_e2e.names import inside, is_folder_name

    try:
        if args.name is not None and not is_folder_name(args.name):
            raise E2EConversionError(f"--name {args.name!r}: not a plain folder name")
        name = args.name or source_name(args.source, args.config)
        out = inside(args.out, name, error=E2EConversionError)
        written = convert_source(
            args.source, out, config=args.config, cache_dir=args.cache_dir,
            local_dir=args.local_dir, force_download=args.force_download,
            model_name=args.model_name, overwrite=args.overwrite,
        )  # fmt: skip
        for hook, folder in written.items():
            print(f"{hook}: {folder}")
            if args.push_to_hub:
                path = f"{args.hub_prefix.strip('/')}/{hook}".strip("/")
                sae_id = push_to_hub(folder, args.push_to_hub, path_in_repo=path,
                                     private=args.private or None)  # fmt: skip
                print(f"  pushed: SAE.from_pretrained({args.push_to_hub!r}, {sae_id!r})")
    except E2EConversionError as e:
        return fail(str(e))
    return 0
