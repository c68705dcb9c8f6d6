# The KD student with a detection-driven distortion: in the bottleneck stage the feature error
# counts fully inside the ground-truth boxes and only 0.1x on the background, so the codec is not
# asked to carry background texture (where an image codec spends most of its bits). Everything
# else -- split point, codec, beta, schedule, the task losses that keep background from decoding
# into false positives -- is the KD student's (configs/ecc_faster_rcnn_r18_synthetic_kd.py).
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_fg.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd.py'

custom_hooks = [
    dict(
        type='KnowledgeAdaptationHook',
        bottleneck_epochs={{_base_.bottleneck_epochs}},
        feature_loss_weight=1.0,
        feature_loss_background_weight=0.1,
        response_loss_weight=1.0,
        temperature=1.0,
        detection_loss_weight_stage1=1.0,
        init_student_from_teacher=True),
]
