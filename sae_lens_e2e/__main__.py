"""`python -m sae_lens_e2e ...`, e.g. `torchrun --nproc-per-node 8 -m sae_lens_e2e train cfg.yaml`."""

import sys

from sae_lens_e2e.cli import main

sys.exit(main())
