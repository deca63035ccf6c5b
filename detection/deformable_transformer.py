"""Deformable DETR's encoder-decoder: multi-scale deformable attention in the encoder and in the
decoder's cross-attention, with iterative box refinement and two-stage proposals as options."""
import copy

import torch
from einops import rearrange
from torch import nn

from zoo.layers.mlp import Mlp
from zoo.layers.linear import Linear

from .attention import MultiheadAttention
from .ms_deform_attn import MSDeformAttn
from .position_encoding import box_position_encoding


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both odds terms to >= eps (finite at 0 and 1)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _ffn(dim: int, ffn_dim: int, dropout: float) -> Mlp:
    # Linear -> ReLU -> dropout -> Linear -> dropout: the official feed-forward exactly.
    return Mlp(dim, ffn_dim, act_layer=nn.ReLU, drop=dropout)


class DeformableEncoderLayer(nn.Module):
    """src (N, S, D), pos (N, S, D), reference_points (N, S, L, 2), padding (N, S) -> (N, S, D);
    post-norm."""

    def __init__(self, dim, heads, ffn_dim, dropout, num_levels, num_points):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, heads, num_points)
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = _ffn(dim, ffn_dim, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding)
        src = self.norm1(src + self.drop(attn))
        return self.norm2(src + self.ffn(src))


