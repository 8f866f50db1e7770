"""The losses a run can train with: open_clip's CLIP loss (with label smoothing added) and SigLIP."""

from __future__ import annotations

import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from train.config import TrainConfig


class SmoothClipLoss(ClipLoss):
    """open_clip's ClipLoss (same gathering, same labels) with label smoothing on both directions."""

    def __init__(self, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        per_image, per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = self.get_ground_truth(image_features.device, per_image.shape[0])
        ls = self.label_smoothing
        loss = (
            F.cross_entropy(per_image, labels, label_smoothing=ls)
            + F.cross_entropy(per_text, labels, label_smoothing=ls)
        ) / 2
        return {"contrastive_loss": loss} if output_dict else loss


def make_loss(cfg: TrainConfig, rank: int, world: int):
    """The loss of ``cfg``; with several ranks the CLIP loss gathers features from all of them."""
    if cfg.loss == "siglip":
        return SigLipLoss(rank=rank, world_size=world)
    return SmoothClipLoss(
        cfg.label_smoothing, local_loss=world > 1, gather_with_grad=world > 1, rank=rank, world_size=world
    )


def compute(loss_fn, cfg: TrainConfig, out: dict):
    """The loss of one forward pass's outputs (SigLIP also takes the learnt bias)."""
    if cfg.loss == "siglip":
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
