# Split RTMDet-tiny on COCO 2017, the real-time detector an edge user starts from:
# edge = CSPNeXt stem + stage1 + EntropyBottleneckNeck encoder; cloud = decoder + stages 2-4 +
# CSPNeXtPAFPN + RTMDetSepBNHead. Pipeline (Mosaic/MixUp and its stage-2 switch) and schedule
# are mmdet's own config.
#   python tools/train.py configs/ecc_rtmdet_tiny_coco.py      (data in data/coco/, see docs/splitting.md)
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudRTMDet',
    split_after=1,  # edge = stem + stage1 (48 channels at stride 4); FPN takes stages 2-4
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=32, downsample=2, beta=0.01),
    # the student starts from the teacher (KnowledgeAdaptationHook): no ImageNet download
    backbone=dict(init_cfg=None))

val_evaluator = [
    dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json',
         metric='bbox', format_only=False, backend_args=None),
    dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0]),
]
test_evaluator = val_evaluator

# The teacher is MMDetection's published RTMDet-tiny COCO checkpoint (model zoo,
# configs/rtmdet/README.md); put it at teacher_checkpoint or override it with --cfg-options.
# Loaded only when training starts: building this config's model does not need it.
teacher_config = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
teacher_checkpoint = 'checkpoints/rtmdet_tiny_8xb32-300e_coco.pth'
# mmdet's EMAHook (validation and checkpoints use the averaged weights); EMACodingTablesHook,
# after it, saves the coding tables of those averaged weights with them.
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='EMACodingTablesHook'),
    dict(type='PipelineSwitchHook', switch_epoch=280,
         switch_pipeline={{_base_.train_pipeline_stage2}}),
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=20, feature_loss_weight=1.0,
         response_loss_weight=1.0, temperature=1.0, init_student_from_teacher=True),
]
