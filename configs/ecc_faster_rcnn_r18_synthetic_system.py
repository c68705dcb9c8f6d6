# The demo's whole system trained in one run from the teacher: the task-driven channel-context
# student with GDN (configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py: the task-driven
# hyperprior with y coded in 4 channel slices and GDN / IGDN in the encoder and decoder, the
# best codec of docs/results.md) with the edge exit and the
# calibrated router of configs/ecc_faster_rcnn_r18_synthetic_dynamic_hp.py. The exit reads the detached
# features of the edge stages, which the student's distillation keeps frozen (initialised from
# the teacher), so it trains alongside both stages and needs no stage of its own. It learns from
# the labels and from the teacher's confident detections (edge_exit.distill_weight: the
# distillation teacher stands in for the cloud of the exit-only config). The router is
# calibrated on the held-out split at the end, as in the exit-only config.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_system.py \
#       --work-dir work_dirs/demo/system \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic_hp.py'

model = dict(
    train_exits_only=False,
    compressor=dict(type='ChannelContextHyperpriorNeck', num_slices=4, context_channels=32,
                    context_layers=2, gdn=True))  # as ..._kd_cc_task_gdn.py
load_from = None  # a fresh start: the KD hook initialises the student from the teacher

max_epochs = 12
bottleneck_epochs = 8
# the task-driven student's distillation (..._kd_hp_task.py) and the router's calibration
custom_hooks = [
    dict(type='KnowledgeAdaptationHook', bottleneck_epochs=bottleneck_epochs,
         feature_loss_weight=0.1, feature_loss_background_weight=0.1, response_loss_weight=1.0,
         temperature=1.0, detection_loss_weight_stage1=1.0, init_student_from_teacher=True),
    dict(type='RouterCalibrationHook', num_images=200,
         dataloader={{_base_.calibration_dataloader}}),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# the KD student's schedule (..._kd.py): the compressor from scratch at 3e-3 in stage 1, then
# a fine-tune that anneals from 3e-4 to 1e-5
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=bottleneck_epochs, eta_min=3e-4,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=bottleneck_epochs, end=max_epochs,
         eta_min=1e-5, convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=3e-3, weight_decay=1e-4))
