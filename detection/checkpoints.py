"""Checkpoints of other implementations -> the detectors' own key layout.

Four layouts are recognised and converted (ResNet-50 backbones, as released):

* ``official_detr``: facebookresearch/detr (``detr-r50-e632da11.pth``): ``backbone.0.body.*``,
  ``transformer.encoder.layers.N.self_attn.in_proj_weight``, ``...decoder.layers.N.multihead_attn``,
  ``transformer.decoder.norm``, ``class_embed`` (92 = 91 COCO ids + no-object), ``bbox_embed.layers.N``,
  ``query_embed``, ``input_proj``.
* ``official_deformable_detr``: fundamentalvision/Deformable-DETR
  (``r50_deformable_detr-checkpoint.pth`` and its refinement / two-stage siblings):
  ``transformer.level_embed``, ``...self_attn.sampling_offsets``, ``input_proj.N.0/1``,
  ``class_embed.N`` (91 COCO ids, sigmoid), ``bbox_embed.N.layers.M``, ``query_embed`` (Q, 2 * hidden);
  its decoder layers name the norm after the self-attention ``norm2`` and the one after the
  cross-attention ``norm1`` (ours: ``norm1`` and ``norm2``, in the order they run).
* ``hf_detr`` / ``hf_deformable_detr``: Hugging Face transformers' ``DetrForObjectDetection`` /
  ``DeformableDetrForObjectDetection`` (separate q/k/v projections where ours has
  nn.MultiheadAttention's single in-projection).

The official checkpoints predict raw COCO category ids (91 slots, most of them never used); a
model built for COCO's 80 contiguous labels (the configs' ``num_classes=80``) gets the 80 rows of
the used ids, in sorted order, which is how the dataset numbers its labels.

:func:`to_detector_layout` is what loading uses (``Detector``'s load hook, so ``tools/test.py``,
``tools/infer.py`` and ``load_state_dict`` take these files as they are).
"""
import re
from collections.abc import Mapping

import torch

# COCO 2017's 80 category ids: 1..90 less the ten ids the 2014 paper listed but never annotated.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

LAYOUTS = {
    'official_detr': 'the official DETR layout (facebookresearch/detr, e.g. detr-r50-e632da11.pth)',
    'official_deformable_detr': 'the official Deformable DETR layout (fundamentalvision/Deformable-DETR, '
                                'e.g. r50_deformable_detr-checkpoint.pth)',
    'hf_detr': "Hugging Face transformers' DetrForObjectDetection layout",
    'hf_deformable_detr': "Hugging Face transformers' DeformableDetrForObjectDetection layout",
}
# which network each layout belongs to
_NETWORK = {'official_detr': 'DETR', 'hf_detr': 'DETR',
            'official_deformable_detr': 'DeformableDETR', 'hf_deformable_detr': 'DeformableDETR'}
_CONFIG_HINT = {'DETR': 'configs/detr_r50.py', 'DeformableDETR': 'configs/deformable_detr_r50.py'}


def detect_layout(state_dict: Mapping) -> str:
    """The layout of a state dict: one of ``LAYOUTS``' keys, ``'ours'`` (``net.*`` of ``Detector``
    or a bare ``DETR`` / ``DeformableDETR`` dict with ``backbone.body.*``) or ``'unknown'``."""
    keys = set(state_dict)
    if any(k.startswith('net.') for k in keys) or any(k.startswith('backbone.body.') for k in keys):
        return 'ours'
    if 'transformer.level_embed' in keys:
        return 'official_deformable_detr'
    if any(k.startswith('transformer.decoder.layers.') and '.multihead_attn.' in k for k in keys):
        return 'official_detr'
    if 'model.level_embed' in keys:
        return 'hf_deformable_detr'
    if 'model.query_position_embeddings.weight' in keys and any(
            k.startswith('class_labels_classifier.') for k in keys):
        return 'hf_detr'
    return 'unknown'


# The project's own earlier layout: two-layer MLPs that were nn.Sequential(Linear, ReLU, Linear)
# before they became zoo.layers.Mlp (the denoising position head, dense box head).
_SEQUENTIAL_MLPS = re.compile(r'(denoising\.pos_head|dense_head\.box_head)\.([02])\.')


def upgrade_own_keys(state_dict: Mapping) -> dict:
    """This project's checkpoints from before the shared ``Mlp``: those heads' layers ``0`` and
    ``2`` load as ``fc1`` and ``fc2`` (same tensors); other keys unchanged."""
    return {_SEQUENTIAL_MLPS.sub(lambda m: f'{m[1]}.{"fc1" if m[2] == "0" else "fc2"}.', k): v
            for k, v in state_dict.items()}


