"""tools/train.py's options practitioners reach for: --accum (gradient accumulation, counted in the
learning-rate scaling), --ema (mmengine's EMAHook), --logger tensorboard|wandb|mlflow,
--launcher slurm (tools/test.py's too); and the detection runtime's best-COCO-AP checkpoint."""
import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from helpers import ROOT, tiny_detr_config
from zoo.runtime import cli, training_options
from zoo.runtime.engine import Runner, lr_scale_ratio, slurm_environment
from zoo.runtime.hook_args import check_hook_arguments

DEMO = os.path.join(ROOT, 'configs', 'demo', 'detr_t2t_shapes.py')
train = cli.load_tool('train')


def _build(tmp_path, *options, config=DEMO):
    """train.py's config for ``options`` (threads left as they are in this process)."""
    args = train.parse_args([config, '--work-dir', str(tmp_path / 'w'), '--threads', str(torch.get_num_threads()),
                             *options])
    return train.build_config(args)


def _backends(cfg) -> list[str]:
    return [b['type'] for b in cfg.visualizer.vis_backends]


# --accum -------------------------------------------------------------------------------------------

def test_accum_sets_mmengines_accumulative_counts_with_and_without_amp(tmp_path):
    assert 'accumulative_counts' not in _build(tmp_path).optim_wrapper
    assert _build(tmp_path, '--accum', '4').optim_wrapper.accumulative_counts == 4
    amp = _build(tmp_path, '--accum', '3', '--amp')
    assert amp.optim_wrapper.type == 'AutocastOptimWrapper' and amp.optim_wrapper.accumulative_counts == 3
    for bad in ('0', '-2', 'two'):
        with pytest.raises(SystemExit):
            train.parse_args([DEMO, '--accum', bad])


def test_the_learning_rate_counts_accumulated_iterations_in_the_batch(tmp_path):
    """auto_scale_lr's effective batch is batch x processes x N: the demo's batch of 8 written for
    base_batch_size 8 trains at twice the rate with --accum 2, as with a batch of 16."""
    assert lr_scale_ratio(dict(base_batch_size=8), 8, 1, 2) == lr_scale_ratio(dict(base_batch_size=8), 16, 1) == 2.0
    assert lr_scale_ratio(dict(base_batch_size=64), 4, 2, 8) == 1.0
    assert lr_scale_ratio(dict(base_batch_size=8, enable=False), 8, 1, 4) == 1.0
    config = tiny_detr_config(tmp_path, num_val=5, max_epochs=2, local_vis=False)
    lrs = {}
    for accum in (1, 2):
        cfg = _build(tmp_path, '--accum', str(accum), '--cfg-options', 'auto_scale_lr.base_batch_size=4',
                     config=config)
        cfg.experiment_name = f'accum_{accum}'
        runner = Runner.from_cfg(cfg)
        messages = []
        runner.logger.info = messages.append
        wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
        runner.scale_lr(wrapper, runner.auto_scale_lr)
        lrs[accum] = max(g['lr'] for g in wrapper.optimizer.param_groups)
        if accum == 2:
            assert any('1 process(es) x batch 4 x 2 accumulated iterations / base_batch_size 4' in m for m in messages)
    assert lrs[2] == pytest.approx(2 * lrs[1])


# --ema ---------------------------------------------------------------------------------------------

def test_ema_adds_mmengines_ema_hook_with_the_documented_momentum(tmp_path):
    assert not any(h.get('type') == 'EMAHook' for h in _build(tmp_path).custom_hooks)
    (ema,) = [h for h in _build(tmp_path, '--ema').custom_hooks if h.get('type') == 'EMAHook']
    assert ema == dict(type='EMAHook', ema_type='MomentumAnnealingEMA', momentum=0.0002, gamma=100)
    assert training_options.EMA_MOMENTUM == 0.0002
    cfg = _build(tmp_path, '--ema-momentum', '0.001')  # implies --ema
    assert [h['momentum'] for h in cfg.custom_hooks if h.get('type') == 'EMAHook'] == [0.001]
    check_hook_arguments(cfg)  # the hook's arguments are ones mmengine takes
    assert any(h.get('type') == 'ClassCountCheckHook' for h in cfg.custom_hooks)  # the config's hooks kept
    for bad in ('0', '1', '1.5', 'x'):
        with pytest.raises(SystemExit):
            train.parse_args([DEMO, '--ema-momentum', bad])


