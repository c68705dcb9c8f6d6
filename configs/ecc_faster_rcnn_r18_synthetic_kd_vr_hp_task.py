# The variable-rate hyperprior student (four rate points, one model) trained with the
# detection-driven distortion of configs/ecc_faster_rcnn_r18_synthetic_kd_hp_task.py: detection
# losses through the frozen cloud decide what the codec keeps, feature imitation 10x weaker.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr_hp_task.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_hp_task.py'

model = dict(
    compressor=dict(type='VariableRateHyperpriorNeck', num_rates=4, rate_point=3))
