"""A HookedTransformer whose features, and which of them its output uses, are known.

Construction (all weights hand-set; `GroundTruthConfig` holds the sizes):

- Features. N unit directions in a `d_features`-dimensional subspace S of the residual
  stream (SAELens's `FeatureDictionary`, orthogonalised as far as N > d_features allows),
  Zipfian firing probabilities and per-feature magnitudes from SAELens's generators
  (`ZipfianFiringProbabilityConfig`, `LinearMagnitudeConfig`), sampled by its
  `ActivationGenerator`.
- Tokens. Each of the `n_codes` tokens is one sample of the generator: its embedding is that
  sparse combination of feature directions, so the residual at `blocks.0.hook_resid_pre`
  (positional embeddings are zero) is x = sum_i a_i f_i, exactly.
- Important features. Features are ranked by their variance over the codes and grouped in
  runs of `important_every`; the lowest-variance feature of each run is *important*, the
  others are *ignored*: every important feature has `important_every - 1` ignored ones with
  at least its variance, and the ignored features hold most of the variance.
- Computation. Block 0's MLP has one GELU neuron per important feature i, reading along the
  feature's own direction with a threshold, h_i = GELU(f_i . x - threshold), and writing
  `logit_scale * U[i]` (U Gaussian, [n_important, n_groups]) to an output subspace O
  orthogonal to S, one axis per output group. Two more neurons per axis compute
  GELU(z) - GELU(-z) = z on -x_O: the MLP overwrites O, so nothing an SAE writes into O
  reaches the logits except through the MLP (no shortcut around the model's computation).
  Attention and block 1 are zero (block 1 is there so e2e_ds has a downstream layer). The
  unembed reads O only: a token's logit is its group's axis (tokens are split into
  `n_groups` equal random groups) plus a per-group bias. So the logits depend on the
  important features alone, and on the ignored ones only through interference
  (f_i . f_j != 0 moves h_i), which `ablation_effects` measures. GELU rather than ReLU: a
  below-threshold neuron still passes a gradient (as in real models), and its flat minimum
  near -threshold keeps interference small.
- Data. Sequences are sampled from the model itself (first token uniform, then each next
  token from the model's output at the current one), so the model is the exact next-token
  distribution of its data: clean CE is the data's entropy and CE increase is meaningful.
  The per-group bias makes the mean next-token distribution uniform (the transition matrix
  is doubly stochastic), so every position's tokens stay uniform and the data's feature
  statistics are exactly the codes'.

Why it is fair to both losses: the residual contains every feature exactly, with no
LayerNorm or nonlinearity before the SAE; perfect reconstruction (local's optimum) gives zero
KL (e2e's optimum), so the true features are an optimum of both losses; the model reads each
important feature along the very direction it was written, so the important features are
also the natural dictionary for the output; and an SAE cannot reach the logits except through
the model's own computation. Nothing tells an SAE which features are important; the
comparison is at equal dictionary size, tokens and optimiser, over a lambda sweep, read at
equal L0. What differs is only what each loss spends its sparsity budget on. What the model
does not read at all (the part of S orthogonal to the important features' directions, 16 of
32 dimensions by default) leaves an e2e SAE's decoder free there: its decoder cosines can be
low for a latent that the model cannot tell from the true feature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

GROUND_TRUTH_MODEL_NAME = "groundtruth-sparse-codes"
HOOK = "blocks.0.hook_resid_pre"


@dataclass
class GroundTruthConfig:
    """Sizes of the ground-truth model; the defaults run the study on a CPU in minutes."""

    n_features: int = 64
    d_features: int = 32  # dimensions of the feature subspace S
    important_every: int = 4  # one important feature per run of this many (by variance)
    n_codes: int = 1024  # vocabulary: one sparse code per token
    n_groups: int = 16  # tokens are predicted up to their group
    context_size: int = 32
    firing_max_prob: float = 0.25
    firing_min_prob: float = 0.02
    firing_exponent: float = 0.5
    magnitude_mean: tuple[float, float] = (1.5, 1.0)  # linear across features (by rank)
    magnitude_std: float = 0.2
    threshold: float = 0.75
    logit_scale: float = 3.0
    act_fn: str = "gelu"  # or "relu" (the eraser is exact for both)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.n_features <= self.d_features:
            raise ValueError(
                f"n_features={self.n_features} must exceed d_features={self.d_features} "
                "(features in superposition)"
            )
        if self.important_every < 2 or self.n_features % self.important_every:
            raise ValueError(
                f"important_every={self.important_every} must be >= 2 and divide "
                f"n_features={self.n_features}"
            )
        if self.act_fn not in ("gelu", "relu"):
            raise ValueError(f"act_fn must be 'gelu' or 'relu', got {self.act_fn!r}")
        if self.n_codes % self.n_groups:
            raise ValueError(
                f"n_groups={self.n_groups} must divide n_codes={self.n_codes} (equal groups)"
            )


@dataclass
class GroundTruth:
    """The model and everything known about it."""

    cfg: GroundTruthConfig
    model: HookedTransformer
    features: torch.Tensor  # [n_features, d_model]: unit directions, zero outside S
    codes: torch.Tensor  # [n_codes, n_features]: each token's feature activations
    important: torch.Tensor  # [n_features] bool
    groups: torch.Tensor  # [n_codes] each token's output group

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    def feature_acts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ground-truth feature activations of each token, [..., n_features]."""
        return self.codes[tokens.cpu()]


