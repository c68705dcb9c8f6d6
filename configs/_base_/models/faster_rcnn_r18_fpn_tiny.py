# Faster R-CNN with a ResNet-18 backbone and heads shrunk to be trainable on a 2-core CPU.
# Built on MMDetection's own R50-FPN model base; only sizes change. Trained from scratch
# (no pretrained weights can be downloaded here), so BN layers train and no stage is frozen.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'

fpn_channels = 64
model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=fpn_channels),
    rpn_head=dict(
        in_channels=fpn_channels,
        feat_channels=fpn_channels,
        # objects are 8-64 px on 128 px images: anchors of 8..128 px instead of 32..512
        anchor_generator=dict(scales=[2])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=6)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(max_per_img=50)))
