# The demo's system (configs/ecc_faster_rcnn_r18_synthetic_system.py: channel-context student,
# its edge exit and the calibrated router, one run) on twice the schedule: 16 bottleneck epochs +
# 8 fine-tune epochs, as configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_long.py. Too long for
# the demo's time budget; this is the configuration its numbers in docs/results.md come from.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_system_long.py \
#       --work-dir work_dirs/system_long \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_system.py'

max_epochs = 24
bottleneck_epochs = 16
custom_hooks = [
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=bottleneck_epochs,
         feature_loss_weight=0.1, feature_loss_background_weight=0.1, response_loss_weight=1.0,
         temperature=1.0, detection_loss_weight_stage1=1.0, init_student_from_teacher=True),
    dict(type='RouterCalibrationHook', num_images=200,
         dataloader={{_base_.calibration_dataloader}}),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=bottleneck_epochs, eta_min=3e-4,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=bottleneck_epochs, end=max_epochs,
         eta_min=1e-5, convert_to_iter_based=True),
]
