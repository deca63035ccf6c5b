"""Multi-scale deformable attention (Zhu et al., 2021). The pure-PyTorch path needs no compiled
kernel, so it runs on CPU and GPU, in float32, bfloat16 and float16, and exports like any other
module; on CUDA, when triton imports, a Triton kernel (:mod:`detection.ms_deform_attn_triton`,
compiled by Triton at first use, no build step) runs instead, tested against this path."""
import math
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.layers.linear import Linear


def _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    if value.dim() != 4:
        raise ValueError(f'value must be (N, S, M, D), got shape {tuple(value.shape)}')
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError('sampling_locations must be (N, Lq, M, L, P, 2), '
                         f'got shape {tuple(sampling_locations.shape)}')
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f'attention_weights must be (N, Lq, M, L, P) = '
                         f'{tuple(sampling_locations.shape[:-1])} as sampling_locations, '
                         f'got {tuple(attention_weights.shape)}')
    n, s, m, _ = value.shape
    num_levels = sampling_locations.shape[3]
    if spatial_shapes.shape != (num_levels, 2):
        raise ValueError(f'spatial_shapes must be (L, 2) = ({num_levels}, 2) as (H, W) per level, '
                         f'got {tuple(spatial_shapes.shape)}')
    if level_start_index.shape != (num_levels,):
        raise ValueError(f'level_start_index must be (L,) = ({num_levels},), '
                         f'got {tuple(level_start_index.shape)}')
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m:
        raise ValueError(f'value has batch {n} and {m} heads but sampling_locations has batch '
                         f'{sampling_locations.shape[0]} and {sampling_locations.shape[2]} heads')
    sizes = spatial_shapes.prod(1)
    if int(sizes.sum()) != s:
        raise ValueError(f'value has S = {s} positions but the levels {spatial_shapes.tolist()} '
                         f'hold {int(sizes.sum())}')
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    if not torch.equal(starts.cpu(), level_start_index.cpu().to(starts.dtype)):
        raise ValueError(f'level_start_index {level_start_index.tolist()} does not match the level '
                         f'sizes {sizes.tolist()} (expected {starts.tolist()})')


BACKENDS = ('auto', 'pytorch', 'triton')
_triton = None  # detection.ms_deform_attn_triton once imported, or the exception importing it raised


