"""tools/benchmark.py's linear mix: the (M, K, N) shapes it records from a model's forward, the mix
it times, and the comparison of a model's speed-up with the machine's ratio on that mix. No
timings are asserted (the machine is shared): only what is recorded and how it is combined."""
import json
import os
import sys

import torch
from torch import nn

from helpers import ROOT, load_tool
from zoo.layers import fast_paths
from zoo.layers.linear import Linear, linear
from zoo.layers.mlp import Mlp

sys.path.insert(0, os.path.join(ROOT, 'tools'))
benchmark = load_tool('benchmark', 'benchmark_tool')


class Tiny(nn.Module):
    """x (B, T, 8) -> (B, T, 8): an nn.Linear, a zoo Linear used in slices through the functional
    linear (as CvT's q, k, v from one qkv), two zoo Mlps (fc1 + GELU fused in inference), and an
    nn.Linear that never runs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.qkv = Linear(16, 48)
        self.mlps = nn.ModuleList([Mlp(16, 32, 16), Mlp(16, 32, 16)])
        self.unused = nn.Linear(16, 4)
        self.out = Linear(16, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        q, k, v = [linear(x, w, b, self.qkv.onednn) for w, b in zip(self.qkv.weight.chunk(3), self.qkv.bias.chunk(3))]
        x = q + k + v
        for mlp in self.mlps:
            x = x + mlp(x)
        return self.out(x)


def tiny_shapes(onednn: bool):
    with fast_paths(onednn=onednn):
        model = Tiny().eval()
    x = torch.randn(2, 5, 8)
    return benchmark.linear_shapes(model, lambda: model(x))


def test_linear_shapes_counts_every_product_with_its_rows_features_and_outputs():
    # M = 2 x 5 rows; the qkv slices are three (10, 16, 16) products; each Mlp adds fc1 and fc2
    expected = {(10, 8, 16): 1, (10, 16, 16): 3, (10, 16, 32): 2, (10, 32, 16): 2, (10, 16, 8): 1}
    for onednn in (True, False):  # oneDNN's product where this CPU has it, F.linear without
        shapes, unseen = tiny_shapes(onednn)
        assert shapes == expected, onednn
        assert list(shapes) == list(expected)  # in order of first occurrence
        assert unseen == ['unused'], onednn


def test_linear_mix_runs_exactly_the_recorded_products_in_each_dtype():
    shapes = {(10, 8, 16): 1, (10, 16, 32): 2, (3, 32, 16): 3}
    for dtype in (torch.float32, torch.bfloat16):
        mix = benchmark.linear_mix(shapes, torch.device('cpu'), dtype)
        recorder = benchmark._LinearRecorder()
        with torch.inference_mode(), recorder:
            mix()
        assert dict(recorder.counts) == shapes, dtype
        assert len(recorder.weights) == 6, dtype  # a weight of its own for every product


def test_linear_paths_name_both_dtypes():
    paths = benchmark.linear_paths(torch.bfloat16, 'cpu')
    assert set(paths) == {'float32', 'bfloat16'}
    assert 'bfloat16' in paths['bfloat16'] and set(benchmark.linear_paths(torch.float32, 'cpu')) == {'float32'}
    # zoo.layers.linear takes oneDNN on CPU tensors only
    assert benchmark.linear_paths(torch.bfloat16, 'cuda') == {'float32': 'F.linear',
                                                              'bfloat16': 'F.linear on bfloat16 operands'}


def test_against_machine_holds_the_speed_up_against_the_mix_ratio():
    # batch 8: 8 img/s float32 (1 s a forward), 16 img/s bfloat16 (0.5 s): speed-up 2; the mix
    # takes 0.25 s in float32 and 0.1 s in bfloat16: the machine's ratio 2.5, reached at 0.8
    got = benchmark.against_machine(8, ips=16.0, ips_fp32=8.0, mix_s=0.1, mix_fp32_s=0.25)
    assert set(got) == {'zoo_speedup', 'machine_ratio', 'of_machine', 'meets_target', 'linear_share',
                        'linear_share_fp32', 'amdahl_bound', 'of_bound'}
    assert got['zoo_speedup'] == 2.0 and got['machine_ratio'] == 2.5
    assert abs(got['of_machine'] - 0.8) < 1e-12 and got['meets_target'] is False
    assert abs(got['linear_share'] - 0.2) < 1e-12 and abs(got['linear_share_fp32'] - 0.25) < 1e-12
    # Amdahl: a quarter of float32's time at 2.5x, three quarters at 2x: 1 / (0.1 + 0.375)
    assert abs(got['amdahl_bound'] - 1 / 0.475) < 1e-12 and abs(got['of_bound'] - 2 * 0.475) < 1e-12
    assert benchmark.against_machine(8, ips=19.2, ips_fp32=8.0, mix_s=0.1, mix_fp32_s=0.25)['meets_target'] is True


def test_vs_float32_reports_the_machine_ratio_of_each_models_own_linears(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    benchmark.main(['--models', 'deit_tiny_patch16_224', '--batch-size', '1', '--dtype', 'bfloat16', '--vs-float32',
                    '--no-peer', '--no-memory', '--rounds', '1', '--iters', '1', '--warmup', '0',
                    '--default-allocator', '--json', str(out)])
    report = json.loads(out.read_text())
    row, = report['results']
    # DeiT-Ti at batch 1: 197 tokens of 192 features through 12 blocks (qkv, proj, fc1, fc2), then
    # the head on the class token
    assert {tuple(s[:3]): s[3] for s in row['linear_shapes']} == {
        (197, 192, 576): 12, (197, 192, 192): 12, (197, 192, 768): 12, (197, 768, 192): 12, (1, 192, 1000): 1}
    assert row['linear_unseen'] == []
    for key in ('zoo_ips', 'zoo_fp32_ips', 'zoo_speedup', 'machine_ratio', 'of_machine', 'linear_s',
                'linear_fp32_s', 'linear_share', 'linear_share_fp32', 'amdahl_bound', 'of_bound'):
        assert row[key] > 0, key
    assert row['of_machine'] == row['zoo_speedup'] / row['machine_ratio']
    assert set(report['linear_paths']) == {'float32', 'bfloat16'} and report['target_of_machine'] == 0.9
    printed = capsys.readouterr().out
    assert 'of machine' in printed and 'deit_tiny_patch16_224' in printed.split('of machine')[1]
