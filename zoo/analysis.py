"""What a backbone computes, as numbers and pictures: feature maps by depth with their dead and
extreme channels (the T2T-ViT paper's Fig. 1), the attention of one token per block and head,
and attention rollout (Abnar and Zuidema, 2020).

Everything is read through forward hooks on the model's own blocks while its own forward or
``get_attention_maps`` runs, so no attention or block code is repeated here, and each block's
output is reduced to what a figure needs the moment the block has made it: at no time is more
than one block's map (plus the small reductions) alive, whatever the depth or image size.

Plotting functions import matplotlib when called; the numbers need only torch.
"""
import itertools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from .layers import Block
from .layers.class_attention import ClassAttentionBlock
from .layers.layer_class_attention import LayerClassAttentionBlock
from .models._base import tokens_to_map
from .models.cait import Cait
from .models.ceit import CeiT
from .models.cvt import ConvolutionalVisionTransformer
from .pretrained import CheckpointMismatchError
from .registry import get_model_info

RESNET50 = 'resnet50'  # torchvision's, the T2T-ViT paper's CNN reference in Fig. 1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- models and images -----------------------------------------------------------------------------
def create_analysis_model(name: str, checkpoint: str | None = None, pretrained: bool = False) -> nn.Module:
    """A registered zoo model or ``'resnet50'`` (torchvision) in eval mode, with random weights,
    the released ones (``pretrained``) or a local ``checkpoint``. A checkpoint of another model
    raises a ValueError naming both."""
    if name == RESNET50:
        from torchvision.models import resnet50
        model = resnet50(weights='IMAGENET1K_V1' if pretrained else None)
        if checkpoint:
            from .pretrained import read_checkpoint, unwrap_state_dict
            try:
                model.load_state_dict(unwrap_state_dict(read_checkpoint(checkpoint)))
            except RuntimeError as e:
                raise ValueError(f'{checkpoint} is not a checkpoint of torchvision\'s resnet50: '
                                 f'{str(e)[:400]} ... Pass a resnet50 state dict, or the model '
                                 'name the checkpoint was trained for') from e
        model.model_name = name
        return model.eval()
    from .factory import create_model
    get_model_info(name)  # an unknown name: a ValueError with the nearest names
    try:
        model = create_model(name, pretrained=checkpoint or pretrained)
    except (CheckpointMismatchError, KeyError) as e:
        raise ValueError(f'{checkpoint} is not a checkpoint of {name}: {str(e)[:400]} ... Pass a '
                         f'checkpoint trained for {name}, or the model name it was trained for') from e
    return model.eval()


def input_spec(model: nn.Module) -> tuple[int, tuple, tuple]:
    """The model's square input side and its normalisation (mean, std)."""
    if getattr(model, 'model_name', None) == RESNET50 or not hasattr(model, 'model_info'):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    info = model.model_info
    return info.input_size[-1], info.mean, info.std


def load_image(path: str) -> Image.Image:
    """An RGB image from ``path``; a clear error for a missing file or one that is no image."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except FileNotFoundError:
        raise FileNotFoundError(f'image {path!r} does not exist') from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'{path!r} is not an image PIL can read ({e}); pass a PNG, JPEG or '
                         'another picture file') from e


def preprocess(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """PIL image -> (1, 3, size, size) float, resized (bilinear) and normalised."""
    x = torch.from_numpy(np.asarray(image.resize((size, size), Image.BILINEAR)).copy())
    x = x.permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


def check_pixel(pixel: tuple[int, int], height: int, width: int) -> None:
    """Raise a ValueError unless ``pixel`` (y, x) lies in a ``height`` x ``width`` image."""
    y, x = pixel
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f'pixel (y, x) = ({y}, {x}) is outside the {height} x {width} image: '
                         f'y must be in 0..{height - 1} and x in 0..{width - 1} (pixels of the '
                         'image as given, before resizing)')


# -- feature maps by depth -------------------------------------------------------------------------
def feature_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are the model's depths, in order, with their names: every
    transformer block over the patch grid of a zoo model (``window_blocks``: CvT's across its
    three stages), the 16 bottleneck blocks of torchvision's ResNet-50."""
    names = {id(m): n for n, m in model.named_modules()}
    if hasattr(model, 'window_blocks'):
        return [(names[id(b)], b) for b in model.window_blocks]
    stages = [getattr(model, f'layer{i}', None) for i in range(1, 5)]
    if all(isinstance(s, nn.Sequential) for s in stages):
        return [(names[id(b)], b) for s in stages for b in s]
    raise TypeError(f'{type(model).__name__} is neither a zoo backbone nor a torchvision ResNet')


