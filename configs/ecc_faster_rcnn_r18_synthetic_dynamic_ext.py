# The dynamic system with MEANet's extension exit: more edge compute for the "hard" classes.
# Hard classes = the half of the classes with the lowest per-class AP of the main exit on held-out
# images (tools/select_hard_classes.py; here rectangle, triangle, star: 4.1, 2.2, 3.6 AP against
# 15.7, 23.9, 7.3 for circle, ring, cross on 200 calib images). Images kept on the edge whose
# main-exit top detection is of a hard class run the extension exit, whose hard-class detections
# replace the main exit's. The main exit, the router and the split detector are frozen:
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_dynamic_ext.py \
#       [--cfg-options load_from=work_dirs/demo/dynamic/epoch_12.pth]
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic.py'

ext_channels = 64
model = dict(
    extension_exit=dict(
        type='EdgeExit',
        neck=dict(type='EdgeExitPyramid', out_channels=ext_channels, num_levels=3),
        head=dict(
            type='ATSSHead',
            num_classes=6,
            in_channels=ext_channels,
            feat_channels=ext_channels,
            stacked_convs=2,
            norm_cfg={{_base_.exit_norm_cfg}},
            anchor_generator={{_base_.exit_anchor_generator}},
            bbox_coder={{_base_.exit_bbox_coder}},
            loss_cls={{_base_.exit_loss_cls}},
            loss_bbox={{_base_.exit_loss_bbox}},
            loss_centerness={{_base_.exit_loss_centerness}}),
        train_cfg={{_base_.model.edge_exit.train_cfg}},
        test_cfg={{_base_.model.edge_exit.test_cfg}},
        distill_weight=0.5,
        pseudo_label_score_thr=0.5),
    hard_classes=[1, 2, 3],
    train_exits_only='extension')

load_from = 'work_dirs/demo/dynamic/epoch_12.pth'  # the trained main exit (+ student)
