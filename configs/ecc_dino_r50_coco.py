# Split DINO-4scale R50 on COCO 2017 (the DETR family): edge = ResNet-50 stem + layer1 +
# EntropyBottleneckNeck encoder; cloud = decoder + layer2-4 + ChannelMapper + the deformable
# transformer encoder/decoder + DINOHead. The same works for Deformable DETR, DETR, Conditional
# and DAB-DETR: type='EdgeCloud<their type>'.
#   python tools/train.py configs/ecc_dino_r50_coco.py      (data in data/coco/, see docs/splitting.md)
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudDINO',
    split_after=1,  # edge = stem + layer1 (256 channels at stride 4); frozen_stages=1 stays there
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=96, downsample=2, beta=0.01),
    backbone=dict(init_cfg=None))

val_evaluator = [
    dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json',
         metric='bbox', format_only=False, backend_args=None),
    dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0]),
]
test_evaluator = val_evaluator

# Teacher: MMDetection's published DINO-4scale R50 12e checkpoint (model zoo,
# configs/dino/README.md). Response distillation is for dense and RoI heads only, so the DETR
# student learns from the teacher's features and the labels.
teacher_config = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
teacher_checkpoint = 'checkpoints/dino-4scale_r50_8xb2-12e_coco.pth'
custom_hooks = [
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=4, feature_loss_weight=1.0,
         response_loss_weight=0.0, init_student_from_teacher=True),
]
