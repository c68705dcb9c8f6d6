# Unsplit RTMDet-tiny on the synthetic shapes dataset: the teacher of the split RTMDet student
# (configs/ecc_rtmdet_tiny_synthetic_kd.py), and the detector an edge user would start from.
#   python tools/train.py configs/rtmdet_tiny_synthetic.py --work-dir work_dirs/rtmdet/baseline
#   python tools/test.py  configs/rtmdet_tiny_synthetic.py work_dirs/rtmdet/baseline/epoch_24.pth
_base_ = [
    '_base_/models/rtmdet_tiny_synthetic.py',
    '_base_/datasets/synthetic_coco.py',
    '_base_/schedules/synthetic_schedule.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

# from scratch, a one-stage head needs longer than Faster R-CNN's 12 epochs on 400 images
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=8)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.05,
         convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=4e-3, weight_decay=0.05),
                     paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0,
                                        bypass_duplicate=True))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=8, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(window_size=20)
randomness = dict(seed=0)
