# Dynamic split Faster R-CNN (MEANet main exit / dynamic ECCENTRIC) on the synthetic dataset.
# The KD student (configs/ecc_faster_rcnn_r18_synthetic_kd.py) gets an edge exit: a light ATSS
# head on a small pyramid over the stem's features, which the edge computes anyway. A router keeps
# the images the exit is sure about on the edge (0 uplink bytes) and sends the rest as today.
#
# Training (stage 3 of the demo): the student is frozen; the exit learns from the labels and from
# the cloud's own detections (pseudo labels: knowledge adaptation), then the router is calibrated
# to its target offload ratio on training images before every validation/test:
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
#       [--cfg-options load_from=work_dirs/demo/student/epoch_12.pth]
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
#       work_dirs/ecc_faster_rcnn_r18_synthetic_dynamic/epoch_6.pth
# Other routers / operating points: --cfg-options model.router.type=ScoreBandRouter
# model.router.target_offload_ratio=0.3 (or model.router.threshold=...); the learned router is
# trained by tools/train_router.py; tools/benchmark_dynamic.py sweeps all of them.
_base_ = './ecc_faster_rcnn_r18_synthetic_kd.py'

exit_channels = 48
# the exit head's parts, reused by the extension exit (..._dynamic_ext.py)
# F_k is at stride 4 (stem): the pyramid's levels are at strides 8, 16, 32; objects are 8-64 px
exit_anchor_generator = dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=2,
                             scales_per_octave=1, strides=[8, 16, 32])
exit_bbox_coder = dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                       target_stds=[0.1, 0.1, 0.2, 0.2])
exit_loss_cls = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
exit_loss_bbox = dict(type='GIoULoss', loss_weight=2.0)
exit_loss_centerness = dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)
exit_norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    edge_exit=dict(
        type='EdgeExit',
        neck=dict(type='EdgeExitPyramid', out_channels=exit_channels, num_levels=3),
        head=dict(
            type='ATSSHead',
            num_classes=6,
            in_channels=exit_channels,
            feat_channels=exit_channels,
            stacked_convs=1,
            norm_cfg=exit_norm_cfg,
            anchor_generator=exit_anchor_generator,
            bbox_coder=exit_bbox_coder,
            loss_cls=exit_loss_cls,
            loss_bbox=exit_loss_bbox,
            loss_centerness=exit_loss_centerness),
        train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                       pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.6), max_per_img=50),
        # knowledge adaptation: the cloud's confident detections as extra targets
        distill_weight=0.5,
        pseudo_label_score_thr=0.5),
    router=dict(type='EntropyRouter', top_k=10, target_offload_ratio=0.5),
    # exit and cloud scores -> P(true positive) before the results are merged (fitted on the
    # calibration split): without it the two tiers' detections interleave wrongly in COCO's
    # ranking and a 50/50 routing scored below the exit alone
    calibrate_scores=True,
    train_exits_only=True)

load_from = 'work_dirs/demo/student/epoch_12.pth'  # the trained split student

# calibration split: the synthetic set's held-out calib images (tools/make_synthetic_coco.py
# --num-calib), on which nothing was trained and nothing is scored; on COCO, use a held-out part
# of train2017 (never val2017, which the system is scored on)
calibration_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        metainfo={{_base_.metainfo}},
        ann_file='annotations/instances_calib.json',
        data_prefix=dict(img='calib/'),
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
custom_hooks = [
    dict(type='RouterCalibrationHook', num_images=200, dataloader=calibration_dataloader)]

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4))