def _sample_codes(cfg: GroundTruthConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature directions [N, d_features] and one sampled code per token [n_codes, N]."""
    from sae_lens.synthetic import (
        ActivationGenerator,
        FeatureDictionary,
        LinearMagnitudeConfig,
        ZipfianFiringProbabilityConfig,
        generate_magnitudes,
    )

    n = cfg.n_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the generator samples from torch's global RNG
        dictionary = FeatureDictionary(n, cfg.d_features, seed=cfg.seed)
        firing = ZipfianFiringProbabilityConfig(
            exponent=cfg.firing_exponent,
            max_prob=cfg.firing_max_prob,
            min_prob=cfg.firing_min_prob,
        ).generate(n)
        means = generate_magnitudes(n, LinearMagnitudeConfig(*cfg.magnitude_mean))
        generator = ActivationGenerator(
            n, firing, std_firing_magnitudes=cfg.magnitude_std, mean_firing_magnitudes=means
        )
        codes = generator.sample(cfg.n_codes)
    return dictionary.feature_vectors.detach().clone(), codes


def important_features(codes: torch.Tensor, every: int) -> torch.Tensor:
    """The lowest-variance feature of each run of `every` features in variance order."""
    order = codes.var(0).argsort(descending=True)
    important = torch.zeros(codes.shape[1], dtype=torch.bool)
    important[order[every - 1 :: every]] = True
    return important


def model_config(cfg: GroundTruthConfig, n_important: int, device: str) -> HookedTransformerConfig:
    """Two blocks (block 1 zero, so e2e_ds has a downstream layer), no LayerNorm, ReLU MLPs:
    one neuron per important feature and two per output axis (the eraser)."""
    return HookedTransformerConfig(
        n_layers=2,
        d_model=cfg.d_features + cfg.n_groups,
        d_head=4,
        n_heads=1,
        d_mlp=n_important + 2 * cfg.n_groups,
        n_ctx=cfg.context_size,
        d_vocab=cfg.n_codes,
        act_fn=cfg.act_fn,
        normalization_type=None,
        model_name=GROUND_TRUTH_MODEL_NAME,
        seed=cfg.seed,
        device=device,
    )


def build_ground_truth(cfg: GroundTruthConfig, device: str = "cpu") -> GroundTruth:
    """The model of the module docstring, deterministic in `cfg` (seed included)."""
    cfg.validate()
    directions, codes = _sample_codes(cfg)
    important = important_features(codes, cfg.important_every)
    idx = important.nonzero().squeeze(1)
    k, d_f, g = len(idx), cfg.d_features, cfg.n_groups
    gen = torch.Generator().manual_seed(cfg.seed)
    groups = torch.randperm(cfg.n_codes, generator=gen) % g
    readout = torch.randn(k, g, generator=gen)
    model = HookedTransformer(model_config(cfg, k, "cpu"))
    features = torch.zeros(cfg.n_features, d_f + g)
    features[:, :d_f] = directions
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E.copy_(codes @ features)
        mlp = model.blocks[0].mlp
        # Feature neurons: h_i = ReLU(f_i . x - threshold), written to the output axes.
        mlp.W_in[:d_f, :k] = directions[idx].T
        mlp.b_in[:k] = -cfg.threshold
        mlp.W_out[:k, d_f:] = cfg.logit_scale * readout
        # Eraser: ReLU(z) - ReLU(-z) = z, so these neurons add -x_O to the output axes.
        eye = torch.eye(g)
        mlp.W_in[d_f:, k : k + g], mlp.W_out[k : k + g, d_f:] = eye, -eye
        mlp.W_in[d_f:, k + g :], mlp.W_out[k + g :, d_f:] = -eye, eye
        model.unembed.W_U[d_f:] = eye[:, groups]
    with torch.no_grad():
        model.unembed.b_U.copy_(_balancing_bias(model, groups, g))
    model = model.to(device).requires_grad_(False).eval()
    return GroundTruth(cfg, model, features.to(device), codes, important, groups)


@torch.no_grad()
def _balancing_bias(model: HookedTransformer, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-token unembed bias (one value per group) under which the next-token distribution,
    averaged over all tokens, is uniform: the transition matrix is then doubly stochastic, so
    tokens drawn from the model keep the uniform distribution over tokens at every position
    and the data's feature statistics are the codes'. Found by fitting the group intercepts
    (a convex problem; iterated to float precision)."""
    vocab = torch.arange(model.cfg.d_vocab)[:, None]
    first = (groups[None] == torch.arange(n_groups)[:, None]).float().argmax(1)
    z = model(vocab)[:, 0][:, first].double()  # [tokens, groups]: each group's logit
    bias = torch.zeros(n_groups, dtype=torch.float64)
    for _ in range(500):
        mean = (z + bias).softmax(-1).mean(0)
        bias -= (mean * n_groups).log()
        if (mean * n_groups - 1).abs().max() < 1e-9:
            break
    return bias.float()[groups]


@torch.no_grad()
def next_token_probs(model: HookedTransformer) -> torch.Tensor:
    """[n_codes, n_codes]: the model's next-token distribution after each token (attention is
    zero and positions carry nothing, so it depends on the current token only)."""
    vocab = torch.arange(model.cfg.d_vocab, device=model.cfg.device)[:, None]
    return model(vocab)[:, 0].float().softmax(-1).cpu()


def sample_tokens(gt: GroundTruth, n_sequences: int, seed: int) -> torch.Tensor:
    """[n_sequences, context_size] tokens drawn from the model's own distribution (inverse
    CDF of each current token's row of `next_token_probs`)."""
    cdf = next_token_probs(gt.model).double().cumsum(-1)
    cdf /= cdf[:, -1:].clone()
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.empty(n_sequences, gt.cfg.context_size, dtype=torch.long)
    tokens[:, 0] = torch.randint(gt.cfg.n_codes, (n_sequences,), generator=gen)
    for pos in range(1, gt.cfg.context_size):
        u = torch.rand(n_sequences, 1, generator=gen, dtype=torch.float64)
        drawn = torch.searchsorted(cdf[tokens[:, pos - 1]], u)[:, 0]
        tokens[:, pos] = drawn.clamp(max=gt.cfg.n_codes - 1)
    return tokens


@torch.no_grad()
def ablation_effects(gt: GroundTruth) -> torch.Tensor:
    """[n_features]: mean KL(clean || ablated) over the tokens whose code holds the feature,
    when that feature alone (a_i f_i) is removed from the residual at the SAE's hook."""
    model, codes = gt.model, gt.codes.to(gt.features.device)
    vocab = torch.arange(gt.cfg.n_codes, device=gt.features.device)[:, None]
    clean = model(vocab)[:, 0].log_softmax(-1)
    effects = torch.zeros(gt.cfg.n_features)
    for i in range(gt.cfg.n_features):
        fires = codes[:, i] > 0
        if not fires.any():
            continue
        delta = codes[:, i, None] * gt.features[i]

        def ablate(act: torch.Tensor, hook: Any, delta: torch.Tensor = delta) -> torch.Tensor:
            return act - delta[:, None, :]

        with model.hooks(fwd_hooks=[(HOOK, ablate)]):
            ablated = model(vocab)[:, 0].log_softmax(-1)
        kl = (clean.exp() * (clean - ablated)).sum(-1)
        effects[i] = kl[fires].mean().cpu()
    return effects
