"""Hungarian matching of predictions to ground truth (DETR, Deformable DETR)."""
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes minimising
    ``cost_class * C_class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)``.

    C_class is DETR's ``-p(target class)`` (softmax over C+1 with a no-object slot), or with
    ``focal=True`` Deformable DETR's focal-loss form on sigmoid scores (no no-object slot).
    Cost matrices are computed batched on the model's device; scipy solves one per image on CPU.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError('all matcher costs are 0: nothing to match on')
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.alpha, self.gamma = focal, alpha, gamma

    def class_cost(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (M, C[+1]), labels (T,) -> (M, T)."""
        if not self.focal:
            return -logits.softmax(-1)[:, labels]
        p = logits.sigmoid()[:, labels]
        neg = (1 - self.alpha) * p ** self.gamma * -(1 - p + 1e-8).log()
        pos = self.alpha * (1 - p) ** self.gamma * -(p + 1e-8).log()
        return pos - neg

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: pred_logits (B, Q, C[+1]), pred_boxes (B, Q, 4) normalised cxcywh;
        targets: per image ``labels`` (N,), ``boxes`` (N, 4) normalised cxcywh.
        Returns per image (query_indices, target_indices), int64, each of length min(Q, N)."""
        logits, boxes = outputs['pred_logits'], outputs['pred_boxes']
        b, q = logits.shape[:2]
        sizes = [len(t['boxes']) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(b)]
        logits, boxes = logits.flatten(0, 1).float(), boxes.flatten(0, 1).float()
        labels = torch.cat([t['labels'] for t in targets]).to(logits.device)
        tgt_boxes = torch.cat([t['boxes'] for t in targets]).to(boxes.device, torch.float32)
        cost = (self.cost_class * self.class_cost(logits, labels)
                + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                - self.cost_giou * generalized_box_iou(box_convert(boxes, 'cxcywh', 'xyxy'),
                                                       box_convert(tgt_boxes, 'cxcywh', 'xyxy')))
        if not torch.isfinite(cost).all():
            raise FloatingPointError('the matching cost has NaN or inf entries: the model produced '
                                     'non-finite logits or boxes (diverged training?)')
        cost = cost.view(b, q, -1).cpu()
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices
