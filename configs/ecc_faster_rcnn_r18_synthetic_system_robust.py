# The demo's whole system (configs/ecc_faster_rcnn_r18_synthetic_system.py) trained for shift:
# distilled from the corruption-trained teacher (configs/faster_rcnn_r18_fpn_synthetic_robust_ft.py,
# which it also starts from) on training images of which half get one of the four held-out
# corruptions at severity 1-5 (the corruptions the benchmarks evaluate are refused by the
# transform). The student, its cloud side and its exit see the same corrupted image as the
# teacher, so the cloud learns to see through the shift as the teacher does.
#   python tools/train.py configs/faster_rcnn_r18_fpn_synthetic_robust_ft.py \
#       --work-dir work_dirs/robust_ft_teacher
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_system_robust.py \
#       --work-dir work_dirs/system_robust
_base_ = './ecc_faster_rcnn_r18_synthetic_system.py'

teacher_config = '{{fileDirname}}/faster_rcnn_r18_fpn_synthetic_robust_ft.py'
teacher_checkpoint = 'work_dirs/robust_ft_teacher/epoch_12.pth'

train_dataloader = dict(dataset=dict(pipeline={{_base_.corrupted_train_pipeline}}))
