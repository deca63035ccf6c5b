# The shared runtime (logging, checkpoints every epoch, seeds), keeping the best top-1 too.
_base_ = ['../../_base_/default_runtime.py']
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3,
                                     save_last=True, save_best='accuracy/top1', rule='greater'))
# The detection runtime's ClassCountCheckHook is a detector's; a classifier's datasets check their
# class count themselves (classification.data.check_num_classes).
custom_hooks = []