def _rename(state_dict: Mapping, rules: list[tuple[str, str]], drop: tuple[str, ...] = ()) -> dict:
    """Each key through the first rule (regex, replacement) that matches; keys starting with a
    ``drop`` prefix and frozen batch-norm counters are left out; other keys are kept as they are."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(drop) or key.endswith('num_batches_tracked'):
            continue
        for pattern, repl in rules:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                key = new
                break
        out[key] = value
    return out


def _merge_qkv(state_dict: dict) -> dict:
    """Separate ``X.q_proj`` / ``k_proj`` / ``v_proj`` weights and biases -> nn.MultiheadAttention's
    ``X.in_proj_weight`` (3D, D) and ``X.in_proj_bias`` (3D,), rows q then k then v."""
    parts, out = {}, {}
    for key, value in state_dict.items():
        m = re.match(r'^(.*)\.([qkv])_proj\.(weight|bias)$', key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    for (module, kind), qkv in parts.items():
        if set(qkv) != {'q', 'k', 'v'}:
            raise ValueError(f'{module} has {sorted(qkv)} projections, expected q, k and v')
        out[f'{module}.in_proj_{kind}'] = torch.cat([qkv['q'], qkv['k'], qkv['v']])
    return out


_OFFICIAL_DETR = [
    (r'^backbone\.0\.body\.', 'backbone.body.'),
    (r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.', r'transformer.\1.\2.ffn.0.'),
    (r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.', r'transformer.\1.\2.ffn.3.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.', r'transformer.decoder.\1.cross_attn.'),
    (r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.', r'transformer.\1.\2.'),
    (r'^transformer\.decoder\.norm\.', 'transformer.decoder_norm.'),
]

_OFFICIAL_DEFORMABLE = [
    (r'^backbone\.0\.body\.', 'backbone.body.'),
    (r'^input_proj\.', 'neck.input_proj.'),
    (r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear([12])\.', r'transformer.\1.\2.ffn.fc\3.'),
    # the official decoder layer runs self-attention -> norm2, cross-attention -> norm1
    (r'^transformer\.decoder\.layers\.(\d+)\.norm1\.', r'transformer.decoder.\1.norm2.'),
    (r'^transformer\.decoder\.layers\.(\d+)\.norm2\.', r'transformer.decoder.\1.norm1.'),
    (r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.', r'transformer.\1.\2.'),
]

_HF_COMMON = [
    (r'^model\.backbone\.model\.', 'backbone.body.'),
    (r'^model\.query_position_embeddings\.', 'query_embed.'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.o_proj\.', r'transformer.\1.\2.self_attn.out_proj.'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.', r'transformer.\1.\2.self_attn.'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.', r'transformer.\1.\2.norm1.'),
    (r'^model\.encoder\.layers\.(\d+)\.final_layer_norm\.', r'transformer.encoder.\1.norm2.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.', r'transformer.decoder.\1.norm2.'),
    (r'^model\.decoder\.layers\.(\d+)\.final_layer_norm\.', r'transformer.decoder.\1.norm3.'),
]

_HF_DETR = _HF_COMMON + [
    (r'^model\.input_projection\.', 'input_proj.'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.fc1\.', r'transformer.\1.\2.ffn.0.'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.fc2\.', r'transformer.\1.\2.ffn.3.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.', r'transformer.decoder.\1.cross_attn.out_proj.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.', r'transformer.decoder.\1.cross_attn.'),
    (r'^model\.decoder\.layernorm\.', 'transformer.decoder_norm.'),
    (r'^class_labels_classifier\.', 'class_embed.'),
    (r'^bbox_predictor\.', 'bbox_embed.'),
]

_HF_DEFORMABLE = _HF_COMMON + [
    (r'^model\.input_proj\.', 'neck.input_proj.'),
    (r'^model\.(level_embed|reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\b',
     r'transformer.\1'),
    (r'^model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.', r'transformer.\1.\2.ffn.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.', r'transformer.decoder.\1.cross_attn.'),
]


def convert_official_detr(state_dict: Mapping) -> dict:
    """facebookresearch/detr's ``model`` state dict -> ``DETR``'s layout (classes as released:
    92 = 91 ids + no-object; :func:`select_coco_classes` narrows them)."""
    return _rename(state_dict, _OFFICIAL_DETR)


def convert_official_deformable_detr(state_dict: Mapping) -> dict:
    """fundamentalvision/Deformable-DETR's ``model`` state dict -> ``DeformableDETR``'s layout.
    The transformer's copies of the refinement / two-stage heads
    (``transformer.decoder.bbox_embed`` / ``class_embed``, the same tensors as the top-level heads)
    are dropped."""
    return _rename(state_dict, _OFFICIAL_DEFORMABLE,
                   drop=('transformer.decoder.bbox_embed.', 'transformer.decoder.class_embed.'))


def convert_hf_detr(state_dict: Mapping) -> dict:
    """A Hugging Face ``DetrForObjectDetection`` state dict (ResNet-50) -> ``DETR``'s layout
    (with ``backbone=dict(name='resnet50')``); q/k/v projections concatenated."""
    return _merge_qkv(_rename(state_dict, _HF_DETR))


def convert_hf_deformable_detr(state_dict: Mapping) -> dict:
    """A Hugging Face ``DeformableDetrForObjectDetection`` state dict (ResNet-50) ->
    ``DeformableDETR``'s layout (with ``backbone=dict(name='resnet50', out_indices=(0, 1, 2))``).

    The decoder's separate q/k/v projections are concatenated into nn.MultiheadAttention's
    in-projection; the decoder's tied copies of the heads (``model.decoder.class_embed`` /
    ``bbox_embed``) are dropped, the top-level heads kept; frozen batch-norm counters dropped.
    """
    return _merge_qkv(_rename(state_dict, _HF_DEFORMABLE,
                              drop=('model.decoder.class_embed.', 'model.decoder.bbox_embed.')))


_CONVERTERS = {'official_detr': convert_official_detr,
               'official_deformable_detr': convert_official_deformable_detr,
               'hf_detr': convert_hf_detr, 'hf_deformable_detr': convert_hf_deformable_detr}


def select_coco_classes(state_dict: dict, num_classes: int, no_object: bool,
                        encoder_head: str | None = None) -> dict:
    """Class heads (``class_embed.weight`` or ``class_embed.N.weight`` and biases) with rows for
    the 91 raw COCO ids (+ the no-object row when ``no_object``) -> rows for ``num_classes``.

    Unchanged when the counts already agree; 91 ids -> 80 keeps the rows of
    ``COCO_CATEGORY_IDS`` in order (the dataset's contiguous labels). ``encoder_head`` names the
    two-stage encoder's head (``class_embed.6``): its row 0 is the class-agnostic proposal score
    (official training labels every proposal target 0) and stays first.
    """
    out = dict(state_dict)
    extra = int(no_object)
    for key, value in state_dict.items():
        if not re.match(r'^class_embed(\.\d+)?\.(weight|bias)$', key):
            continue
        rows = value.shape[0] - extra
        if rows == num_classes:
            continue
        if rows != 91 or num_classes != len(COCO_CATEGORY_IDS):
            raise ValueError(f'the checkpoint\'s class head {key} has {rows} classes'
                             f'{" + no-object" if no_object else ""} and the model {num_classes}: '
                             'build the model with the checkpoint\'s class count '
                             f'(--cfg-options model.num_classes={rows})')
        ids = COCO_CATEGORY_IDS
        if encoder_head is not None and key.startswith(encoder_head + '.'):
            ids = [0] + ids[1:]
        index = torch.tensor(ids + ([91] if no_object else []))
        out[key] = value[index]
    return out


def to_detector_layout(state_dict: Mapping, net) -> tuple[dict, str]:
    """A state dict in any recognised layout -> (``net``'s layout, the layout found).

    ``net`` is a ``DETR`` or ``DeformableDETR``; raises ValueError when the layout is of the other
    detector, or when refinement / two-stage / the class count disagree with ``net``'s config, each
    message naming what was found and the setting that fixes it.
    """
    sd, layout, encoder_head = convert_layout(state_dict, net)
    if layout not in LAYOUTS:
        return sd, layout
    return select_coco_classes(sd, net.num_classes, no_object=type(net).__name__ == 'DETR',
                               encoder_head=encoder_head), layout


def convert_layout(state_dict: Mapping, net) -> tuple[dict, str, str | None]:
    """:func:`to_detector_layout` without the class rows narrowed: (the state dict in ``net``'s
    key layout, the layout found, the two-stage encoder's class head or None). The class heads
    keep the checkpoint's rows, whatever ``net.num_classes`` is (fine-tuning re-initialises them
    when the counts differ: ``detection.finetune``)."""
    layout = detect_layout(state_dict)
    if layout == 'ours':
        return upgrade_own_keys(state_dict), layout, None
    if layout == 'unknown':
        return dict(state_dict), layout, None
    kind = type(net).__name__
    if _NETWORK[layout] != kind:
        raise ValueError(f'found {LAYOUTS[layout]}, a {_NETWORK[layout]} checkpoint, but the config builds '
                         f'{kind}: use a {_NETWORK[layout]} config such as {_CONFIG_HINT[_NETWORK[layout]]}')
    sd = _CONVERTERS[layout](state_dict)
    encoder_head = None
    if kind == 'DeformableDETR':
        # both implementations store a second, tied copy of refinement's per-layer box heads
        refine = any(k.startswith(('transformer.decoder.bbox_embed.', 'model.decoder.bbox_embed.'))
                     for k in state_dict)
        two_stage = 'transformer.enc_output.weight' in sd
        for name, found, want in (('with_box_refine', refine, net.with_box_refine),
                                  ('two_stage', two_stage, net.two_stage)):
            if found != want:
                raise ValueError(f'found {LAYOUTS[layout]} with {name}={found}, but the config has '
                                 f'{name}={want}: --cfg-options model.detector.{name}={found}')
        if two_stage:
            encoder_head = f'class_embed.{len(net.transformer.decoder)}'
    return sd, layout, encoder_head
