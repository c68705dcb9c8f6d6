# The variable-rate channel-context GDN student (ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task.py)
# on twice the schedule (16 + 8 epochs, as ecc_faster_rcnn_r18_synthetic_kd_cc_task_long.py):
# each of its four rate points sees a quarter of the updates, so it asks whether the points' gap
# to the single-rate students is the training budget.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task_long.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_cc_task_long.py'

model = dict(
    compressor=dict(type='VariableRateChannelContextNeck', num_rates=4, rate_point=3, gdn=True))
