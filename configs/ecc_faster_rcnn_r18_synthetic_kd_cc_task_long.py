# The channel-context task-driven student (configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task.py)
# on twice the schedule: 16 bottleneck epochs + 8 fine-tune epochs instead of 8 + 4. It asks
# whether the students' gap to the teacher is the training budget (the compressor is trained from
# scratch in stage 1) rather than the rate. Everything else is the 12-epoch config's.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_long.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_cc_task.py'

max_epochs = 24
bottleneck_epochs = 16
custom_hooks = [
    dict(
        type='KnowledgeAdaptationHook',
        bottleneck_epochs=bottleneck_epochs,
        feature_loss_weight=0.1,
        feature_loss_background_weight=0.1,
        response_loss_weight=1.0,
        temperature=1.0,
        detection_loss_weight_stage1=1.0,
        init_student_from_teacher=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=bottleneck_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=bottleneck_epochs, eta_min=3e-4,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=bottleneck_epochs, end=max_epochs,
         eta_min=1e-5, convert_to_iter_based=True),
]