def _triton_module():
    """The Triton kernels' module, imported at first use (so the project imports without
    triton, and TRITON_INTERPRET is read only when the kernels are wanted), or the exception."""
    global _triton
    if _triton is None:
        try:
            from . import ms_deform_attn_triton
            _triton = ms_deform_attn_triton
        except Exception as e:
            if not (isinstance(e, ModuleNotFoundError) and e.name == 'triton'):
                # triton present but not as the kernel needs it (another version, say): say so once
                warnings.warn(f'triton is installed but the deformable-attention kernel could not be '
                              f'loaded ({type(e).__name__}: {e}); using the pure-PyTorch path', stacklevel=4)
            _triton = e
    return _triton


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _use_triton(backend, value, sampling_locations, attention_weights) -> bool:
    """Whether ``backend`` runs the Triton kernel here; for ``'triton'``, an error saying why
    it cannot, where it cannot."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'pytorch':
        return False
    tensors = (value, sampling_locations, attention_weights)
    if backend == 'auto':
        if not value.is_cuda or _exporting():
            return False
        module = _triton_module()
        return (not isinstance(module, Exception)
                and all(t.dtype in module.DTYPES and t.device == value.device for t in tensors))
    module = _triton_module()
    if isinstance(module, Exception):
        raise RuntimeError(f"backend='triton' needs the triton package, which could not be imported "
                           f"({type(module).__name__}: {module}); install it (pip install triton: "
                           f"Linux, NVIDIA GPUs) or use backend='pytorch'") from module
    if _exporting():
        raise RuntimeError("backend='triton' cannot be traced or exported (the kernel is opaque to "
                           "the exporter): use backend='pytorch' or 'auto' for export")
    if not value.is_cuda and not module.INTERPRETED:
        raise RuntimeError(f"backend='triton' got tensors on {value.device}: the Triton kernel runs "
                           f"on CUDA devices, and on the CPU only under Triton's interpreter "
                           f"(TRITON_INTERPRET=1 set before triton is first imported, for tests); use "
                           f"backend='pytorch' (or 'auto', which picks it on a CPU)")
    for name, t in zip(('value', 'sampling_locations', 'attention_weights'), tensors):
        if t.dtype not in module.DTYPES:
            raise ValueError(f"backend='triton' takes float32, float16 or bfloat16; {name} is "
                             f"{t.dtype}: use backend='pytorch' for it")
        if t.device != value.device:
            raise ValueError(f"backend='triton' needs every tensor on value's device {value.device}; "
                             f"{name} is on {t.device}")
    return True


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor,
                   level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor, backend: str = 'auto') -> torch.Tensor:
    """Attention-weighted bilinear samples of multi-level value maps.

    value (N, S, M, D): M heads of D channels at the S positions of every level, flattened level
    after level (row-major within a level); spatial_shapes (L, 2) as (H, W) per level;
    level_start_index (L,) the first position of each level; sampling_locations
    (N, Lq, M, L, P, 2) as (x, y) in [0, 1] of each level's extent (pixel-centre convention,
    outside samples read zeros); attention_weights (N, Lq, M, L, P).
    Returns (N, Lq, M * D): out[n, q, m] = sum_{l, p} A[n, q, m, l, p] * value_l[n, :, m](loc).

    backend: ``'pytorch'`` the pure-PyTorch path below (any device and dtype, traceable for
    export, the reference); ``'triton'`` the kernel of :mod:`detection.ms_deform_attn_triton`
    (CUDA tensors in float32 / float16 / bfloat16; on a CPU only under Triton's interpreter);
    ``'auto'`` Triton on CUDA when triton imports and the dtypes are those, else PyTorch (so
    always PyTorch on a CPU and while tracing or exporting).
    """
    tracing = torch.jit.is_tracing()
    if not tracing:  # the checks read tensor values, which a traced (exported) graph cannot branch on
        _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if _use_triton(backend, value, sampling_locations, attention_weights):
        return _triton_module().ms_deform_attn_triton(value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights)
    return _ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights)


def _ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights):
    """:func:`ms_deform_attn` in pure PyTorch, shapes checked by the caller.

    Level by level, the samples of one level are weighted and added into an accumulator of the
    output's size before the next level is sampled, so at most one level's samples exist at a
    time instead of all levels stacked and then a weighted copy of them (the reference form);
    low-precision inputs keep a float32 sum.
    Sampling runs in the wider of the value and location dtypes: float32 locations on a bfloat16
    value keep sub-pixel precision on large maps (bfloat16 resolves [0, 1] to ~1/256 only),
    one level's value being upcast at a time. The result has the value's dtype.
    """
    tracing = torch.jit.is_tracing()
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    acc_dtype = torch.promote_types(dtype, torch.float32)  # float64 stays float64
    grids = (2 * sampling_locations - 1).to(dtype)  # grid_sample's [-1, 1], align_corners=False
    attention_weights = attention_weights.to(dtype)
    out = value.new_zeros(n * m, d, lq, dtype=acc_dtype)
    # when tracing (ONNX export) the level sizes stay tensors, so the graph keeps them dynamic
    shapes = spatial_shapes.unbind(0) if tracing else spatial_shapes.tolist()
    # split, not slicing: its backward concatenates the level gradients once, where each slice's
    # backward would build a zero-filled gradient of the whole value
    levels = value.split([h * w for h, w in shapes], dim=1)
    for level, ((h, w), level_value) in enumerate(zip(shapes, levels)):
        level_value = level_value.permute(0, 2, 3, 1).reshape(n * m, d, h, w)  # (N*M, D, H, W)
        # points before queries, so each point's samples are a contiguous (N*M, D, Lq) slice:
        # a multiply-add per point then streams along Lq, and no weighted copy is made
        grid = rearrange(grids[:, :, :, level], 'n q m p xy -> (n m) p q xy')
        samples = F.grid_sample(level_value.to(dtype), grid, mode='bilinear', padding_mode='zeros',
                                align_corners=False)  # (N*M, D, P, Lq)
        weights = rearrange(attention_weights[:, :, :, level], 'n q m p -> (n m) p q')
        # unbind: one backward node stacks the P slice gradients, instead of P full-size
        # zero-filled gradients that slicing would give
        for point_samples, point_weights in zip(samples.unbind(2), weights.unbind(1)):
            out.addcmul_(point_samples, point_weights[:, None])
    return out.to(value.dtype).reshape(n, m * d, lq).transpose(1, 2)  # (N, Lq, M*D)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query attends to ``num_points`` learned offsets
    around its reference point on each of ``num_levels`` maps, with ``num_heads`` heads.

    forward(query (N, Lq, C), reference_points (N, Lq, L, 2) as normalised (x, y) or
    (N, Lq, L, 4) as normalised boxes (cx, cy, w, h), value (N, S, C), spatial_shapes (L, 2),
    level_start_index (L,), padding_mask (N, S) True at padded positions or None) -> (N, Lq, C).
    """

    def __init__(self, dim: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.sampling_offsets = Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = Linear(dim, dim)
        self.output_proj = Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self):
        """As the official code: offsets start on a ring of 8 head directions (point k at k+1 times
        the unit step), uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # onto the square
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
        grid = grid.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where and how much each query looks: query (N, Lq, C), reference_points (N, Lq, L, 2|4)
        as in :meth:`forward`, spatial_shapes (L, 2) -> sampling_locations (N, Lq, M, L, P, 2)
        as (x, y) in [0, 1] of each level's extent and attention_weights (N, Lq, M, L, P) (a
        softmax over each head's L * P samples): the arguments :func:`ms_deform_attn` gets."""
        m, l, p = self.num_heads, self.num_levels, self.num_points
        offsets = rearrange(self.sampling_offsets(query), 'n q (m l p xy) -> n q m l p xy',
                            m=m, l=l, p=p)
        weights = rearrange(self.attention_weights(query), 'n q (m lp) -> n q m lp', m=m)
        weights = rearrange(weights.softmax(-1), 'n q m (l p) -> n q m l p', l=l)
        ref = reference_points[:, :, None, :, None, :]  # (N, Lq, 1, L, 1, 2|4)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by its (W, H)
            size_wh = spatial_shapes.flip(-1).to(offsets)[None, None, None, :, None, :]
            locations = ref + offsets / size_wh
        elif reference_points.shape[-1] == 4:
            # offsets are fractions of the half box, shrunk by the point count
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        else:
            raise ValueError('reference_points must end in 2 (points) or 4 (boxes), got '
                             f'{tuple(reference_points.shape)}')
        return locations, weights

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index,
                padding_mask=None):
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = rearrange(value, 'n s (m d) -> n s m d', m=self.num_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        return self.output_proj(ms_deform_attn(value, spatial_shapes, level_start_index,
                                               locations, weights))