def test_ema_averages_after_each_step_as_documented():
    """MomentumAnnealingEMA: ema = (1 - m) ema + m weights, m = max(momentum, 100 / (100 + step))."""
    from mmengine.model.averaged_model import MomentumAnnealingEMA
    model = torch.nn.Linear(1, 1, bias=False)
    ema = MomentumAnnealingEMA(model, momentum=0.0002, gamma=100)
    expected = model.weight.detach().clone()
    for _ in range(3):
        model.weight.data += 1.0
        ema.update_parameters(model)
        step = int(ema.steps) - 1  # steps counts updates, the first copying the weights
        m = max(0.0002, 100 / (100 + step)) if step > 0 else 1.0
        expected = (1 - m) * expected + m * model.weight.detach()
        torch.testing.assert_close(ema.module.weight, expected)


# --logger ------------------------------------------------------------------------------------------

def test_tensorboard_is_the_default_logger(tmp_path):
    assert _backends(_build(tmp_path)) == ['LocalVisBackend', 'TensorboardVisBackend']
    assert _backends(_build(tmp_path, '--logger', 'tensorboard')) == ['LocalVisBackend', 'TensorboardVisBackend']


@pytest.mark.parametrize('name, backend', [('wandb', 'WandbVisBackend'), ('mlflow', 'MLflowVisBackend')])
def test_wandb_and_mlflow_replace_tensorboard_where_installed(tmp_path, monkeypatch, name, backend):
    real = training_options.importlib.util.find_spec
    monkeypatch.setattr(training_options.importlib.util, 'find_spec',
                        lambda module: object() if module == name else real(module))
    cfg = _build(tmp_path, '--logger', name)
    assert _backends(cfg) == ['LocalVisBackend', backend]
    settings = cfg.visualizer.vis_backends[-1]
    if name == 'wandb':
        assert settings['init_kwargs']['name'] == 'w'  # the work dir's name
    else:
        assert settings['exp_name'] == 'vitzoo' and settings['run_name'] == 'w'


@pytest.mark.parametrize('name', ['wandb', 'mlflow'])
def test_a_logger_that_is_not_installed_says_what_to_install(tmp_path, monkeypatch, name):
    real = training_options.importlib.util.find_spec
    monkeypatch.setattr(training_options.importlib.util, 'find_spec',
                        lambda module: None if module == name else real(module))
    with pytest.raises(SystemExit, match=f'pip install {name}'):
        _build(tmp_path, '--logger', name)
    with pytest.raises(SystemExit):  # and nothing else is accepted
        train.parse_args([DEMO, '--logger', 'neptune'])


# --launcher slurm ----------------------------------------------------------------------------------

def test_slurm_is_a_launcher(tmp_path):
    assert _build(tmp_path, '--launcher', 'slurm').launcher == 'slurm'


def test_tools_test_takes_the_same_launchers(tmp_path):
    """tools/test.py --launcher: train.py's choices (slurm included), into the config the Runner gets."""
    from mmengine.registry import MODELS
    evaluate = cli.load_tool('test')
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
    checkpoint = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict(), meta={}), checkpoint)
    for launcher in training_options.LAUNCHERS:
        args = evaluate.parse_args([DEMO, checkpoint, '--work-dir', str(tmp_path / 'w'), '--threads',
                                    str(torch.get_num_threads()), '--launcher', launcher])
        built = evaluate.build_config(args)
        assert built.launcher == launcher and built.load_from == checkpoint
    assert evaluate.parse_args([DEMO, checkpoint]).launcher == 'none'
    with pytest.raises(SystemExit):
        evaluate.parse_args([DEMO, checkpoint, '--launcher', 'mpi'])


