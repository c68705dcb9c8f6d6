# Cloud-only baseline: the edge sends a JPEG of the camera image and the unsplit detector runs in
# the cloud on the decoded JPEG. Evaluate a trained teacher with it:
#   python tools/test.py configs/faster_rcnn_r18_fpn_synthetic_jpeg.py \
#       work_dirs/demo/baseline/epoch_12.pth \
#       [--cfg-options test_dataloader.dataset.pipeline.1.quality=10]
# CommunicationMetric reports the JPEG bytes; CloudOnlyAccountingHook adds the cloud's time and
# FLOPs, so the modelled latency is comparable with the split detectors'.
_base_ = './faster_rcnn_r18_fpn_synthetic.py'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='JPEGCompressImage', quality=30),  # on the original image, before Resize
    dict(type='Resize', scale={{_base_.image_size}}, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'ecc_comm')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoMetric', ann_file='data/synthetic_coco/annotations/instances_val.json',
         metric='bbox', format_only=False),
    dict(type='CommunicationMetric', bandwidth_mbps=[1.0, 10.0]),
]
test_evaluator = val_evaluator
custom_hooks = [dict(type='CloudOnlyAccountingHook')]
