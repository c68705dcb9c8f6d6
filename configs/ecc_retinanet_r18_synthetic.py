# Single-stage plug-in path: a split RetinaNet on the synthetic dataset.
#   python tools/train.py configs/ecc_retinanet_r18_synthetic.py
_base_ = [
    './_base_/models/retinanet_r18_fpn_tiny.py',
    './_base_/datasets/synthetic_coco.py',
    './_base_/schedules/synthetic_schedule.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudSingleStageDetector',
    split_after=1,
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=32, downsample=2, beta=0.05))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(window_size=20)
randomness = dict(seed=0)

# COCO mAP and the communication cost side by side; latency is modelled per uplink bandwidth.
val_evaluator = [
    dict(type='CocoMetric', ann_file='data/synthetic_coco/annotations/instances_val.json',
         metric='bbox', format_only=False),
    dict(type='CommunicationMetric', bandwidth_mbps=[1.0, 10.0]),
]
test_evaluator = val_evaluator
