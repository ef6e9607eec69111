"""`sae-lens-e2e groundtruth`: local / e2e / e2e_ds SAEs on a model whose important features
are known, scored against them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_OUT = "e2e_groundtruth"

DESCRIPTION = """\
Build a small transformer whose residual stream at blocks.0.hook_resid_pre is a sparse
combination of known feature directions (SAELens's synthetic FeatureDictionary and
ActivationGenerator) and whose output depends on a known quarter of them only (the others
carry more variance but reach the logits only through interference). Train local, e2e and
e2e_ds SAEs on it over a lambda sweep (E2ESAETrainingRunner, same dictionary size and
tokens) and score each against the known features, important and ignored apart: max cosine
of each feature with decoder and encoder rows, SAELens's MCC and per-latent precision /
recall, alive latents, latents spent on ignored features, KL, CE increase, L0.

Offline, CPU, a few minutes. Writes DIR/report.md, DIR/report.json, DIR/groundtruth.png and
every SAE as a SAELens folder under DIR/saes/.
"""

EPILOG = """\
examples:
  sae-lens-e2e groundtruth                              # the study, ~4 minutes on 2 cores
  sae-lens-e2e groundtruth --control random-weights     # + the same SAEs on fresh weights
  sae-lens-e2e groundtruth --strategies local,e2e --coefficients local=0.3,1 e2e=0.1,0.3

--control random-weights also trains every SAE on the same architecture re-initialised by
TransformerLens (embeddings included, same seed and tokens) and scores it against the same
features: the chance level of each metric, beside the trained model's.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "groundtruth",
        help="local/e2e/e2e_ds SAEs on a model with known important features (offline)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="report folder")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument(
        "--control", choices=["random-weights"], help="also train SAEs on fresh weights"
    )
    parser.add_argument(
        "--control-strategies", metavar="LIST", help="strategies trained again for the control "
        "(default: local,e2e)"
    )  # fmt: skip
    parser.add_argument("--strategies", metavar="LIST", help="subset of local,e2e,e2e_ds")
    parser.add_argument(
        "--coefficients", nargs="+", metavar="STRATEGY=L1,L2", help="lambdas per strategy"
    )
    parser.add_argument("--training-tokens", type=int, help="tokens per SAE")
    parser.add_argument("--d-sae", type=int, help="dictionary size (default: the feature count)")
    parser.add_argument("--seed", type=int, help="model, data and SAE seed (default: 0)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: auto)")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: no more than the cores other processes leave idle, "
        "measured at the start, as the quickstart; OMP_NUM_THREADS also sets it)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    import dataclasses

    from sae_lens_e2e.cli.quickstart import parse_coefficients
    from sae_lens_e2e.pipelines.groundtruth.study import StudyConfig

    cfg = StudyConfig(control=args.control)
    if args.strategies is not None:
        cfg.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.control_strategies is not None:
        cfg.control_strategies = [s.strip() for s in args.control_strategies.split(",")]
    if args.coefficients:
        cfg.coefficients |= parse_coefficients(args.coefficients)
    for name in ("training_tokens", "d_sae", "device"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.seed is not None:
        cfg.model = dataclasses.replace(cfg.model, seed=args.seed)
    return cfg


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_lens_e2e.analysis.groundtruth import REPORT_ENTRIES, format_summary
    from sae_lens_e2e.cli.quickstart import share_cpu
    from sae_lens_e2e.pipelines.groundtruth.study import run_groundtruth
    from sae_lens_e2e.pipelines.output import check_output_dir
    from sae_lens_e2e.pipelines.quickstart.pipeline import dead_sae_warnings
    from sae_lens_e2e.preflight import check_device, resolve_device

    cfg = config_from_args(args)
    cfg.validate()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_device(cfg.device, "--device")
    check_output_dir(Path(args.out), args.overwrite, REPORT_ENTRIES, "groundtruth")
    if resolve_device(cfg.device) == "cpu":  # a shared machine costs at most its fair share
        share_cpu(args.threads)
    try:
        report = run_groundtruth(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"sae-lens-e2e groundtruth: interrupted; {args.out} was left as it was",
              file=sys.stderr)  # fmt: skip
        return 130
    print(format_summary(report))
    for line in dead_sae_warnings(report.runs):  # the runners it drives leave this to it
        print(line, file=sys.stderr)
    return 0
