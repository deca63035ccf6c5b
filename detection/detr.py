"""DETR (Carion et al., 2020): a set predictor on top of any backbone."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchvision.ops import box_convert

from zoo.layers.linear import Linear

from .backbone import backbone_maps, build_backbone, downsample_mask
from .dense_head import FCOSDenseHead
from .denoising import DenoisingQueries, QueryDenoising, split_denoising
from .position_encoding import SinePositionEncoding
from .transformer import Transformer


class MLP(nn.Module):
    """The box head: ``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def build_denoising(denoising: bool | dict | None, num_classes: int, hidden_dim: int):
    """The config switch: None / False (off), True (DN-DETR's defaults) or QueryDenoising's
    arguments as a dict."""
    if not denoising:
        return None
    return QueryDenoising(num_classes, hidden_dim, **({} if denoising is True else denoising))


def training_denoising(net: nn.Module, targets: list[dict] | None,
                       given: DenoisingQueries | None) -> DenoisingQueries | None:
    """The denoising queries of a forward pass: ``given`` ones (tests), else built from
    ``targets`` when ``net`` trains with denoising switched on, else None."""
    if given is None and targets is not None and net.training and net.denoising is not None:
        return net.denoising(targets)
    return given


def pack_outputs(logits: torch.Tensor, boxes: torch.Tensor, aux_loss: bool,
                 dn: DenoisingQueries | None) -> dict:
    """Per decoder layer logits (L, B, P + Q, C) and boxes (L, B, P + Q, 4) -> the output dict:
    the last layer's matching queries, aux_outputs for the earlier layers, and in training with
    query denoising ``dn_outputs`` (the same for the P denoising queries, with their ``queries``)."""
    dn_logits, logits = split_denoising(logits, dn)
    dn_boxes, boxes = split_denoising(boxes, dn)
    out = dict(pred_logits=logits[-1], pred_boxes=boxes[-1])
    if aux_loss:
        out['aux_outputs'] = [dict(pred_logits=l, pred_boxes=b) for l, b in zip(logits[:-1], boxes[:-1])]
    if dn is not None:
        out['dn_outputs'] = dict(pred_logits=dn_logits[-1], pred_boxes=dn_boxes[-1], queries=dn)
        if aux_loss:
            out['dn_outputs']['aux_outputs'] = [dict(pred_logits=l, pred_boxes=b)
                                                for l, b in zip(dn_logits[:-1], dn_boxes[:-1])]
    return out


