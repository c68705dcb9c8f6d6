# Online adaptation under distribution shift (CEMA for detection) of the demo's whole system
# (configs/ecc_faster_rcnn_r18_synthetic_system.py: the task-driven channel-context student, its
# edge exit and calibrated router), with the CEMA settings of
# configs/ecc_faster_rcnn_r18_synthetic_cema.py (configs/_base_/adaptation/cema.py).
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_system_cema.py \
#       work_dirs/demo/system/epoch_12.pth
# Another cloud teacher (e.g. the corruption-trained one):
#   --cfg-options test_cfg.teacher_config=configs/faster_rcnn_r18_fpn_synthetic_robust_ft.py \
#       test_cfg.teacher_checkpoint=work_dirs/robust_ft_teacher/epoch_12.pth
_base_ = ['./ecc_faster_rcnn_r18_synthetic_system.py', './_base_/adaptation/cema.py']

test_cfg = {{_base_.cema_loop}}
