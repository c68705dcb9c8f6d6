# A cloud teacher that knows more than the edge (CEMA's premise): a deeper backbone (ResNet-34)
# and a wider FPN (96 channels) than the R18-FPN teacher the student is split from, trained with
# corruption augmentation (RandomCorruption: half of the images get one of the four held-out
# ImageNet-C corruptions -- speckle noise, gaussian blur, spatter, saturate -- at severity 1-5;
# the corruptions the benchmarks evaluate are refused by the transform). Same data, schedule and
# classes as configs/faster_rcnn_r18_fpn_synthetic.py; its stage outputs have the R18's channels,
# so the KD hook's feature distillation and CEMA's labels work with it unchanged.
#   python tools/train.py configs/faster_rcnn_r34_fpn_synthetic_robust.py \
#       --work-dir work_dirs/robust_teacher
#   python tools/benchmark_robustness.py configs/faster_rcnn_r34_fpn_synthetic_robust.py \
#       work_dirs/robust_teacher/epoch_12.pth ...   (its mPC beside the R18 teacher's)
_base_ = './faster_rcnn_r18_fpn_synthetic.py'

wide = 96
model = dict(
    backbone=dict(depth=34),
    neck=dict(out_channels=wide),
    rpn_head=dict(in_channels=wide, feat_channels=wide),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=wide), bbox_head=dict(in_channels=wide)))

train_dataloader = dict(dataset=dict(pipeline={{_base_.corrupted_train_pipeline}}))
