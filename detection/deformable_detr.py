"""Deformable DETR (Zhu et al., 2021) on any backbone: multi-scale deformable attention over four
levels, sigmoid focal classification, optional box refinement and two-stage proposals."""
import copy
import math

import torch
from torch import nn

from zoo.layers.linear import Linear

from .backbone import backbone_maps, build_backbone, downsample_mask
from .checkpoints import convert_hf_deformable_detr  # noqa: F401  (its home before checkpoints.py)
from .deformable_transformer import DeformableTransformer, refine_boxes
from .denoising import DenoisingQueries
from .dense_head import FCOSDenseHead
from .detr import MLP, build_denoising, pack_outputs, training_denoising
from .neck import MultiScaleNeck
from .position_encoding import SinePositionEncoding


class DeformableDETR(nn.Module):
    """images (B, 3, H, W) and padding mask (B, H, W) True on padding -> dict(pred_logits
    (B, Q, C) (sigmoid scores, no no-object slot), pred_boxes (B, Q, 4) cxcywh normalised by each
    image's un-padded size, aux_outputs (one dict per earlier decoder layer), and in two-stage mode
    enc_outputs (B, S, C) / (B, S, 4): the encoder's per-pixel proposals).

    ``denoising`` switches on query denoising for training (DN-Deformable-DETR; see ``DETR``):
    each denoising query samples around its noised box as reference (its centre when the
    matching queries' references are points), and comes back in ``dn_outputs``.

    ``vitdet_pyramid``: a single-map backbone's simple pyramid levels take ViTDet's 1x1 + LN,
    3x3 + LN convolutions (:class:`~detection.neck.ViTDetLevelProjection`) instead of a 1x1 conv
    + GroupNorm (off by default so earlier checkpoints keep their layout; on in the ViT-family
    configs).

    ``dense_aux`` (True, or a dict of ``FCOSDenseHead`` arguments plus ``stride``, 32 unless
    given) adds DETR's FCOS-style dense head (see ``DETR``) for training, on the encoder memory of
    one level, the one whose stride is nearest ``stride`` (the stride of DETR's map), with that
    level's padding: ``dense_outputs``, trained by the head's own ``loss``. One level, not all:
    the head has none of FCOS's per-level size ranges, so on every level at once a box would get
    many times more positives on the fine levels than on the coarse ones.

    ``backbone`` is a dict for ``build_backbone`` (its ``out_indices`` choose the maps: ResNet-50
    C3-C5, CvT's stride-8/16 stages) or a module with ``feature_info``; a single-map backbone gets
    a simple feature pyramid (see ``MultiScaleNeck``).
    """

    def __init__(self, backbone: dict | nn.Module, num_classes: int, num_queries: int = 300,
                 hidden_dim: int = 256, num_heads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 ffn_dim: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
                 enc_points: int = 4, dec_points: int = 4, with_box_refine: bool = False,
                 two_stage: bool = False, aux_loss: bool = True,
                 denoising: bool | dict | None = None, dense_aux: bool | dict | None = None,
                 vitdet_pyramid: bool = False):
        super().__init__()
        self.backbone = build_backbone(**backbone) if isinstance(backbone, dict) else backbone
        self.num_classes, self.aux_loss = num_classes, aux_loss
        self.with_box_refine, self.two_stage = with_box_refine, two_stage
        self.neck = MultiScaleNeck(self.backbone.feature_info, hidden_dim, num_feature_levels,
                                   vitdet_convs=vitdet_pyramid)
        self.position = SinePositionEncoding(hidden_dim // 2, offset=-0.5)
        self.transformer = DeformableTransformer(
            hidden_dim, num_heads, enc_layers, dec_layers, ffn_dim, dropout, num_feature_levels,
            enc_points, dec_points, two_stage=two_stage, num_proposals=num_queries)
        if not two_stage:
            # query position and content embedding, split in the transformer
            self.query_embed = nn.Embedding(num_queries, 2 * hidden_dim)
        self.class_embed, self.bbox_embed = self._heads(hidden_dim, num_classes, dec_layers)
        self.denoising = build_denoising(denoising, num_classes, hidden_dim)
        self.dense_head, self.dense_level = None, None
        if dense_aux:
            options = {} if dense_aux is True else dict(dense_aux)
            stride = options.pop('stride', 32)
            strides = self.neck.strides
            self.dense_level = min(range(len(strides)), key=lambda i: abs(strides[i] - stride))
            self.dense_head = FCOSDenseHead(hidden_dim, num_classes, **options)

    def _heads(self, hidden_dim, num_classes, dec_layers):
        """One class and box head per decoder layer (+1 for the two-stage encoder), shared unless
        boxes are refined; initialised as the official code (focal prior 0.01, zero box deltas,
        small initial sides without refinement's later layers or two-stage anchors)."""
        num_pred = dec_layers + int(self.two_stage)
        class_head = Linear(hidden_dim, num_classes)
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
        box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        if self.with_box_refine:
            class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
            box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
            nn.init.constant_(box_heads[0].layers[-1].bias[2:], -2.0)
        else:
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
            class_heads = nn.ModuleList([class_head] * num_pred)
            box_heads = nn.ModuleList([box_head] * num_pred)
        if self.two_stage:  # the anchors already carry the size
            for head in box_heads:
                nn.init.zeros_(head.layers[-1].bias[2:])
        return class_heads, box_heads

    def forward(self, images: torch.Tensor, mask: torch.Tensor, targets: list[dict] | None = None,
                denoising: DenoisingQueries | None = None) -> dict:
        """``targets`` (training only) feed query denoising; ``denoising`` gives the denoising
        queries explicitly instead (tests)."""
        denoising = training_denoising(self, targets, denoising)
        # A token backbone gives each image its own features in a padded batch; the neck keeps
        # that. ResNet-50 keeps the official behaviour (norms over the padded maps).
        levels = self.neck(backbone_maps(self.backbone, images, mask),
                           mask if getattr(self.backbone, 'batch_invariant', False) else None)
        masks = [downsample_mask(mask, x.shape[-2:]) for x in levels]
        pos = [self.position(m).to(x.dtype) for m, x in zip(masks, levels)]
        query_embed = None if self.two_stage else self.query_embed.weight
        decoded = self.transformer(levels, masks, pos, query_embed, self.class_embed, self.bbox_embed,
                                   refine=self.with_box_refine, denoising=denoising)
        states, references = decoded['states'], decoded['references']
        logits = torch.stack([head(s) for head, s in zip(self.class_embed, states)])
        boxes = torch.stack([refine_boxes(head(s), ref)
                             for head, s, ref in zip(self.bbox_embed, states, references)])
        out = pack_outputs(logits, boxes, self.aux_loss, denoising)
        if self.two_stage:
            out['enc_outputs'] = dict(pred_logits=decoded['enc_logits'], pred_boxes=decoded['enc_boxes'])
        if self.dense_head is not None and self.training:
            out['dense_outputs'] = self._dense_outputs(decoded['memory'], masks)
        return out

    def _dense_outputs(self, memory: torch.Tensor, masks: list[torch.Tensor]) -> dict:
        """memory (B, S, D), every level's positions flattened in order; masks: per level
        (B, h, w) True on padding -> the dense head's outputs on level ``dense_level``."""
        start = sum(math.prod(m.shape[-2:]) for m in masks[:self.dense_level])
        mask = masks[self.dense_level]
        return self.dense_head(memory[:, start:start + math.prod(mask.shape[-2:])], mask)
