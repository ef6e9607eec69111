"""`sae-lens-e2e quickstart`: see what e2e training buys you, on your own machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sae_lens_e2e.cli.train import note_offline
from sae_lens_e2e.config_fields import read_yaml_mapping
from sae_lens_e2e.preflight import (
    check_device,
    fair_threads,
    go_offline_if_hub_unreachable,
    resolve_device,
)

DEFAULT_OUT = "e2e_quickstart"

DESCRIPTION = """\
Train local, e2e, e2e_ds and local->e2e (local first, e2e for the last 20% of steps)
sparse autoencoders on the same model and tokens, evaluate them on held-out text and write a
report comparing them, also against their training compute.

With no arguments this runs offline on a CPU in a few minutes: it trains a small byte-level
transformer on the Python documentation that ships with Python (cached for later runs in
~/.cache/sae_lens_e2e/quickstart, or $SAE_LENS_E2E_CACHE), then trains 12 SAEs at its middle
layer and writes DIR/report.md, DIR/pareto.png, DIR/geometry.png and every SAE in SAELens
format under DIR/saes/.
"""

EPILOG = """\
examples:
  sae-lens-e2e quickstart                         # offline, CPU, ~5-10 minutes
  sae-lens-e2e quickstart --out run2 --strategies local,e2e --coefficients local=3,10 e2e=0.3,1
  sae-lens-e2e quickstart --control random-weights   # + local and e2e SAEs on fresh weights
  sae-lens-e2e quickstart --config examples/quickstart_gpt2.yaml   # the paper's GPT-2 run (GPU)
  sae-lens-e2e quickstart --model gpt2 --dataset apollo-research/Skylion007-openwebtext-tokenizer-gpt2 \\
      --training-tokens 20000000                  # the paper's settings, a 20x shorter run

--model gpt2 (GPT-2 small) runs as the paper did for everything not given: TransformerLens's
default processing (fold_ln, centred weights), no BOS, 1024-token rows, blocks.6.hook_resid_pre,
46080 latents, batches of 16 sequences as 2 x 8, lr 5e-4 with 1250 warm-up steps and cosine
decay to 5e-5, grad clip 10, the layer-6 lambdas, 512 held-out sequences (alive latents over
>= 500k tokens). --dataset and --training-tokens stay yours (the paper: 409600000).

--config takes a YAML file whose keys are the long option names with '_' for '-' (model,
dataset, hook, d_sae, training_tokens, coefficients: {local: [4.0], e2e: [3.0]}, ...) plus
lm: {...} (the tiny model), runner_overrides: {...} (SAELens LanguageModelSAERunnerConfig
fields) and sae_overrides: {...} (E2EStandardTrainingSAEConfig fields), except the fields the
quickstart sets for every run itself (strategy, l1_coefficient, hook, model, dataset, ...: use
the options above). Every value is checked before any work. Options given on the command line
win over the file; --coefficients replaces only the strategies it names.

