"""`sae-lens-e2e evaluate`: evaluate published or local SAEs on a model and dataset."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_OUT = "e2e_evaluate"

# Kept here, not in loading/sae_source.py, so that --help imports nothing heavy.
SOURCE_HELP = """\
SOURCE is one of:
  DIR                           a SAELens SAE folder (cfg.json + sae_weights.safetensors)
  hf:ORG/REPO/STEM              a reference checkpoint on the hub, e.g.
                                hf:apollo-research/e2e-saes-gpt2/e2e_similar_ce_layer_6
  wandb:ENTITY/PROJECT/RUN_ID   a reference run, e.g. wandb:sparsify/gpt2/zgdpkafo
  paper:TYPE/LAYER[/SELECTION]  a paper SAE by name, e.g. paper:e2e/6/similar_ce
  RELEASE/SAE_ID                a SAELens pretrained SAE, e.g. gpt2-small-res-jb/blocks.6.hook_resid_pre
                                (or ORG/REPO/SAE_ID for a SAELens folder in a hub repo)
"""


EPILOG = f"""\
{SOURCE_HELP}
Writes DIR/report.md (the quickstart's table), DIR/report.json and DIR/pareto.png; DIR appears
only once everything succeeded.

Defaults for --model gpt2 are the paper's: TransformerLens's default weight processing
(fold_ln, center_writing_weights, center_unembed, fold_value_biases), no BOS, rows of 1024
tokens of apollo-research/Skylion007-openwebtext-tokenizer-gpt2. For other models each setting
comes from the SAEs' metadata when they agree, else SAELens's defaults (BOS, 128 tokens).
--model also takes a quickstart model folder (DIR/model of a quickstart report).

examples:
  sae-lens-e2e evaluate --model gpt2 --paper paper:local/6 paper:e2e/6 paper:e2e+ds/6
  sae-lens-e2e evaluate --model gpt2 hf:apollo-research/e2e-saes-gpt2/e2e_similar_ce_layer_6 \\
      gpt2-small-res-jb/blocks.6.hook_resid_pre converted/blocks.6.hook_resid_pre
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate SAEs (folders, hf:, wandb:, paper:, SAELens releases) and write a report",
        description="Evaluate SAEs on held-out tokens of a model and dataset: CE increase, "
        "CE recovered, KL, L0, alive latents, explained variance; table, report.json and a "
        "Pareto plot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="SAEs to evaluate")
    parser.add_argument("--model", required=True, help="TransformerLens model, e.g. gpt2")
    parser.add_argument(
        "--dataset", help="Hugging Face dataset or a save_to_disk folder (default for gpt2: "
        "the paper's)"
    )  # fmt: skip
    parser.add_argument("--context-size", type=int, help="tokens per row (gpt2: 1024)")
    parser.add_argument(
        "--prepend-bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a BOS token to each row (gpt2 default: no, as the paper)",
    )
    parser.add_argument(
        "--n-sequences", type=int, default=500, help="rows to evaluate on (default: 500)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch (default: 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    parser.add_argument(
        "--paper", action="store_true", help="add the paper's Table 2 numbers for paper SAEs"
    )
    parser.add_argument("--local-dir", help="already-downloaded hf:/wandb: files (no network)")
    parser.add_argument("--cache-dir", help="download cache for hf:/wandb: sources")
    parser.add_argument(
        "--control",
        choices=["random-weights"],
        help="evaluate the SOURCEs trained on the model's random-weights control (recorded in "
        "their metadata, e.g. by quickstart --control) on that model, beside the others",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="report folder")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_e2e.analysis.report import format_summary
    from sae_lens_e2e.pipelines.evaluate import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(
        sources=list(args.sources),
        model=args.model,
        dataset=args.dataset,
        context_size=args.context_size,
        prepend_bos=args.prepend_bos,
        n_sequences=args.n_sequences,
        batch_size=args.batch_size,
        device=args.device,
        paper=args.paper,
        local_dir=args.local_dir,
        cache_dir=args.cache_dir,
        control=args.control,
    )
    result = run_evaluate(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(result))
    return 0
