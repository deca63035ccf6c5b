default_scope = None
# SafeCheckpointHook (zoo.runtime.checkpointing): mmengine's CheckpointHook, same arguments, whose files
# survive a kill or a full disk and whose checkpoints resume exactly (random state included).
# save_best: the checkpoint with the highest COCO AP so far is also kept, as best_coco_AP_epoch_N.pth
# (weights only; classification's runtime keeps the best top-1 instead).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3, save_last=True,
                    save_best='coco/AP', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
visualizer = dict(type='Visualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
log_processor = dict(window_size=20, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
# A num_classes that disagrees with the data's categories stops the run with the fix.
custom_hooks = [dict(type='ClassCountCheckHook')]
