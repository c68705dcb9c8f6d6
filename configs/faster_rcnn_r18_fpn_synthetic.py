# Baseline (unsplit) detector on the synthetic shapes dataset: the teacher of the split models.
#   python tools/train.py configs/faster_rcnn_r18_fpn_synthetic.py
#   python tools/test.py  configs/faster_rcnn_r18_fpn_synthetic.py work_dirs/.../epoch_12.pth
_base_ = [
    '_base_/models/faster_rcnn_r18_fpn_tiny.py',
    '_base_/datasets/synthetic_coco.py',
    '_base_/schedules/synthetic_schedule.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(window_size=20)
randomness = dict(seed=0)
