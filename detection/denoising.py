"""Query denoising (DN-DETR, Li et al., CVPR 2022; contrastive groups from DINO, Zhang et al.,
ICLR 2023): ground truth with noise added is fed to the decoder as extra queries during training,
and each such query learns to reconstruct its own box and class, with no Hungarian matching.

Early in training, bipartite matching flips a query between objects from one step to the next, so
the decoder gets contradictory targets; the denoising queries always own their object and give
the decoder (and through it the encoder and backbone) a stable localisation task from step one.
Inference is unchanged: the denoising queries exist only in training.

Layout of the decoder's queries in training: ``[group 0 | group 1 | ... | group G-1 | matching]``.
Each group holds ``group_size`` queries: one per ground-truth box of the image with the most
boxes (images with fewer are padded), doubled with ``contrastive=True`` (positives first, then
negatives). The self-attention mask stops the matching queries from seeing any denoising query
(they would otherwise read the answers, which inference does not have) and each group from
seeing the others; a group sees itself and the matching queries.
"""
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers.mlp import Mlp

from .position_encoding import box_position_encoding


@dataclass
class DenoisingQueries:
    """Denoising queries for a batch of B images, P = num_groups * group_size of them per image.

    content (B, P, D): embedding of the noised label with a denoising indicator (zeros on padding);
    boxes (B, P, 4): noised boxes, normalised cxcywh (zeros on padding);
    query_pos (B, P, D): the noised box's sine encoding, projected;
    target_index (B, P) int64: the ground-truth box each query reconstructs, -1 on padding;
    positive (B, P) bool: queries trained to reconstruct their box (contrastive negatives and
    padding are False); valid (B, P) bool: queries that are trained at all (not padding).
    """
    content: torch.Tensor
    boxes: torch.Tensor
    query_pos: torch.Tensor
    target_index: torch.Tensor
    positive: torch.Tensor
    valid: torch.Tensor
    num_groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * self.group_size

    def attn_mask(self, num_matching: int, matching_groups: int = 1) -> torch.Tensor:
        """The decoder self-attention mask for these queries followed by ``num_matching`` others
        (in ``matching_groups`` groups)."""
        return denoising_attn_mask(self.num_groups, self.group_size, num_matching, matching_groups,
                                   self.content.device)

    def matching_indices(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed assignment that replaces Hungarian matching: per image (query indices,
        target indices) of the positive queries."""
        out = []
        for pos, tgt in zip(self.positive.cpu(), self.target_index.cpu()):
            queries = pos.nonzero().flatten()
            out.append((queries, tgt[queries]))
        return out


def noise_labels(labels: torch.Tensor, num_classes: int, ratio: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Each label is replaced by a uniformly random class (possibly itself) with probability
    ``ratio`` (DN-DETR's label flipping, default 0.2)."""
    if ratio <= 0 or labels.numel() == 0:
        return labels
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < ratio
    random = torch.randint(0, num_classes, labels.shape, generator=generator, device=labels.device)
    return torch.where(flip, random, labels)


def noise_boxes(boxes: torch.Tensor, scale: float, negative: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """boxes (N, 4) normalised cxcywh -> noised, clipped to [0, 1].

    DN-DETR's box noise with lambda = ``scale``: the centre moves by up to lambda/2 of the width and
    height, each side is scaled by a factor in [1 - lambda, 1 + lambda]. With ``negative`` the
    relative noise is drawn from [lambda, 2 lambda) in magnitude instead of [0, lambda) (DINO's
    contrastive negatives: far enough from the object to be trained as "no object")."""
    if scale <= 0 or boxes.numel() == 0:
        return boxes
    u = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype)
    sign = torch.where(torch.rand(boxes.shape, generator=generator, device=boxes.device) < 0.5, -1.0, 1.0)
    noise = sign.to(boxes) * (u + 1.0 if negative else u)  # |noise| in [0, 1) or [1, 2)
    wh = boxes[:, 2:]
    diff = torch.cat([wh / 2, wh], -1)
    return (boxes + noise * diff * scale).clamp(0.0, 1.0)


def denoising_attn_mask(num_groups: int, group_size: int, num_matching: int,
                        matching_groups: int = 1, device=None) -> torch.Tensor:
    """(P + Q, P + Q) bool, True = blocked: matching rows see no denoising column; a group's rows
    see their own group and the matching queries, never another group. With ``matching_groups``
    G > 1 (Group DETR) the Q matching queries are G groups of Q / G that see only their own group."""
    p = num_groups * group_size
    mask = torch.zeros(p + num_matching, p + num_matching, dtype=torch.bool, device=device)
    mask[p:, :p] = True
    blocks = [(g * group_size, group_size) for g in range(num_groups)]
    size = num_matching // matching_groups
    if matching_groups > 1:
        blocks += [(p + g * size, size) for g in range(matching_groups)]
        mask[p:, p:] = True
    for start, n in blocks:
        rows = slice(start, start + n)
        if start < p:
            mask[rows, :p] = True
        mask[rows, rows] = False
    return mask


class QueryDenoising(nn.Module):
    """Builds the denoising queries from a batch's targets.

    forward(targets: per image ``labels`` (N_i,), ``boxes`` (N_i, 4) normalised cxcywh)
    -> ``DenoisingQueries``, or None when no image of the batch has a box.

    Defaults are DN-DETR's: 5 groups, label flipping 0.2, box noise lambda 0.4. With
    ``contrastive=True`` each group also holds a negative copy of every box with larger noise,
    trained to predict no object (DINO). ``label_embed`` embeds the noised label in D - 1
    channels, the last channel is the indicator (1 on denoising queries); ``pos_head`` maps the
    noised box's sine encoding (4 x D/2) to the query position, as DAB-DETR embeds anchors
    (a detector with anchor queries passes its own head, so both kinds of query share it).
    """

    def __init__(self, num_classes: int, hidden_dim: int, num_groups: int = 5,
                 label_noise: float = 0.2, box_noise: float = 0.4, contrastive: bool = False,
                 pos_head: nn.Module | None = None):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f'denoising needs num_groups >= 1, got {num_groups}')
        self.num_classes, self.hidden_dim = num_classes, hidden_dim
        self.num_groups, self.label_noise, self.box_noise = num_groups, label_noise, box_noise
        self.contrastive = contrastive
        self.label_embed = nn.Embedding(num_classes, hidden_dim - 1)
        if pos_head is None:
            self.pos_head = Mlp(2 * hidden_dim, hidden_dim, hidden_dim, act_layer=nn.ReLU)
        else:  # the detector's: held, not registered, so no parameter belongs to two modules
            object.__setattr__(self, 'pos_head', pos_head)

    def embed(self, labels: torch.Tensor, boxes: torch.Tensor, real: torch.Tensor):
        """labels (B, P), boxes (B, P, 4) cxcywh, real (B, P) bool -> content and query_pos
        (B, P, D); padding (not ``real``) gets zero content and the position of a zero box."""
        content = torch.cat([self.label_embed(labels), torch.ones_like(boxes[..., :1])], -1)
        content = content * real[..., None]
        unact = torch.logit(boxes.clamp(1e-4, 1 - 1e-4))
        return content, self.pos_head(box_position_encoding(unact, self.hidden_dim // 2))

    def forward(self, targets: list[dict],
                generator: torch.Generator | None = None) -> DenoisingQueries | None:
        counts = [len(t['labels']) for t in targets]
        n_max = max(counts, default=0)
        if n_max == 0:
            return None
        device = self.label_embed.weight.device
        b, copies = len(targets), 2 if self.contrastive else 1
        group_size = n_max * copies
        p = self.num_groups * group_size
        labels = torch.zeros(b, p, dtype=torch.int64, device=device)
        boxes = torch.zeros(b, p, 4, device=device)
        target_index = torch.full((b, p), -1, dtype=torch.int64, device=device)
        positive = torch.zeros(b, p, dtype=torch.bool, device=device)
        valid = torch.zeros(b, p, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            n = counts[i]
            if n == 0:
                continue
            gt_labels, gt_boxes = t['labels'].to(device), t['boxes'].to(device, torch.float32)
            for g in range(self.num_groups):
                for c in range(copies):
                    start = g * group_size + c * n_max
                    sl = slice(start, start + n)
                    labels[i, sl] = noise_labels(gt_labels, self.num_classes, self.label_noise, generator)
                    boxes[i, sl] = noise_boxes(gt_boxes, self.box_noise, negative=c == 1, generator=generator)
                    target_index[i, sl] = torch.arange(n, device=device)
                    positive[i, sl] = c == 0
                    valid[i, sl] = True
        content, query_pos = self.embed(labels, boxes, valid)
        return DenoisingQueries(content, boxes, query_pos, target_index, positive, valid,
                                self.num_groups, group_size)


def split_denoising(tensor: torch.Tensor, dn: DenoisingQueries | None):
    """(..., P + Q, X) decoder output -> (denoising part (..., P, X) or None, matching part)."""
    if dn is None:
        return None, tensor
    return tensor[..., :dn.num_queries, :], tensor[..., dn.num_queries:, :]
