# Split Faster R-CNN R50-FPN on COCO 2017: edge = stem + layer1 + EntropyBottleneckNeck encoder,
# cloud = decoder + layer2..4 + FPN + heads. Reports COCO mAP and communication cost together.
# Any ResNet-family mmdet config becomes a split one with the same three lines in `model`.
#   python tools/train.py configs/ecc_faster_rcnn.py      (data in data/coco/, see docs/splitting.md)
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudTwoStageDetector',
    split_after=1,  # edge = stem + layer1 (256 channels at stride 4)
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=96, downsample=2, beta=0.01),
    # the student starts from the teacher's weights (KnowledgeAdaptationHook below), so no
    # ImageNet backbone is loaded (torchvision:// weights need torchvision, unusable here)
    backbone=dict(init_cfg=None))

val_evaluator = [
    dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json',
         metric='bbox', format_only=False, backend_args=None),
    dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0]),
]
test_evaluator = val_evaluator

# Knowledge adaptation from the unsplit Faster R-CNN R50-FPN (the teacher): stage 1 trains the
# compressor to reproduce the teacher's backbone features, stage 2 fine-tunes the cloud side with
# the labels + the teacher's RoI class distributions. The hook reads these two top-level values
# (override them with --cfg-options teacher_checkpoint=...). The checkpoint is MMDetection's
# published Faster R-CNN R50-FPN 1x COCO model (box AP 37.4); download it from the MMDetection
# model zoo (https://mmdetection.readthedocs.io/en/latest/model_zoo.html, faster_rcnn/README.md):
#   mkdir -p checkpoints && wget -P checkpoints https://download.openmmlab.com/mmdetection/v2.0/\
#   faster_rcnn/faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth
# It is only loaded when training starts; building this config's model does not need it.
teacher_config = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
teacher_checkpoint = 'checkpoints/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth'
custom_hooks = [
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=6, feature_loss_weight=1.0,
         response_loss_weight=1.0, temperature=1.0, detection_loss_weight_stage1=0.0,
         init_student_from_teacher=True),
]