class DeformableDecoderLayer(nn.Module):
    """tgt (N, Q, D), query_pos (N, Q, D), reference_points (N, Q, L, 2|4), memory (N, S, D),
    padding (N, S), self_attn_mask (Q, Q) bool True where blocked (query denoising) -> (N, Q, D):
    self-attention among queries, deformable cross-attention to the memory, feed-forward; post-norm."""

    def __init__(self, dim, heads, ffn_dim, dropout, num_levels, num_points):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(dim, num_levels, heads, num_points)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = _ffn(dim, ffn_dim, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index,
                padding, self_attn_mask=None):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, k, tgt, attn_mask=self_attn_mask,
                                                         need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                               level_start_index, padding)
        tgt = self.norm2(tgt + self.drop2(attn))
        return self.norm3(tgt + self.ffn(tgt))


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Every pixel centre of every level as a reference point for every level.

    valid_ratios (N, L, 2) as (w, h) fractions of un-padded extent -> (N, S, L, 2) normalised
    (x, y): normalised by the valid extent of its own level, then rescaled by each level's
    valid ratio, so a point means the same image location on every level.
    """
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        # arange, not linspace: its length may be a traced size (ONNX export)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            indexing='ij')
        xs = xs.reshape(1, -1) / (valid_ratios[:, None, level, 0] * w)
        ys = ys.reshape(1, -1) / (valid_ratios[:, None, level, 1] * h)
        points.append(torch.stack([xs, ys], -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def encoder_proposals(padding: torch.Tensor, spatial_shapes: list[tuple[int, int]]):
    """Two-stage anchors: a box at every pixel of every level, (N, S, 4) in inverse-sigmoid space,
    side 0.05 * 2**level, centres normalised by the valid extent; and valid (N, S, 1), False on
    padding and on anchors touching the border, which are set to +inf (their sigmoid is 1)."""
    anchors, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        level_pad = padding[:, start:start + h * w].reshape(-1, h, w)
        valid_hw = torch.stack([(~level_pad[:, 0, :]).sum(1), (~level_pad[:, :, 0]).sum(1)], -1)
        ys, xs = torch.meshgrid(torch.arange(h, device=padding.device, dtype=torch.float32),
                                torch.arange(w, device=padding.device, dtype=torch.float32), indexing='ij')
        centres = (torch.stack([xs, ys], -1)[None] + 0.5) / valid_hw[:, None, None, :]
        sides = torch.full_like(centres, 0.05 * 2.0 ** level)
        anchors.append(torch.cat([centres, sides], -1).flatten(1, 2))
        start += h * w
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True) & ~padding[..., None]
    anchors = torch.log(anchors / (1 - anchors)).masked_fill(~valid, float('inf'))
    return anchors, valid


class DeformableTransformer(nn.Module):
    """Encoder over the flattened levels, then a decoder whose queries sample around reference
    points: learned (from the query embedding) or, in two-stage mode, the encoder's top-scoring
    proposals.

    forward(srcs, masks, pos_embeds: per level (N, D, H, W), (N, H, W) True on padding,
    (N, D, H, W); query_embed (Q, 2D) (not in two-stage); heads for refinement / two-stage;
    denoising: ``DenoisingQueries`` whose P queries go before the Q others)
    -> dict(memory (N, S, D): the encoder output, the levels flattened in order; states
    (Ld, N, [P +] Q, D), references: Ld tensors (N, [P +] Q, 2|4), each layer's input reference
    (points become boxes after the first refinement), and in two-stage enc_logits (N, S, C),
    enc_boxes (N, S, 4)).
    """

    def __init__(self, dim=256, heads=8, enc_layers=6, dec_layers=6, ffn_dim=1024, dropout=0.1,
                 num_levels=4, enc_points=4, dec_points=4, two_stage=False, num_proposals=300):
        super().__init__()
        self.dim, self.two_stage, self.num_proposals = dim, two_stage, num_proposals
        enc = DeformableEncoderLayer(dim, heads, ffn_dim, dropout, num_levels, enc_points)
        dec = DeformableDecoderLayer(dim, heads, ffn_dim, dropout, num_levels, dec_points)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(dec_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        if two_stage:
            self.enc_output = Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.pos_trans = Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
        else:
            self.reference_points = Linear(dim, 2)
        self.reset_parameters()

    def reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
        """mask (N, H, W) True on padding -> (N, 2): un-padded fraction of width and height."""
        h, w = mask.shape[-2:]
        valid_h = (~mask[:, :, 0]).sum(1).float() / h
        valid_w = (~mask[:, 0, :]).sum(1).float() / w
        return torch.stack([valid_w, valid_h], -1)

    def encode(self, srcs, masks, pos_embeds):
        """-> memory (N, S, D), padding (N, S), spatial_shapes list, its tensor (L, 2),
        level_start_index (L,), valid_ratios (N, L, 2)."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([rearrange(s, 'n d h w -> n (h w) d') for s in srcs], 1)
        padding = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat([rearrange(p, 'n d h w -> n (h w) d') + self.level_embed[i]
                         for i, p in enumerate(pos_embeds)], 1)
        if torch.jit.is_tracing():  # the sizes are traced tensors: keep them so (dynamic export)
            shapes_t = torch.stack([torch.stack([h, w]) for h, w in shapes]).long().to(src.device)
        else:
            shapes_t = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        starts = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
        ratios = torch.stack([self.valid_ratios(m) for m in masks], 1).to(src.dtype)
        refs = encoder_reference_points(shapes, ratios)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, refs, shapes_t, starts, padding)
        return memory, padding, shapes, shapes_t, starts, ratios

    def decode(self, tgt, query_pos, reference_points, memory, padding, shapes_t, starts, ratios,
               box_heads=None, self_attn_mask=None):
        """Runs the decoder; with ``box_heads`` (one per layer) each layer's box delta refines the
        reference for the next layer (in inverse-sigmoid space, detached, as the official code).
        -> states (Ld, N, Q, D) and the list of each layer's input references (N, Q, 2|4)."""
        states, references = [], []
        for i, layer in enumerate(self.decoder):
            # A reference normalised to the padded input, rescaled per level to its valid extent.
            scale = ratios if reference_points.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
            tgt = layer(tgt, query_pos, reference_points[:, :, None] * scale[:, None], memory,
                        shapes_t, starts, padding, self_attn_mask)
            states.append(tgt)
            references.append(reference_points)
            if box_heads is not None:
                reference_points = refine_boxes(box_heads[i](tgt), reference_points).detach()
        return torch.stack(states), references

    def two_stage_queries(self, memory, padding, shapes, class_head, box_head):
        """Scores and regresses an anchor at every encoder position with the extra heads, keeps
        the top ``num_proposals`` as reference boxes (detached) and embeds them as the queries.
        -> query_pos, tgt (N, Q, D), reference boxes (N, Q, 4), enc_logits (N, S, C),
        enc_boxes (N, S, 4)."""
        anchors, valid = encoder_proposals(padding, shapes)
        features = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid, 0.0)))
        enc_logits = class_head(features)
        enc_boxes_unact = box_head(features) + anchors.to(features.dtype)
        k = min(self.num_proposals, enc_boxes_unact.shape[1])
        top = enc_logits[..., 0].topk(k, dim=1).indices
        top_boxes = torch.gather(enc_boxes_unact, 1, top[..., None].expand(-1, -1, 4)).detach()
        embedded = self.pos_trans_norm(self.pos_trans(box_position_encoding(top_boxes, self.dim // 2)))
        query_pos, tgt = embedded.split(self.dim, -1)
        return query_pos, tgt, top_boxes.sigmoid(), enc_logits, enc_boxes_unact.sigmoid()

    def forward(self, srcs, masks, pos_embeds, query_embed=None, class_heads=None, box_heads=None,
                refine=False, denoising=None):
        memory, padding, shapes, shapes_t, starts, ratios = self.encode(srcs, masks, pos_embeds)
        out = dict(memory=memory)  # for the training-only dense head (DeformableDETR's dense_aux)
        if self.two_stage:  # the extra (last) heads belong to the encoder
            query_pos, tgt, reference_points, out['enc_logits'], out['enc_boxes'] = \
                self.two_stage_queries(memory, padding, shapes, class_heads[-1], box_heads[-1])
        else:
            query_pos, tgt = query_embed.split(self.dim, -1)
            n = memory.shape[0]
            query_pos, tgt = query_pos.expand(n, -1, -1), tgt.expand(n, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        attn_mask = None
        if denoising is not None:  # DN-Deformable-DETR: the noised box is the query's reference
            dn = denoising
            dn_reference = dn.boxes if reference_points.shape[-1] == 4 else dn.boxes[..., :2]
            tgt = torch.cat([dn.content.to(tgt), tgt], 1)
            query_pos = torch.cat([dn.query_pos.to(query_pos), query_pos], 1)
            reference_points = torch.cat([dn_reference.to(reference_points), reference_points], 1)
            attn_mask = dn.attn_mask(tgt.shape[1] - dn.num_queries)
        out['states'], out['references'] = self.decode(
            tgt, query_pos, reference_points, memory, padding, shapes_t, starts, ratios,
            box_heads if refine else None, attn_mask)
        return out


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """delta (..., 4) in inverse-sigmoid space added to a reference point (..., 2) (centre only)
    or box (..., 4) -> boxes (..., 4) normalised cxcywh."""
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
