"""ONNX export support shared by the backbones and the detectors (TorchScript exporter)."""
import torch
from torch.onnx import symbolic_helper

# Resize with antialiasing (PIL-style cubic, a = -0.5) exists from ONNX opset 18.
OPSET = 18


@symbolic_helper.parse_args('v', 'v', 'b', 'none')
def _upsample_bicubic2d_aa(g, x, output_size, align_corners, scale_factors):
    """``F.interpolate(mode='bicubic', antialias=True)`` (position-table resampling) as ONNX
    Resize: cubic, coefficient -0.5 and antialias as PyTorch's kernel, half-pixel centres."""
    if align_corners:
        raise ValueError('ONNX export: bicubic antialiased resampling with align_corners=True is not supported')
    batch_channels = g.op('Slice', g.op('Shape', x), g.op('Constant', value_t=torch.tensor([0])),
                          g.op('Constant', value_t=torch.tensor([2])))
    sizes = g.op('Concat', batch_channels, g.op('Cast', output_size, to_i=7), axis_i=0)  # int64
    empty = g.op('Constant', value_t=torch.tensor([], dtype=torch.float32))
    return g.op('Resize', x, empty, empty, sizes, mode_s='cubic', cubic_coeff_a_f=-0.5, antialias_i=1,
                coordinate_transformation_mode_s='half_pixel', exclude_outside_i=1)


def register_onnx_symbolics() -> None:
    """Teach the TorchScript ONNX exporter the ops it lacks (idempotent)."""
    torch.onnx.register_custom_op_symbolic('aten::_upsample_bicubic2d_aa', _upsample_bicubic2d_aa, OPSET)
