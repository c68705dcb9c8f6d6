# RetinaNet with a ResNet-18 backbone and a narrow head, trainable on a 2-core CPU.
# Built on MMDetection's own RetinaNet R50-FPN model base; only sizes change.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

fpn_channels = 64
model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=fpn_channels),
    bbox_head=dict(
        num_classes=6,
        in_channels=fpn_channels,
        feat_channels=fpn_channels,
        stacked_convs=2,
        # objects are 8-64 px on 128 px images: smaller anchors than COCO's
        anchor_generator=dict(octave_base_scale=2)),
    test_cfg=dict(nms_pre=500, max_per_img=50))
