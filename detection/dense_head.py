"""A dense, FCOS-style supervision of the encoder output, for training only.

FCOS (Tian et al., ICCV 2019) trains every feature-map position whose centre lies inside a
ground-truth box to tell that box's class and to regress the box; a position inside several boxes
takes the smallest. ``FCOSDenseHead`` applies that rule to one map, the memory of a DETR encoder
(DETR: its single map; Deformable DETR: one chosen level), with a focal class loss and the
decoder's L1 and GIoU box losses. It has none of FCOS's multi-level scale ranges or centre-ness
branch, and it adds one thing FCOS lacks: a box that contains no position centre (smaller or
thinner than a cell) claims the real position nearest its centre, so every object is supervised.

Why it is there: DETR's backbone and encoder learn only through the decoder's cross-attention,
which is nearly uniform early in training; on a small data set from scratch the features stay
undiscriminating for a long, seed-dependent plateau. The dense head gives backbone and encoder a
localisation signal from the first step. It is dropped at inference; nothing else changes.

It is not Co-DETR's collaborative hybrid assignment (Zong et al., ICCV 2023), which trains ATSS
and Faster R-CNN heads over a pyramid of strides 8-128 and feeds their positives back to the
decoder as extra queries.
"""
import torch
from einops import rearrange
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from zoo.layers.mlp import Mlp
from zoo.layers.linear import Linear

from .distributed import all_reduce_mean


class FCOSDenseHead(nn.Module):
    """memory (B, S, D) of an h x w map, padding (B, h, w) True on padding -> dict(logits (B, S, C),
    boxes (B, S, 4) normalised cxcywh, centres (B, S, 2), valid (B, S)).

    Boxes are predicted as a change, in inverse-sigmoid space, of an anchor of side ``anchor_side``
    centred on the position (as Deformable DETR's two-stage proposals) rather than FCOS's distances
    to the four sides, so a position may also regress a box that does not contain it.
    """

    def __init__(self, hidden_dim: int, num_classes: int, anchor_side: float = 0.25,
                 weight_class: float = 2.0, weight_bbox: float = 5.0, weight_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.class_head = Linear(hidden_dim, num_classes)
        # focal prior 0.01 (RetinaNet's): logit(0.01) = -4.5951, kept to the 3 decimals that
        # docs/small_data.md's runs used
        nn.init.constant_(self.class_head.bias, -4.595)
        self.box_head = Mlp(hidden_dim, hidden_dim, 4, act_layer=nn.ReLU)
        nn.init.zeros_(self.box_head.fc2.weight)  # first predictions: the anchors
        nn.init.zeros_(self.box_head.fc2.bias)
        self.anchor_side = anchor_side
        self.weights = dict(loss_class=weight_class, loss_bbox=weight_bbox, loss_giou=weight_giou)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @staticmethod
    def centres(padding: torch.Tensor) -> torch.Tensor:
        """padding (B, h, w) -> (B, h * w, 2) position centres (x, y) normalised by the valid extent
        (so padding positions lie beyond 1)."""
        valid_h = (~padding[:, :, 0]).sum(1).clamp(min=1).float()
        valid_w = (~padding[:, 0, :]).sum(1).clamp(min=1).float()
        h, w = padding.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=padding.device, dtype=torch.float32) + 0.5,
                                torch.arange(w, device=padding.device, dtype=torch.float32) + 0.5, indexing='ij')
        xs = xs[None] / valid_w[:, None, None]
        ys = ys[None] / valid_h[:, None, None]
        return rearrange(torch.stack([xs, ys], -1), 'b h w c -> b (h w) c')

    def forward(self, memory: torch.Tensor, padding: torch.Tensor) -> dict:
        """memory (B, S, D); padding (B, h, w) with h * w = S."""
        centres = self.centres(padding)
        anchors = torch.cat([centres, torch.full_like(centres, self.anchor_side)], -1).clamp(1e-4, 1 - 1e-4)
        boxes = (self.box_head(memory) + anchors.logit().to(memory)).sigmoid()
        return dict(logits=self.class_head(memory), boxes=boxes, centres=centres, valid=~padding.flatten(1))

    @staticmethod
    def assign(centres: torch.Tensor, targets: list[dict],
               valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """centres (B, S, 2), targets' ``boxes`` (N, 4) normalised cxcywh, valid (B, S) False on
        padding (None: all real) -> index (B, S) of each position's box (-1: background) and the
        matched boxes (B, S, 4) (zeros on background).

        A real position is claimed by every box that contains its centre (FCOS) and, for a box
        that contains no real position's centre, by that box when it is the position nearest the
        box's centre. Of a position's claimants the smallest box (by area) wins, FCOS's rule for
        a position inside several boxes, whether it contains the position or only claims it as
        nearest. A box that fits between position centres is nearly always the smaller one, so it
        keeps its position. Boxes that compete for one position cannot all have it: when boxes
        outnumber the positions around them (several objects in one cell, or duplicate boxes),
        the larger ones go without a positive.
        """
        index = torch.full(centres.shape[:2], -1, dtype=torch.int64, device=centres.device)
        matched = torch.zeros(*centres.shape[:2], 4, device=centres.device)
        if valid is None:
            valid = torch.ones(centres.shape[:2], dtype=torch.bool, device=centres.device)
        for i, t in enumerate(targets):
            boxes = t['boxes'].to(centres.device, torch.float32)
            if len(boxes) == 0 or not valid[i].any():
                continue
            xyxy = box_convert(boxes, 'cxcywh', 'xyxy')
            x, y = centres[i, :, None, 0], centres[i, :, None, 1]
            claims = ((x > xyxy[:, 0]) & (x < xyxy[:, 2]) & (y > xyxy[:, 1]) & (y < xyxy[:, 3])
                      & valid[i, :, None])  # (S, N)
            empty = (~claims.any(0)).nonzero()[:, 0]
            if len(empty):
                # The nearest centre in normalised coordinates is the nearest in pixels too: the
                # grid is rows x columns, so each axis is minimised on its own whatever its scale.
                distance = (centres[i, :, None] - boxes[None, empty, :2]).square().sum(-1)
                nearest = distance.masked_fill(~valid[i, :, None], float('inf')).argmin(0)
                claims[nearest, empty] = True
            area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(claims).masked_fill(~claims, float('inf'))
            best = area.argmin(1)
            hit = claims.any(1)
            index[i] = torch.where(hit, best, -1)
            matched[i, hit] = boxes[best[hit]]
        return index, matched

    def loss(self, out: dict, targets: list[dict]) -> dict:
        """Focal classification over the valid positions, L1 and GIoU on the positive ones, each
        normalised by the number of positive positions (averaged over processes, at least 1)."""
        index, matched = self.assign(out['centres'], targets, out['valid'])
        logits, valid = out['logits'].float(), out['valid']
        onehot = torch.zeros_like(logits)
        positive = index >= 0
        for i, t in enumerate(targets):
            if positive[i].any():
                onehot[i, positive[i], t['labels'].to(logits.device)[index[i, positive[i]]]] = 1.0
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1).item()
        focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction='none')
        losses = dict(loss_class=(focal * valid[..., None]).sum() / num_pos)
        src, tgt = out['boxes'][positive].float(), matched[positive]
        losses['loss_bbox'] = (src - tgt).abs().sum() / num_pos
        giou = torch.diag(generalized_box_iou(box_convert(src, 'cxcywh', 'xyxy'), box_convert(tgt, 'cxcywh', 'xyxy')))
        losses['loss_giou'] = (1 - giou).sum() / num_pos
        return {f'dense.{k}': v * self.weights[k] for k, v in losses.items()}
