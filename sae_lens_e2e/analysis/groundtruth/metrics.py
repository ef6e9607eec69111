"""How well an SAE found known features, split into the features the model's output uses
(important) and those it ignores.

SAELens's synthetic-data metrics do the work (`sae_lens.synthetic`): `mean_correlation_coefficient`
(Hungarian one-to-one matching, mean |cos|) and `ClassificationMetricsCalculator` (each latent
as a detector of its best-matching feature by decoder |cos|, counted over tokens). This module
only splits their outputs by feature group and adds the per-feature max cosine:

- `dec_max_cos/<group>`: mean over the group's features of the largest cosine between the
  feature and an alive latent's decoder row (`enc_max_cos`: encoder row). Signed: features
  and latents are both non-negative, so a latent that tracks a feature points along it.
- `recovered/<group>`: share of the group's features with dec_max_cos >= `recovered_cos`.
- `mcc/<group>`: SAELens's MCC between the group's features and all decoder rows (as
  SAELens's `eval_sae_on_synthetic_data` takes them); `mcc`: all features.
- `precision/<group>`, `recall/<group>`: SAELens's per-latent precision / recall, averaged over
  the alive latents whose best match is in the group; `precision`, `recall`, `f1`: SAELens's
  own means over all latents.
- `latents_on/<group>`: alive latents whose decoder row's best match (|cos| >= `matched_cos`)
  is in the group; `latents_unmatched`: alive latents matching no feature that well.
"""

from __future__ import annotations

from typing import Any

import torch

GROUPS = ("important", "ignored")
RECOVERED_COS = 0.9
MATCHED_COS = 0.5


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def max_cosine(features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[n_features]: largest cosine of each feature with any of the directions (0 if none)."""
    if directions.shape[0] == 0:
        return torch.zeros(features.shape[0])
    return (_unit_rows(features) @ _unit_rows(directions).T).max(1).values


class GroundTruthScorer:
    """Accumulates an SAE's latents against the true feature activations, token batch by
    token batch, then scores it (see the module docstring)."""

    def __init__(
        self,
        w_dec: torch.Tensor,
        w_enc: torch.Tensor,
        features: torch.Tensor,
        important: torch.Tensor,
        *,
        recovered_cos: float = RECOVERED_COS,
        matched_cos: float = MATCHED_COS,
    ) -> None:
        from sae_lens.synthetic import ClassificationMetricsCalculator

        self.w_dec = w_dec.detach().float().cpu()  # [d_sae, d_in]
        self.w_enc = w_enc.detach().float().cpu()  # [d_in, d_sae]
        self.features = features.detach().float().cpu()  # [n_features, d_in]
        self.important = important.bool().cpu()
        self.recovered_cos, self.matched_cos = recovered_cos, matched_cos
        self.classifier = ClassificationMetricsCalculator(self.w_dec, self.features)
        self.fired = torch.zeros(self.w_dec.shape[0], dtype=torch.bool)

    def add_batch(self, latents: torch.Tensor, feature_acts: torch.Tensor) -> None:
        """`latents` [tokens, d_sae] of the SAE, `feature_acts` [tokens, n_features] true."""
        latents, feature_acts = latents.detach().float().cpu(), feature_acts.float().cpu()
        self.classifier.add_batch(latents, feature_acts)
        self.fired |= (latents > 0).any(0)

    def group_masks(self) -> dict[str, torch.Tensor]:
        return {"important": self.important, "ignored": ~self.important}

    def compute(self) -> dict[str, Any]:
        from sae_lens.synthetic import mean_correlation_coefficient

        alive = self.fired
        dec = max_cosine(self.features, self.w_dec[alive])
        enc = max_cosine(self.features, self.w_enc.T[alive])
        classes = self.classifier.compute()
        out: dict[str, Any] = {
            "alive": int(alive.sum()),
            "mcc": mean_correlation_coefficient(self.features, self.w_dec),
            "precision": classes.precision,
            "recall": classes.recall,
            "f1": classes.f1_score,
            "per_feature/dec_max_cos": dec.tolist(),
            "per_feature/enc_max_cos": enc.tolist(),
        }
        precision, recall = self._per_latent()
        best = self.classifier.best_matches
        best_cos = (_unit_rows(self.w_dec) @ _unit_rows(self.features).T).abs().max(1).values
        matched = alive & (best_cos >= self.matched_cos)
        for group, mask in self.group_masks().items():
            on_group = mask[best]  # each latent: is its best match in this group?
            mine = alive & on_group
            out |= {
                f"dec_max_cos/{group}": float(dec[mask].mean()),
                f"enc_max_cos/{group}": float(enc[mask].mean()),
                f"recovered/{group}": float((dec[mask] >= self.recovered_cos).float().mean()),
                f"mcc/{group}": mean_correlation_coefficient(self.features[mask], self.w_dec),
                f"precision/{group}": _mean(precision[mine]),
                f"recall/{group}": _mean(recall[mine]),
                f"latents_on/{group}": int((matched & on_group).sum()),
            }
        out["latents_unmatched"] = int((alive & ~matched).sum())
        return out

    def _per_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SAELens's per-latent precision and recall (0 where undefined, as it does)."""
        c = self.classifier
        precision = torch.where(c.tp + c.fp > 0, c.tp / (c.tp + c.fp).clamp(min=1), 0.0)
        recall = torch.where(c.tp + c.fn > 0, c.tp / (c.tp + c.fn).clamp(min=1), 0.0)
        return precision, recall


def _mean(values: torch.Tensor) -> float:
    """Mean, or NaN when there is nothing to average (no latent on that group)."""
    return float(values.mean()) if values.numel() else float("nan")
