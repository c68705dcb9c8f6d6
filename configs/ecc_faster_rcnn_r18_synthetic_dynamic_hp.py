# The demo's system: the edge exit, the router and the score calibration of
# configs/ecc_faster_rcnn_r18_synthetic_dynamic.py on the task-driven hyperprior student
# (configs/ecc_faster_rcnn_r18_synthetic_kd_hp_task.py, the best codec of docs/results.md) instead
# of the factorized one. The student's model is that config's (its only other change, the KD
# hook's losses, does not apply here: the student is frozen); exit, router, calibration split and
# schedule are the dynamic config's, so the two systems compare at equal settings
# (tests/test_tools/test_demo.py checks both). Stage 4 of tools/demo.py:
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_dynamic_hp.py \
#       --work-dir work_dirs/demo/dynamic_hp \
#       [--cfg-options load_from=work_dirs/demo/student_hp/epoch_12.pth]
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic.py'

model = dict(
    compressor=dict(type='HyperpriorBottleneckNeck', hyper_channels=16, hyper_downsample=4,
                    predict_means=True))

load_from = 'work_dirs/demo/student_hp/epoch_12.pth'  # the trained hyperprior student