class DETR(nn.Module):
    """images (B, 3, H, W) and padding mask (B, H, W) -> dict(pred_logits (B, Q, C+1),
    pred_boxes (B, Q, 4) cxcywh normalised by each image's un-padded size, aux_outputs).

    ``denoising`` switches on query denoising (DN-DETR) for training: given ``targets``, noised
    ground truth enters the decoder as extra queries whose predictions come back in
    ``dn_outputs``; the matching queries cannot see them, so inference is unchanged. A denoising
    query's position is its noised box's sine encoding projected (the anchor embedding of
    DAB-DETR, on which DN-DETR builds) and its content the noised label's embedding.

    ``feature_stride`` is the stride of the map the transformer reads. DETR's paper feeds it C5,
    stride 32; its stride-16 DC5 variant buys a little AP for about twice the compute (Carion et
    al., ECCV 2020, Table 1: 43.3 against 42.0 AP, 187 against 86 GFLOPs, R50). A plain ViT's map
    is stride 16, which would give the encoder four times R50's positions and sixteen times its
    attention pairs, so a finer backbone map is max-pooled down to ``feature_stride`` (the
    stride-32 level of ViTDet's simple pyramid). None reads the backbone's map as it is.

    ``dense_aux`` (True, or a dict of ``FCOSDenseHead`` arguments) adds an FCOS-style dense head
    on the encoder output in training: every position inside a box learns its class and box
    (see ``detection.dense_head``), returned as ``dense_outputs`` and trained by the head's own
    ``loss``.
    """

    def __init__(self, backbone: dict | nn.Module, num_classes: int, num_queries: int = 100,
                 hidden_dim: int = 256, num_heads: int = 8, enc_layers: int = 6,
                 dec_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.1,
                 aux_loss: bool = True, denoising: bool | dict | None = None,
                 dense_aux: bool | dict | None = None, feature_stride: int | None = None):
        super().__init__()
        self.backbone = build_backbone(**backbone) if isinstance(backbone, dict) else backbone
        self.num_classes, self.aux_loss = num_classes, aux_loss
        stride = self.backbone.feature_info[-1]['stride']
        feature_stride = feature_stride or stride
        if feature_stride < stride or feature_stride % stride:
            raise ValueError(f'feature_stride {feature_stride} must be a multiple of the backbone '
                             f"map's stride {stride}")
        self.feature_pool = (nn.MaxPool2d(feature_stride // stride) if feature_stride > stride
                             else nn.Identity())
        self.input_proj = nn.Conv2d(self.backbone.feature_info[-1]['channels'], hidden_dim, 1)
        self.position = SinePositionEncoding(hidden_dim // 2)
        self.transformer = Transformer(hidden_dim, num_heads, enc_layers, dec_layers, ffn_dim, dropout)
        self.num_queries = num_queries
        self.class_embed = Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.denoising = build_denoising(denoising, num_classes, hidden_dim)
        self.dense_head = None
        if dense_aux:
            self.dense_head = FCOSDenseHead(hidden_dim, num_classes, **({} if dense_aux is True else dense_aux))

    def forward(self, images: torch.Tensor, mask: torch.Tensor, targets: list[dict] | None = None,
                denoising: DenoisingQueries | None = None) -> dict:
        """``targets`` (training only) feed query denoising; ``denoising`` gives the denoising
        queries explicitly instead (tests)."""
        dn = training_denoising(self, targets, denoising)
        feat = self.feature_pool(backbone_maps(self.backbone, images, mask)[-1])
        mask = downsample_mask(mask, feat.shape[-2:])
        pos = rearrange(self.position(mask), 'b d h w -> b (h w) d')
        src = rearrange(self.input_proj(feat), 'b d h w -> b (h w) d')
        memory = self.transformer.encode(src, mask.flatten(1), pos)
        # query denoising's queries go first, masked from the matching ones
        extra = () if dn is None else (dn.content, dn.query_pos, dn.attn_mask(self.num_queries))
        states = self.transformer.decode(memory, mask.flatten(1), pos, self.query_embed.weight, *extra)
        out = pack_outputs(self.class_embed(states), self.bbox_embed(states).sigmoid(), self.aux_loss, dn)
        if self.dense_head is not None and self.training:
            out['dense_outputs'] = self.dense_head(memory, mask)
        return out


def detections(logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor, focal: bool = False,
               top_k: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-processing as batched tensors (what the exported graph computes): logits (B, Q, C[+1]),
    boxes (B, Q, 4) normalised cxcywh, orig_sizes (B, 2) as (H, W) -> scores (B, K), labels (B, K)
    int64, boxes (B, K, 4) xyxy in pixels of the original image, best first.

    Softmax models (DETR) score each query by its best real class; focal models (Deformable DETR)
    keep the top-k (query, class) pairs. K = min(``top_k``, candidates) (COCO's maxDets).
    """
    logits, boxes = logits.float(), boxes.float()
    b, q = logits.shape[:2]
    if focal:
        prob = logits.sigmoid().flatten(1)
        scores, idx = prob.topk(min(top_k, prob.shape[1]), dim=1)
        labels, query = idx % logits.shape[2], idx // logits.shape[2]
        boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))
    else:
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        if q > top_k:
            scores, keep = scores.topk(top_k, dim=1)
            labels = torch.gather(labels, 1, keep)
            boxes = torch.gather(boxes, 1, keep[..., None].expand(-1, -1, 4))
    h, w = orig_sizes.unbind(1)
    scale = torch.stack([w, h, w, h], 1)[:, None].to(boxes)
    return scores, labels, box_convert(boxes, 'cxcywh', 'xyxy') * scale


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: torch.Tensor, focal: bool = False,
                top_k: int = 100) -> list[dict]:
    """Model outputs -> per image ``scores`` (K,), ``labels`` (K,), ``boxes`` (K, 4) xyxy in pixels
    of the original image; ``orig_sizes`` (B, 2) as (H, W); see :func:`detections`."""
    scores, labels, boxes = detections(outputs['pred_logits'], outputs['pred_boxes'], orig_sizes,
                                       focal, top_k)
    return [dict(scores=s, labels=l, boxes=bx) for s, l, bx in zip(scores, labels, boxes)]
