# Online adaptation under distribution shift (CEMA for detection) of the demo's whole system
# (configs/ecc_faster_rcnn_r18_synthetic_system.py: the task-driven channel-context student, its
# edge exit and calibrated router), with the CEMA settings of
# configs/ecc_faster_rcnn_r18_synthetic_cema.py (kept equal by the tests).
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_system_cema.py \
#       work_dirs/demo/system/epoch_12.pth
# Another cloud teacher (e.g. the corruption-trained one):
#   --cfg-options test_cfg.teacher_config=configs/faster_rcnn_r18_fpn_synthetic_robust_ft.py \
#       test_cfg.teacher_checkpoint=work_dirs/robust_ft_teacher/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_system.py'

test_cfg = dict(
    _delete_=True,
    type='OnlineAdaptationLoop',
    method='cema',
    corruptions=[('gaussian_noise', 3), ('defocus_blur', 3), ('fog', 3)],
    reset=True,
    order_seed=0,
    selector=dict(type='EntropySelector', band=(0.5, 0.8), dynamic=True, lam=1.0, warmup=32),
    cloud=dict(lr=2.5e-3, momentum=0.9, steps=2, batch_size=8, new_fraction=0.25,
               capacity=512, score_thr=0.5, entropy_weight=0.0),
    update_interval=2,
    upload_codec=dict(codec='webp', quality=90),
    top_k=10)
