"""Set prediction losses of DETR (cross-entropy) and Deformable DETR (sigmoid focal)."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .distributed import all_reduce_mean


class SetCriterion(nn.Module):
    """Losses over matched (query, target) pairs, for the final and every auxiliary output.

    Classification: DETR's cross-entropy over C+1 classes with ``eos_coef`` weighting the
    no-object class (the weighted mean over the queries of all processes), or with ``focal=True``
    sigmoid focal loss over C classes (no no-object slot).
    Boxes: L1 on normalised cxcywh and 1 - GIoU, summed over matches and divided by the number of
    target boxes averaged over processes (at least 1), so every box weighs the same everywhere.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_class: float = 1.0,
                 weight_bbox: float = 5.0, weight_giou: float = 2.0, eos_coef: float = 0.1,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes, self.matcher, self.focal = num_classes, matcher, focal
        self.weights = dict(loss_class=weight_class, loss_bbox=weight_bbox, loss_giou=weight_giou)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer('empty_weight', empty_weight, persistent=False)

    def loss_class(self, logits, targets, indices, num_boxes, valid=None):
        """logits (B, Q, C+1) or (B, Q, C) with focal; queries not in ``indices`` are trained as
        no object; ``valid`` (B, Q) bool, if given, leaves the other queries out (the padding of
        query denoising)."""
        b, q = logits.shape[:2]
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=logits.device)
        for i, (src, tgt) in enumerate(indices):
            target_classes[i, src.to(logits.device)] = targets[i]['labels'].to(logits.device)[tgt]
        if valid is not None:
            valid = valid.to(logits.device)
            logits, target_classes = logits[valid][None], target_classes[valid][None]
        if not self.focal:
            loss = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight)
            # That is a weighted mean over this process's queries, with weights that depend on
            # how many of them were matched; rescaled to the weight sum of all processes, DDP's
            # average of the gradients is the whole batch's (the official code's is not: see the
            # 2-process test in tests/detection/test_detection_pipeline.py). One process: times exactly 1.
            weight = self.empty_weight[target_classes].sum()
            return loss * (weight / all_reduce_mean(weight))
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        loss = sigmoid_focal_loss(logits.float(), onehot.float(), self.focal_alpha, self.focal_gamma,
                                  reduction='none')
        # Deformable DETR's normalisation: summed over queries and classes, per target box.
        return loss.sum() / num_boxes

    @staticmethod
    def loss_boxes(pred_boxes, targets, indices, num_boxes):
        """pred_boxes (B, Q, 4) normalised cxcywh -> (L1, GIoU) losses."""
        src = torch.cat([pred_boxes[i, s] for i, (s, _) in enumerate(indices)]).float()
        tgt = torch.cat([t['boxes'][j] for t, (_, j) in zip(targets, indices)]).to(src)
        l1 = F.l1_loss(src, tgt, reduction='none').sum() / num_boxes
        giou = torch.diag(generalized_box_iou(box_convert(src, 'cxcywh', 'xyxy'),
                                              box_convert(tgt, 'cxcywh', 'xyxy')))
        return l1, (1 - giou).sum() / num_boxes

    def single(self, outputs: dict, targets: list[dict], num_boxes: float, indices=None,
               valid=None) -> dict:
        """One decoder layer's losses; ``indices`` (query, target) pairs per image, matched here
        when not given (query denoising gives them)."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        l1, giou = self.loss_boxes(outputs['pred_boxes'], targets, indices, num_boxes)
        return dict(loss_class=self.loss_class(outputs['pred_logits'], targets, indices, num_boxes, valid),
                    loss_bbox=l1, loss_giou=giou)

    def denoising_losses(self, dn_outputs: dict, targets: list[dict], num_boxes: float) -> dict:
        """Query denoising (DN-DETR): every denoising query is trained on the box it was made from,
        no matching; negatives (contrastive) as no object; padding left out. The same losses and
        weights as the matching part, on the final and every auxiliary layer, normalised by the
        number of positive denoising queries (target boxes x groups)."""
        queries = dn_outputs['queries']
        indices, valid = queries.matching_indices(), queries.valid
        num_dn = num_boxes * queries.num_groups
        layers = {'dn.': dn_outputs}
        layers.update({f'dn.d{i}.': aux for i, aux in enumerate(dn_outputs.get('aux_outputs', []))})
        return {prefix + name: value * self.weights[name]
                for prefix, out in layers.items()
                for name, value in self.single(out, targets, num_dn, indices, valid).items()}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """outputs: pred_logits, pred_boxes, optional aux_outputs (list of the same per decoder
        layer), enc_outputs (two-stage) and dn_outputs (query denoising); targets: per image
        labels (N,), boxes (N, 4). Returns weighted losses: loss_class, loss_bbox, loss_giou,
        d{i}.* per auxiliary layer, enc.* and dn.* / dn.d{i}.*."""
        device = outputs['pred_boxes'].device
        num_boxes = torch.tensor(float(sum(len(t['labels']) for t in targets)), device=device)
        num_boxes = all_reduce_mean(num_boxes).clamp(min=1).item()
        losses = {}
        if 'dn_outputs' in outputs:
            losses.update(self.denoising_losses(outputs['dn_outputs'], targets, num_boxes))
        parts = {'': outputs}
        parts.update({f'd{i}.': aux for i, aux in enumerate(outputs.get('aux_outputs', []))})
        if 'enc_outputs' in outputs:
            parts['enc.'] = outputs['enc_outputs']
        for prefix, out in parts.items():
            tgts = targets
            if prefix == 'enc.':  # two-stage proposals are class-agnostic
                tgts = [dict(t, labels=torch.zeros_like(t['labels'])) for t in targets]
            for name, value in self.single(out, tgts, num_boxes).items():
                losses[prefix + name] = value * self.weights[name]
        return losses
