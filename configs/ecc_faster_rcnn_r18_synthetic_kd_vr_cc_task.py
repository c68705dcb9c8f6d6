# The variable-rate channel-context student: four rate points of one model (gains on the latent,
# VariableRateChannelContextNeck) on the channel-context GDN student of
# configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py, with its detection-driven distortion.
# The rate point is chosen at run time and travels in the payload.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py'

model = dict(
    compressor=dict(type='VariableRateChannelContextNeck', num_rates=4, rate_point=3))
