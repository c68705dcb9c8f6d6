# Split YOLOX-S on COCO 2017: edge = CSPDarknet Focus stem + stage1 + EntropyBottleneckNeck
# encoder; cloud = decoder + stages 2-4 + YOLOXPAFPN + YOLOXHead. Pipeline, schedule and hooks
# are mmdet's own config.
#   python tools/train.py configs/ecc_yolox_s_coco.py      (data in data/coco/, see docs/splitting.md)
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudYOLOX',
    split_after=1,  # edge = Focus stem + stage1 (64 channels at stride 4)
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=48, downsample=2, beta=0.01))

val_evaluator = [
    dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json',
         metric='bbox', format_only=False, backend_args=None),
    dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0]),
]
test_evaluator = val_evaluator

# Teacher: MMDetection's published YOLOX-S COCO checkpoint (model zoo, configs/yolox/README.md).
teacher_config = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
teacher_checkpoint = 'checkpoints/yolox_s_8xb8-300e_coco.pth'
# mmdet's hooks, EMAHook included (validation and checkpoints use the averaged weights);
# EMACodingTablesHook, after it, saves the coding tables of those averaged weights with them.
custom_hooks = [
    dict(type='YOLOXModeSwitchHook', num_last_epochs=15, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True,
         priority=49),
    dict(type='EMACodingTablesHook'),
    # YOLOX trains its class logits only where objects are (objectness gates them), so the
    # dense response distillation would copy untrained logits: features + labels only
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=20, feature_loss_weight=1.0,
         response_loss_weight=0.0, init_student_from_teacher=True),
]