def output_map(output, kwargs: dict) -> torch.Tensor:
    """A feature layer's output -> (B, C, h, w): a map as it is, tokens (B, P + h*w, D) with the
    block's ``grid`` (h, w) keyword laid out as a map, the P prefix tokens dropped."""
    if output.ndim == 4:
        return output
    h, w = kwargs['grid']
    return tokens_to_map(output, (h, w), output.shape[1] - h * w)


def channel_fractions(fmap: torch.Tensor, dead_thr: float = 0.05,
                      extreme_thr: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fractions of dead and of extreme channels of one layer's map, per image.

    fmap (B, C, H, W) -> dead (B,), extreme (B,). With r_c = sqrt(mean over H, W of x_c^2) the
    RMS of channel c over the whole map and s = mean over c of r_c the layer's typical channel
    magnitude (one number per image, so a layer's scale does not matter):

    * channel c is **dead** when max over H, W of |x_c| <= ``dead_thr`` * s: near zero everywhere;
    * channel c is **extreme** when max over H, W of |x_c| > ``extreme_thr`` * s: somewhere it is
      far outside the layer's range.

    A map that is zero everywhere (s = 0) has every channel dead and none extreme.
    """
    x = fmap.detach().float().flatten(2)
    peak = x.abs().amax(-1)  # (B, C)
    scale = x.square().mean(-1).sqrt().mean(-1, keepdim=True)  # (B, 1)
    dead = (peak <= dead_thr * scale).float().mean(-1)
    extreme = (peak > extreme_thr * scale).float().mean(-1)
    return dead, extreme


@dataclass
class LayerFeatures:
    """One depth of a model: ``channels`` (B, k, h, w) the first k channels of its map (None for
    depths not drawn), ``dead`` / ``extreme`` (B,) as :func:`channel_fractions` defines them."""
    name: str
    index: int
    num_channels: int
    dead: torch.Tensor
    extreme: torch.Tensor
    channels: torch.Tensor | None = None


def default_depths(num_layers: int, count: int = 4) -> list[int]:
    """``count`` depths spread from the first layer to the last, both included."""
    if num_layers <= count:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


class _Stop(Exception):
    """Raised by the last layer's hook: nothing after it (heads, class blocks) is needed."""


@torch.no_grad()
def feature_maps_by_depth(model: nn.Module, images: torch.Tensor, depths: list[int] | None = None,
                          num_channels: int = 16, dead_thr: float = 0.05, extreme_thr: float = 10.0,
                          log: Callable[[str], None] | None = None) -> list[LayerFeatures]:
    """Every depth of ``model`` (:func:`feature_layers`) on ``images`` (B, 3, H, W): the dead /
    extreme fractions of every layer, and the first ``num_channels`` channels of the layers whose
    indices are in ``depths`` (negative ones count from the end; default :func:`default_depths`).
    Each layer's map is reduced inside its hook, so only one full map exists at a time. ``log``
    gets one line per layer (progress)."""
    layers = feature_layers(model)
    depths = default_depths(len(layers)) if depths is None else depths
    bad = [d for d in depths if not -len(layers) <= d < len(layers)]
    if bad:
        raise ValueError(f'depths {bad} are outside 0..{len(layers) - 1} ({len(layers)} layers)')
    keep = {d % len(layers) for d in depths}
    records: list[LayerFeatures] = []
    name = getattr(model, 'model_name', type(model).__name__)

    def hook(index, layer_name):
        def fn(module, args, kwargs, output):
            fmap = output_map(output, kwargs)
            dead, extreme = channel_fractions(fmap, dead_thr, extreme_thr)
            records.append(LayerFeatures(layer_name, index, fmap.shape[1], dead, extreme,
                                         fmap[:, :num_channels].float().clone() if index in keep else None))
            if log:
                log(f'{name}: {layer_name} ({index + 1}/{len(layers)}) {fmap.shape[1]} channels '
                    f'{fmap.shape[-2]}x{fmap.shape[-1]}, dead {dead[0]:.3f}, extreme {extreme[0]:.3f}')
            if index == len(layers) - 1:
                raise _Stop
        return fn

    handles = [m.register_forward_hook(hook(i, n), with_kwargs=True) for i, (n, m) in enumerate(layers)]
    try:
        (model.forward_features if hasattr(model, 'forward_features') else model)(images)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return records


def write_fractions_csv(rows: list[tuple[str, LayerFeatures]], path: str) -> None:
    """(model name, layer) pairs -> a CSV of model, layer, depth, channels, dead, extreme
    (image 0)."""
    import csv
    with open(path, 'w', newline='') as f:
        out = csv.writer(f)
        out.writerow(['model', 'layer', 'depth', 'channels', 'dead', 'extreme'])
        for model_name, r in rows:
            out.writerow([model_name, r.name, r.index + 1, r.num_channels,
                          f'{r.dead[0]:.4f}', f'{r.extreme[0]:.4f}'])


# -- attention -------------------------------------------------------------------------------------
@torch.no_grad()
def stream_attention_maps(model: nn.Module, images: torch.Tensor,
                          consume: Callable[[int, str, nn.Module, torch.Tensor, tuple | None], None]) -> None:
    """Run ``model.get_attention_maps(images)`` and hand every block's map to
    ``consume(index, name, block, attn, grid)`` the moment the block returns it: attn
    (B, heads, Nq, Nk) as the family defines it (see its get_attention_maps), grid the (h, w) of
    the block's query tokens or None (class-attention blocks). The hook swaps the map for an
    empty tensor in what the block returns, so get_attention_maps' list keeps none of them."""
    names = {id(m): n for n, m in model.named_modules()}
    counter = itertools.count()

    def hook(module, args, kwargs, output):
        if not (isinstance(output, tuple) and len(output) == 2 and torch.is_tensor(output[1])):
            return None
        consume(next(counter), names[id(module)], module, output[1], kwargs.get('grid'))
        return output[0], output[1].new_empty(0)

    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for m in model.modules() if isinstance(m, Block)]
    try:
        model.get_attention_maps(images)
    finally:
        for h in handles:
            h.remove()


def _key_grid(block: nn.Module, grid: tuple[int, int], num_keys: int) -> tuple[int, int]:
    """The (h', w') grid of a block's patch keys: the query grid, or CvT's strided one."""
    if num_keys == grid[0] * grid[1]:
        return grid
    s = block.attn.conv_proj_k.conv.stride[0]
    return math.ceil(grid[0] / s), math.ceil(grid[1] / s)


@dataclass
class TokenAttention:
    """One block's attention of the chosen token: ``attn`` (B, heads, h', w'), the row of that
    query over the patch keys on their grid, ``stride`` the input pixels per key."""
    name: str
    attn: torch.Tensor
    stride: tuple[float, float]


def token_attention(model: nn.Module, images: torch.Tensor, token: str | tuple[int, int] = 'cls'
                    ) -> list[TokenAttention]:
    """Per block, the attention of one query token over the patch tokens, every head.

    token: ``'cls'`` (the class token, row 0) or a pixel (y, x) of ``images`` (B, 3, H, W): the
    patch token that covers it, on each block's own grid (CvT's stages). The row is taken as
    the model returns it (``attn[:, :, query, P:]``, P the prefix tokens), never transposed.
    Blocks without that query are skipped: the class token in CaiT's self-attention blocks and
    CvT's first stages (there is none), a pixel in CaiT's class-attention blocks; CeiT's LCA
    attends over layers, not pixels (see :func:`attention_rollout`).
    """
    height, width = images.shape[-2:]
    if token != 'cls':
        check_pixel(token, height, width)
    out: list[TokenAttention] = []
    last_grid = [None]

    def consume(index, name, block, attn, grid):
        if isinstance(block, LayerClassAttentionBlock):
            return
        if grid is not None:
            last_grid[0] = grid
        if isinstance(block, ClassAttentionBlock):  # (B, heads, 1, 1 + N): the class token's row
            if token != 'cls':
                return
            query, prefix, grid = 0, 1, last_grid[0]
        else:
            prefix = attn.shape[2] - grid[0] * grid[1]
            if token == 'cls':
                if prefix == 0:
                    return
                query = 0
            else:
                y, x = token
                query = prefix + (y * grid[0] // height) * grid[1] + x * grid[1] // width
        keys = _key_grid(block, grid, attn.shape[3] - prefix)
        row = attn[:, :, query, prefix:].reshape(*attn.shape[:2], *keys)
        out.append(TokenAttention(name, row.float().clone(), (height / keys[0], width / keys[1])))

    stream_attention_maps(model, images, consume)
    return out


def _spread_keys(attn: torch.Tensor, grid: tuple[int, int], keys: tuple[int, int],
                 prefix: int) -> torch.Tensor:
    """(B, Nq, P + h'*w') over CvT's strided keys -> (B, Nq, P + h*w) on the query grid: each key's
    weight shared equally among the query cells of its stride cell (row sums are kept)."""
    (h, w), (hk, wk) = grid, keys
    s = math.ceil(h / hk)
    covered_h = (h - torch.arange(hk) * s).clamp(max=s)  # query rows per key row (the last: fewer)
    covered_w = (w - torch.arange(wk) * s).clamp(max=s)
    patch = attn[..., prefix:].reshape(*attn.shape[:-1], hk, wk)
    patch = patch / (covered_h[:, None] * covered_w[None, :]).to(patch)
    spread = patch.repeat_interleave(s, -2).repeat_interleave(s, -1)[..., :h, :w]
    return torch.cat([attn[..., :prefix], spread.flatten(-2)], -1)


@torch.no_grad()
def attention_rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention rollout of the class token (Abnar and Zuidema, 2020): images (B, 3, H, W) ->
    (B, h, w) on the patch grid.

    Per block the map of ``get_attention_maps`` averaged over the heads, A, becomes
    A' = 0.5 A + 0.5 I (the residual connection); the product A'_L ... A'_1 from the first block
    to the last gives each output token's mix of input tokens, and the class token's row over
    the patch tokens is returned, with no further normalisation. Maps that are not softmax rows
    (DeepViT's re-attention, CaiT's talking heads) enter as the model returns them.

    Families whose class token does not run through square self-attention, in their own form:

    * CaiT: the self-attention blocks run on the patches alone (the class token, absent, keeps its
      own row: identity) and the class-attention blocks update the class token alone (the patch
      rows stay identity; the class row is the class attention over [cls, patches]); the product
      over both stages is taken as above.
    * CeiT: the rollout over the blocks gives each layer's class-token row R_l[0]; the LCA block
      (the last class token attending over the L layers' class tokens, weights a_l averaged over
      heads, residual on the last class token) gives 0.5 R_L[0] + 0.5 sum_l a_l R_l[0].
    * CvT: the class token exists in the last stage only, whose keys lie on a grid strided by 2;
      each key's weight is shared equally among the query cells it covers, then the rollout runs
      over the last stage's blocks (stride 16). The first two stages are not included.

    A model without a class token (CPVT's GAP variants) raises a ValueError.
    """
    if getattr(model, 'num_prefix_tokens', 1) == 0 or getattr(model, 'cls_token', True) is None:
        raise ValueError(f'{getattr(model, "model_name", type(model).__name__)} has no class token '
                         'to roll out: use token_attention with a pixel instead')
    state = dict(rollout=None, grid=None, class_rows=[], lca=None)
    last_stage = (set(map(id, model.stages[-1].blocks))
                  if isinstance(model, ConvolutionalVisionTransformer) else None)

    def update(a: torch.Tensor) -> None:
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        r = state['rollout']
        state['rollout'] = (0.5 * a + 0.5 * eye) @ (eye if r is None else r)

    def consume(index, name, block, attn, grid):
        a = attn.float().mean(1)  # (B, Nq, Nk)
        if isinstance(block, LayerClassAttentionBlock):
            state['lca'] = a[:, 0]  # (B, L)
            return
        if isinstance(block, ClassAttentionBlock):  # CaiT: identity but for the class row
            full = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).repeat(len(a), 1, 1)
            full[:, 0] = a[:, 0]
            update(full)
            return
        if last_stage is not None:
            if id(block) not in last_stage:
                return
            prefix = a.shape[1] - grid[0] * grid[1]
            a = _spread_keys(a, grid, _key_grid(block, grid, a.shape[2] - prefix), prefix)
        state['grid'] = grid
        if isinstance(model, Cait):  # patches only: the class token (index 0) keeps its row
            a = F.pad(a, (1, 0, 1, 0))
            a[:, 0, 0] = 1.0
        update(a)
        if isinstance(model, CeiT):
            state['class_rows'].append(state['rollout'][:, 0])

    stream_attention_maps(model, images, consume)
    row = state['rollout'][:, 0]
    if state['lca'] is not None:
        mixed = torch.einsum('bl,lbt->bt', state['lca'], torch.stack(state['class_rows']))
        row = 0.5 * row + 0.5 * mixed
    h, w = state['grid']
    return row[:, row.shape[1] - h * w:].reshape(-1, h, w)


ROLLOUT_FORM = {
    Cait: 'rollout over self-attention then class-attention blocks',
    CeiT: 'rollout mixed by the layer-wise class attention',
    ConvolutionalVisionTransformer: 'rollout over stage 3 (keys spread from stride 2)',
}


def rollout_form(model: nn.Module) -> str:
    """What :func:`attention_rollout` shows for this model's family, for a figure title."""
    for cls, text in ROLLOUT_FORM.items():
        if isinstance(model, cls):
            return text
    return 'attention rollout of the class token'


# -- figures ---------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('the figures need matplotlib: pip install matplotlib') from e
    return plt


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(3, H, W) normalised -> (H, W, 3) in [0, 1] for display."""
    x = x.float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0)


def channel_montage(channels: torch.Tensor) -> torch.Tensor:
    """(k, h, w) -> one (rows*(h+1)-1, cols*(w+1)-1) image of the k channels in a near-square
    grid, NaN between and after them (drawn blank)."""
    k, h, w = channels.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float('nan'))
    for i, c in enumerate(channels):
        r, q = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = c
    return out


def plot_feature_depths(results: dict[str, list[LayerFeatures]], out: str, title: str = '') -> str:
    """One column per model, one row per drawn depth: the first channels of that depth's map (image
    0) in a grid, every channel of a panel on the panel's colour scale (its min to max), so
    dead channels show flat and extreme ones saturate. Titles give the depth and its fractions."""
    plt = _pyplot()
    columns = {m: [r for r in rs if r.channels is not None] for m, rs in results.items()}
    nrows = max(len(v) for v in columns.values())
    fig, axes = plt.subplots(nrows, len(columns), figsize=(2.3 * len(columns), 2.5 * nrows),
                             squeeze=False)
    for col, (model_name, records) in enumerate(columns.items()):
        total = len(results[model_name])
        for row in range(nrows):
            ax = axes[row, col]
            ax.axis('off')
            if row >= len(records):
                continue
            r = records[row]
            img = channel_montage(r.channels[0])
            ax.imshow(img.numpy(), cmap='viridis', vmin=float(r.channels[0].min()),
                      vmax=float(r.channels[0].max()), interpolation='nearest')
            head = f'{model_name}\n' if row == 0 else ''
            ax.set_title(f'{head}depth {r.index + 1}/{total} ({r.name})\n'
                         f'dead {r.dead[0]:.2f}  extreme {r.extreme[0]:.2f}', fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def _save(fig, out: str) -> str:
    import os
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(out, dpi=80)
    _pyplot().close(fig)
    return out


def _upsample(attn: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) -> (..., H, W), nearest: each token's weight over the pixels it covers."""
    shape = attn.shape[:-2]
    up = F.interpolate(attn.reshape(-1, 1, *attn.shape[-2:]).float(), size=size, mode='nearest')
    return up.reshape(*shape, *size)


def plot_token_attention(image: torch.Tensor, records: list[TokenAttention], token, out: str,
                         title: str = '', max_heads: int = 8) -> str:
    """One row per block (``records``), one column per head (at most ``max_heads``) and their mean:
    the token's attention (image 0) up-sampled onto ``image`` (H, W, 3) in [0, 1], each panel on
    its own scale; the token's pixel marked with a cross."""
    plt = _pyplot()
    heads = min(max_heads, records[0].attn.shape[1]) if records else 1
    size = tuple(image.shape[:2])
    fig, axes = plt.subplots(len(records), heads + 1, figsize=(1.5 * (heads + 1), 1.5 * len(records)),
                             squeeze=False)
    for row, r in enumerate(records):
        maps = list(r.attn[0, :heads]) + [r.attn[0].mean(0)]
        for col, m in enumerate(maps):
            ax = axes[row, col]
            ax.imshow(image.numpy())
            ax.imshow(_upsample(m, size).numpy(), cmap='inferno', alpha=0.6)
            if token != 'cls':
                ax.plot(token[1], token[0], 'c+', markersize=8, mew=2)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title('mean' if col == heads else f'head {col}', fontsize=7)
            if col == 0:
                ax.set_ylabel(r.name, fontsize=6)
    fig.suptitle(title or f'attention of {token}', fontsize=8)
    return _save(fig, out)


def plot_rollouts(panels: list[tuple[str, torch.Tensor, torch.Tensor]], out: str, title: str = '') -> str:
    """One column per model: (title, image (H, W, 3) in [0, 1], rollout (h, w)), the image above and
    the rollout up-sampled onto it below."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(2.2 * len(panels), 5.0), squeeze=False)
    for col, (name, image, rollout) in enumerate(panels):
        axes[0, col].imshow(image.numpy())
        axes[0, col].set_title(textwrap.fill(name, 30), fontsize=7)
        axes[1, col].imshow(image.numpy())
        axes[1, col].imshow(_upsample(rollout, tuple(image.shape[:2])).numpy(), cmap='inferno', alpha=0.65)
        for ax in axes[:, col]:
            ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, out)
