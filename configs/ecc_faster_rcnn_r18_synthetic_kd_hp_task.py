# The hyperprior KD student with a detection-driven distortion in the bottleneck stage: the
# detection losses through the frozen cloud (weight 1) decide what the codec keeps; the feature
# term is 10x weaker and counts background at 0.1x, so the codec is not asked to reproduce
# texture the detector does not use. Everything else is configs/ecc_faster_rcnn_r18_synthetic_kd_hp.py.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_hp_task.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_hp.py'

custom_hooks = [
    dict(
        type='KnowledgeAdaptationHook',
        bottleneck_epochs={{_base_.bottleneck_epochs}},
        feature_loss_weight=0.1,
        feature_loss_background_weight=0.1,
        response_loss_weight=1.0,
        temperature=1.0,
        detection_loss_weight_stage1=1.0,
        init_student_from_teacher=True),
]
