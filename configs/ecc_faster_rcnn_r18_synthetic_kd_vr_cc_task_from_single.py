# The variable-rate channel-context student (ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task.py)
# started from a trained single-rate GDN student (ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py)
# instead of from the teacher: its highest rate point starts as that student (gain 1), and the
# 12 epochs teach the lower points' gains and the shared transforms to serve all four.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py \
#       --work-dir work_dirs/rate/cc_task_gdn
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task_from_single.py
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_vr_cc_task.py'

load_from = 'work_dirs/rate/cc_task_gdn/epoch_12.pth'
