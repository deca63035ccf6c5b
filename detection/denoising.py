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

    def attn_mask(self, num_matching: int) -> torch.Tensor:
        """The decoder self-attention mask (P + Q, P + Q) for these queries followed by
        ``num_matching`` (Q) others."""
        return denoising_attn_mask(self.num_groups, self.group_size, num_matching, self.content.device)

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
    """labels (N,) int64 -> (N,): each label is replaced by a uniformly random class (possibly
    itself) with probability ``ratio``.

    DN-DETR flips with probability ``label_noise_scale`` (0.2); DINO with ``label_noise_ratio *
    0.5`` (0.25 at its 0.5), so ``ratio`` = DINO's label_noise_ratio / 2. Draws, in this order:
    p = rand(N), then a class randint(0, num_classes, (N,)) for every label (DINO draws classes
    for the flipped ones only; drawing all keeps the number of draws independent of p). A label
    flips where p < ratio. ``ratio`` <= 0 draws nothing."""
    if ratio <= 0 or labels.numel() == 0:
        return labels
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < ratio
    random = torch.randint(0, num_classes, labels.shape, generator=generator, device=labels.device)
    return torch.where(flip, random, labels)


def draw_box_noise(n: int, generator: torch.Generator | None = None, device=None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of ``noise_boxes`` for n boxes, in this order: sign (n, 4), each entry -1
    or +1 (randint(0, 2) * 2 - 1), then part (n, 4) uniform in [0, 1) (rand); DINO's
    ``rand_sign`` and ``rand_part``, drawn in its order."""
    sign = torch.randint(0, 2, (n, 4), generator=generator, device=device).to(dtype) * 2 - 1
    part = torch.rand((n, 4), generator=generator, device=device, dtype=dtype)
    return sign, part


def noise_boxes(boxes: torch.Tensor, scale: float, negative: bool | torch.Tensor = False,
                generator: torch.Generator | None = None,
                draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """boxes (N, 4) normalised cxcywh -> (N, 4) noised cxcywh, corners clipped to the image.

    DINO's box noise (Zhang et al., ICLR 2023, Sec. 3.3, contrastive denoising), with lambda =
    ``scale`` (DINO's ``box_noise_scale``; DN-DETR's 0.4 is the default here, DINO's own is 1.0):
    each corner coordinate of the xyxy box moves by sign * part * lambda * half-side (w/2 for
    x1, x2 and h/2 for y1, y2), with |part| in [0, 1) for a positive and in [1, 2) for a
    ``negative`` ((N,) bool, or one bool for all), then the corners are clamped to [0, 1].
    Noising the four corners independently (DN-DETR noised centre and size) lets a negative be a
    pure shift (both x corners move the same way) or a pure rescale (they move apart), and still
    keeps every corner at least lambda * half-side from the object's: far enough to be trained
    as "no object", where a positive, closer, is trained to reconstruct the box. With lambda >
    0.5 a negative's corners can cross (width <= 0), as they can in DINO at 1.0.

    ``draws`` = (sign, part), each (N, 4), replaces the random draws (``draw_box_noise``'s, from
    ``generator``); ``scale`` <= 0 draws nothing and returns the boxes."""
    if scale <= 0 or boxes.numel() == 0:
        return boxes
    sign, part = draws if draws is not None else draw_box_noise(len(boxes), generator, boxes.device,
                                                                boxes.dtype)
    negative = torch.as_tensor(negative, device=boxes.device).expand(len(boxes))
    part = part + negative[:, None].to(part)  # negatives: [1, 2), never closer than lambda
    centre, wh = boxes[:, :2], boxes[:, 2:]
    xyxy = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    half = torch.cat([wh / 2, wh / 2], -1)
    xyxy = (xyxy + sign * part * half * scale).clamp(0.0, 1.0)
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)


def denoising_attn_mask(num_groups: int, group_size: int, num_matching: int, device=None) -> torch.Tensor:
    """(P + Q, P + Q) bool, True = blocked: matching rows see no denoising column; a group's rows
    see their own group and the matching queries, never another group."""
    p = num_groups * group_size
    mask = torch.zeros(p + num_matching, p + num_matching, dtype=torch.bool, device=device)
    mask[:, :p] = True  # no row sees a denoising column but those of its own group
    for g in range(num_groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        mask[rows, rows] = False
    return mask


class QueryDenoising(nn.Module):
    """Builds the denoising queries from a batch's targets.

    forward(targets: per image ``labels`` (N_i,), ``boxes`` (N_i, 4) normalised cxcywh)
    -> ``DenoisingQueries``, or None when no image of the batch has a box.

    ``num_groups`` groups (DN-DETR's 5; DINO sets a total query budget instead and derives the
    groups from it). ``label_noise`` is the probability that a query's label is replaced by a
    random class: DINO's ``label_noise_ratio`` / 2, so the default 0.25 is DINO's 0.5 (it was
    DN-DETR's 0.2 until the noise followed DINO; the meaning is unchanged). ``box_noise`` is
    lambda, DINO's ``box_noise_scale``, the largest corner displacement of a positive in
    half-sides (default 0.4, DN-DETR's lambda; DINO's is 1.0); since the noise follows DINO it
    moves the xyxy corners (``noise_boxes``), not the centre and size. With ``contrastive=True``
    each group also holds a negative copy of every box with corners moved by lambda to 2 lambda
    half-sides, trained to predict no object (DINO, Zhang et al., ICLR 2023, Sec. 3.3).
    ``label_embed`` embeds the noised label in D - 1 channels, the last channel is the indicator
    (1 on denoising queries); ``pos_head`` maps the noised box's sine encoding (4 x D/2) to the
    query position, as DAB-DETR embeds anchors.
    """

    def __init__(self, num_classes: int, hidden_dim: int, num_groups: int = 5,
                 label_noise: float = 0.25, box_noise: float = 0.4, contrastive: bool = False):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f'denoising needs num_groups >= 1, got {num_groups}')
        self.num_classes, self.hidden_dim = num_classes, hidden_dim
        self.num_groups, self.label_noise, self.box_noise = num_groups, label_noise, box_noise
        self.contrastive = contrastive
        self.label_embed = nn.Embedding(num_classes, hidden_dim - 1)
        self.pos_head = Mlp(2 * hidden_dim, hidden_dim, hidden_dim, act_layer=nn.ReLU)

    def embed(self, labels: torch.Tensor, boxes: torch.Tensor, real: torch.Tensor):
        """labels (B, P), boxes (B, P, 4) cxcywh, real (B, P) bool -> content and query_pos
        (B, P, D); padding (not ``real``) gets zero content and the position of a zero box."""
        content = torch.cat([self.label_embed(labels), torch.ones_like(boxes[..., :1])], -1)
        content = content * real[..., None]
        unact = torch.logit(boxes.clamp(1e-4, 1 - 1e-4))
        return content, self.pos_head(box_position_encoding(unact, self.hidden_dim // 2))

    def forward(self, targets: list[dict],
                generator: torch.Generator | None = None) -> DenoisingQueries | None:
        """The M real (not padding) queries of the batch are noised at once, in query order
        (image, group, positives then negatives, box), so the draws from ``generator`` come in
        one fixed order: ``noise_labels``' p (M,) and classes (M,), then ``noise_boxes``' signs
        (M, 4) and parts (M, 4); a noise switched off (0) draws nothing."""
        counts = [len(t['labels']) for t in targets]
        n_max = max(counts, default=0)
        if n_max == 0:
            return None
        device = self.label_embed.weight.device
        b, copies = len(targets), 2 if self.contrastive else 1
        group_size = n_max * copies
        p = self.num_groups * group_size
        repeats = self.num_groups * copies
        slots, index, negative, gt_labels, gt_boxes = [], [], [], [], []
        for i, t in enumerate(targets):
            n = counts[i]
            if n == 0:
                continue
            g = torch.arange(self.num_groups, device=device)[:, None, None]
            c = torch.arange(copies, device=device)[None, :, None]
            k = torch.arange(n, device=device)
            slots.append((i * p + g * group_size + c * n_max + k).flatten())  # (G, copies, n) in order
            index.append(k.repeat(repeats))
            negative.append((c == 1).expand(self.num_groups, copies, n).flatten())
            gt_labels.append(t['labels'].to(device).repeat(repeats))
            gt_boxes.append(t['boxes'].to(device, torch.float32).repeat(repeats, 1))
        slots, negative = torch.cat(slots), torch.cat(negative)
        labels = torch.zeros(b * p, dtype=torch.int64, device=device)
        boxes = torch.zeros(b * p, 4, device=device)
        target_index = torch.full((b * p,), -1, dtype=torch.int64, device=device)
        valid = torch.zeros(b * p, dtype=torch.bool, device=device)
        labels[slots] = noise_labels(torch.cat(gt_labels), self.num_classes, self.label_noise, generator)
        boxes[slots] = noise_boxes(torch.cat(gt_boxes), self.box_noise, negative, generator)
        target_index[slots] = torch.cat(index)
        valid[slots] = True
        positive = valid.clone()
        positive[slots] = ~negative
        labels, boxes, target_index = labels.view(b, p), boxes.view(b, p, 4), target_index.view(b, p)
        valid, positive = valid.view(b, p), positive.view(b, p)
        content, query_pos = self.embed(labels, boxes, valid)
        return DenoisingQueries(content, boxes, query_pos, target_index, positive, valid,
                                self.num_groups, group_size)


def split_denoising(tensor: torch.Tensor, dn: DenoisingQueries | None):
    """(..., P + Q, X) decoder output -> (denoising part (..., P, X) or None, matching part)."""
    if dn is None:
        return None, tensor
    return tensor[..., :dn.num_queries, :], tensor[..., dn.num_queries:, :]