Held-out text: the tiny model's held-out documents are never trained on by the model or the
SAEs. With --dataset, the first --n-eval-sequences sequences of the dataset's train split are
held out (the runner reserves them before training). A dataset too short for the token
budget is refused rather than repeated.
"""


def parse_coefficients(items: list[str]) -> dict[str, list[float]]:
    """["local=1,2", "e2e=0.5"] -> {"local": [1.0, 2.0], "e2e": [0.5]}."""
    from sae_lens_e2e.pipelines.quickstart.config import RUN_KINDS

    out: dict[str, list[float]] = {}
    for item in items:
        strategy, sep, values = item.partition("=")
        if not sep or strategy not in RUN_KINDS:
            raise ValueError(
                f"--coefficients takes STRATEGY=L1,L2,... with STRATEGY in {RUN_KINDS}, "
                f"got {item!r}"
            )
        try:
            out[strategy] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(f"--coefficients {item!r}: {err}") from err
    return out


_FLAG_FIELDS = (
    "model",
    "dataset",
    "hook",
    "d_sae",
    "training_tokens",
    "context_size",
    "device",
    "seed",
    "n_eval_sequences",
    "lr",
)


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < --config file < command-line options."""
    from sae_lens_e2e.pipelines.quickstart.config import (
        TINY_COEFFICIENTS,
        QuickstartConfig,
        model_defaults,
    )

    raw = read_yaml_mapping(args.config) if args.config else {}
    for name in _FLAG_FIELDS:
        value = getattr(args, name)
        if value is not None:
            raw[name] = value
    if args.strategies is not None:
        raw["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    given = raw.get("coefficients", {})
    if isinstance(given, dict):  # else the config check names the mistake
        # Per strategy: the model's defaults, then the file's, then the command line's.
        default = model_defaults(raw.get("model")).get("coefficients", TINY_COEFFICIENTS)
        cli = parse_coefficients(args.coefficients) if args.coefficients else {}
        raw["coefficients"] = {**default, **given, **cli}
    if args.compare_sae:
        raw["compare_saes"] = [*raw.get("compare_saes", []), *args.compare_sae]
    if args.control is not None:
        raw["control"] = args.control
    if args.control_strategies is not None:
        raw["control_strategies"] = [s.strip() for s in args.control_strategies.split(",")]
    return QuickstartConfig.from_dict(raw, source=args.config or "command line")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train local/e2e/e2e_ds SAEs and write a comparison report (offline by default)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"report folder to create (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it exists (it is only replaced once all succeeded)",
    )
    parser.add_argument("--config", metavar="YAML", help="quickstart settings file (see below)")
    group = parser.add_argument_group("model and data (default: the offline tiny model)")
    group.add_argument("--model", help="TransformerLens model name, e.g. gpt2 (needs --dataset)")
    group.add_argument("--dataset", help="Hugging Face dataset path (text or pre-tokenised)")
    group.add_argument("--hook", help="SAE position (default: blocks.<n_layers//2>.hook_resid_pre)")
    group.add_argument("--context-size", type=int, help="tokens per sequence (default: 128)")
    group.add_argument("--device", help="cpu, cuda, ... (default: cuda if available, else cpu)")
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: no more than the cores other processes leave idle, "
        "measured at the start; OMP_NUM_THREADS also sets it)",
    )
    group = parser.add_argument_group("SAEs")
    group.add_argument(
        "--strategies",
        metavar="LIST",
        help="comma-separated subset of local,e2e,e2e_ds,local->e2e,local->e2e_ds "
        "(default: local,e2e,e2e_ds,local->e2e)",
    )
    group.add_argument(
        "--coefficients",
        nargs="+",
        metavar="STRATEGY=L1,L2",
        help="sparsity coefficients (the paper's lambda) per strategy, e.g. local=1,3 e2e=0.3 "
        "(default for the tiny model: local=1,3,10 e2e=0.3,1,3 e2e_ds=3,10,30, local->S: "
        "those of S; "
        "with --model the paper's GPT-2 layer-6 values local=4 e2e=3 e2e_ds=50)",
    )
    group.add_argument("--d-sae", type=int, help="dictionary size (default: 8 x d_in)")
    group.add_argument(
        "--training-tokens",
        type=int,
        help="tokens per SAE, the same for every SAE (default: 262144)",
    )
    group.add_argument("--lr", type=float, help="SAE learning rate (default: 3e-3)")
    group.add_argument(
        "--seed",
        type=int,
        help="base seed; each strategy initialises its SAEs with seed + its index (default: 0)",
    )
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--n-eval-sequences", type=int, help="held-out sequences to evaluate on (default: 256)"
    )
    group.add_argument(
        "--compare-sae",
        action="append",
        metavar="PATH[=LABEL]",
        help="also evaluate this SAELens SAE folder (e.g. a converted paper "
        "checkpoint); repeatable",
    )
    group = parser.add_argument_group("control")
    group.add_argument(
        "--control",
        choices=["random-weights"],
        help="also train SAEs on the model's architecture re-initialised by TransformerLens "
        "(same seed, shapes and tokens, embeddings included) and report both side by side",
    )
    group.add_argument(
        "--control-strategies",
        metavar="LIST",
        help="strategies (with their lambdas) trained again for the control (default: local,e2e)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def share_cpu(requested: int | None) -> str:
    """Use no more torch threads than the cores idle now (a shared machine costs at most its
    fair share; more threads than free cores wait on each other at every op)."""
    import torch

    threads, why = fair_threads(requested)
    torch.set_num_threads(threads)
    return f"{threads} torch thread{'s' if threads > 1 else ''} ({why})"


def run(args: argparse.Namespace) -> int:
    from sae_lens_e2e.analysis.report import format_summary
    from sae_lens_e2e.pipelines.output import check_output_dir
    from sae_lens_e2e.pipelines.quickstart.pipeline import (
        REPORT_ENTRIES,
        dead_sae_warnings,
        run_quickstart,
    )
    from sae_lens_e2e.pipelines.tiny_lm import training_note

    cfg = config_from_args(args)
    cfg.validate()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_device(cfg.device, "--device")  # before the note below
    # Before any slow work.
    check_output_dir(Path(args.out), args.overwrite, REPORT_ENTRIES, "quickstart")
    device = resolve_device(cfg.device)
    threads = share_cpu(args.threads) if device == "cpu" else ""
    if cfg.model is not None:
        note_offline(go_offline_if_hub_unreachable())
    elif not args.quiet:
        print(training_note(cfg.lm, device, threads), file=sys.stderr)
    try:
        result = run_quickstart(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            f"sae-lens-e2e quickstart: interrupted; {args.out} was left as it was (a finished "
            "tiny model stays cached); run the same command to start again",
            file=sys.stderr,
        )
        return 130
    print(format_summary(result))
    for line in dead_sae_warnings(result.runs):
        print(line, file=sys.stderr)
    return 0