@pytest.mark.slow
def test_tools_test_runs_as_a_slurm_task(tmp_path):
    """One srun task on a CPU evaluating a checkpoint: a gloo group of one, the metrics printed."""
    config = tiny_detr_config(tmp_path, num_val=2, local_vis=False)
    from mmengine.registry import MODELS
    import detection.engine  # noqa: F401  (registers Detector)
    checkpoint = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(config).model).state_dict(), meta={}), checkpoint)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')}
    env.update(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_NODELIST='localhost', MASTER_PORT=str(port),
               CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), config, checkpoint,
                           '--work-dir', str(tmp_path / 'w'), '--launcher', 'slurm', '--threads', '1'],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'coco/AP50' in done.stdout
    (log,) = glob.glob(str(tmp_path / 'w' / '*' / '*.log'))
    text = open(log).read()
    assert 'Distributed launcher: slurm' in text and 'Distributed training: True' in text
    assert (tmp_path / 'w' / 'per_class.json').exists()


def test_slurm_tasks_become_torch_distributed_ranks(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '5')
    monkeypatch.setenv('SLURM_NTASKS', '16')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'gpu-a')
    monkeypatch.setenv('MASTER_ADDR', 'gpu-a')
    slurm_environment()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == ('5', '16', '1')
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('gpu-a', '29500')


def test_a_slurm_task_starts_a_cpu_process_group():
    """One srun task on a CPU: the gloo group mmengine cannot start without CUDA."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')}
    env.update(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_NODELIST='localhost', MASTER_PORT=str(port),
               CUDA_VISIBLE_DEVICES='')
    script = ('import sys; sys.path.insert(0, sys.argv[1]); import torch.distributed as dist; '
              'from zoo.runtime.engine import init_cpu_distributed, close_distributed; init_cpu_distributed("slurm"); '
              'print(dist.get_backend(), dist.get_rank(), dist.get_world_size()); close_distributed()')
    done = subprocess.run([sys.executable, '-c', script, ROOT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['gloo', '0', '1']


# save_best -----------------------------------------------------------------------------------------

def test_detection_configs_keep_the_best_coco_ap_checkpoint():
    for name in ('detr_t2t.py', 'deformable_detr_r50.py', 'demo/detr_t2t_shapes.py'):
        hook = Config.fromfile(os.path.join(ROOT, 'configs', name)).default_hooks.checkpoint
        assert hook.type == 'SafeCheckpointHook' and hook.save_best == 'coco/AP' and hook.rule == 'greater', name
    hook = Config.fromfile(os.path.join(ROOT, 'configs', 'classification', 'deit_tiny_fashion_mnist.py')
                           ).default_hooks.checkpoint
    assert hook.type == 'SafeCheckpointHook' and hook.save_best == 'accuracy/top1'


# all of them in one tiny training ------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_training_accumulates_keeps_ema_and_the_best_checkpoint(tmp_path):
    """8 images, batch 2, --accum 2, 2 epochs: 8 iterations and 4 optimiser steps; the checkpoint
    holds the averaged weights and the trained ones beside them; the best COCO AP is kept; the
    TensorBoard events and the log's effective batch are there. Through vitzoo-train's function."""
    config, work = tiny_detr_config(tmp_path, num_val=5, max_epochs=2, local_vis=False), str(tmp_path / 'work')
    assert cli.main_train([config, '--work-dir', work, '--accum', '2', '--ema', '--threads',
                           str(torch.get_num_threads()), '--cfg-options', 'train_dataloader.batch_size=2']) == 0
    checkpoint = torch.load(os.path.join(work, 'epoch_2.pth'), map_location='cpu', weights_only=False)
    steps = [int(state['step']) for state in checkpoint['optimizer']['state'].values()]
    assert max(steps) == 4  # 8 without --accum
    ema, trained = checkpoint['ema_state_dict'], checkpoint['state_dict']
    key = 'net.class_embed.weight'
    assert not torch.equal(ema[f'module.{key}'], trained[key])  # the trained weights, kept beside the average
    best = glob.glob(os.path.join(work, 'best_coco_AP_epoch_*.pth'))
    assert len(best) == 1
    assert glob.glob(os.path.join(work, '*', 'vis_data', 'events.out.tfevents.*'))
    (log,) = glob.glob(os.path.join(work, '*', '*.log'))
    assert 'x batch 2 x 2 accumulated iterations' in open(log).read()
