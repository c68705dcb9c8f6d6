# Split Faster R-CNN R50-FPN on COCO 2017: edge = stem + layer1 + EntropyBottleneckNeck encoder,
# cloud = decoder + layer2..4 + FPN + heads. Reports COCO mAP and communication cost together.
# Any ResNet-family mmdet config becomes a split one with the same three lines in `model`.
#   python tools/train.py configs/ecc_faster_rcnn.py      (data in data/coco/, see README)
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

model = dict(
    type='EdgeCloudTwoStageDetector',
    split_after=1,  # edge = stem + layer1 (256 channels at stride 4)
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=96, downsample=2, beta=0.01))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'quantiles': dict(decay_mult=0.0)}))

val_evaluator = [
    dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json',
         metric='bbox', format_only=False, backend_args=None),
    dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0]),
]
test_evaluator = val_evaluator
