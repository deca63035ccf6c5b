"""An auxiliary dense head on the encoder output, for training only (the collaborative one-to-many
heads of Co-DETR, Zong et al., ICCV 2023, in their simplest anchor-free form).

DETR's backbone and encoder learn only through the decoder's cross-attention, which is nearly
uniform early in training: on a small data set from scratch the features stay undiscriminating for
a long, seed-dependent plateau. Here every encoder position inside a ground-truth box is trained
to tell that box's class and to regress the box, so backbone and encoder get a dense, stable
localisation signal from the first step. The head is dropped at inference; nothing else changes.
"""
import torch
from einops import rearrange
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from zoo.layers.mlp import Mlp
from zoo.layers.linear import Linear

from .distributed import all_reduce_mean


class DenseAuxHead(nn.Module):
    """memory (B, S, D) of an h x w map, padding (B, S) True on padding -> dict(logits (B, S, C),
    boxes (B, S, 4) normalised cxcywh, centres (B, S, 2), valid (B, S)).

    Boxes are predicted as a change, in inverse-sigmoid space, of an anchor of side ``anchor_side``
    centred on the position (as Deformable DETR's two-stage proposals).
    """

    def __init__(self, hidden_dim: int, num_classes: int, anchor_side: float = 0.25,
                 weight_class: float = 2.0, weight_bbox: float = 5.0, weight_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.class_head = Linear(hidden_dim, num_classes)
        # focal prior 0.01: logit(0.01) = -4.5951 to 3 decimals, the value the README's runs used
        nn.init.constant_(self.class_head.bias, -4.595)
        self.box_head = Mlp(hidden_dim, hidden_dim, 4, act_layer=nn.ReLU)
        nn.init.zeros_(self.box_head.fc2.weight)  # first predictions: the anchors
        nn.init.zeros_(self.box_head.fc2.bias)
        self.anchor_side = anchor_side
        self.weights = dict(loss_class=weight_class, loss_bbox=weight_bbox, loss_giou=weight_giou)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @staticmethod
    def centres(padding: torch.Tensor) -> torch.Tensor:
        """padding (B, h, w) -> (B, h * w, 2) position centres (x, y) normalised by the valid extent."""
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

    def assign(self, centres: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """A position is assigned the smallest target box that contains its centre. -> index (B, S)
        of that box (-1: background) and the matched boxes (B, S, 4) (zeros on background)."""
        index = torch.full(centres.shape[:2], -1, dtype=torch.int64, device=centres.device)
        matched = torch.zeros(*centres.shape[:2], 4, device=centres.device)
        for i, t in enumerate(targets):
            boxes = t['boxes'].to(centres.device, torch.float32)
            if len(boxes) == 0:
                continue
            xyxy = box_convert(boxes, 'cxcywh', 'xyxy')
            x, y = centres[i, :, None, 0], centres[i, :, None, 1]
            inside = (x > xyxy[:, 0]) & (x < xyxy[:, 2]) & (y > xyxy[:, 1]) & (y < xyxy[:, 3])  # (S, N)
            area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(inside).masked_fill(~inside, float('inf'))
            best = area.argmin(1)
            hit = inside.any(1)
            index[i] = torch.where(hit, best, -1)
            matched[i, hit] = boxes[best[hit]]
        return index, matched

    def loss(self, out: dict, targets: list[dict]) -> dict:
        """Focal classification over the valid positions, L1 and GIoU on the positive ones, each
        normalised by the number of positive positions (averaged over processes, at least 1)."""
        index, matched = self.assign(out['centres'], targets)
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
