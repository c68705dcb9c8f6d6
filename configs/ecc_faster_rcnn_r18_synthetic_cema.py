# Online adaptation under distribution shift (CEMA for detection) of the dynamic split Faster
# R-CNN: the edge exit meets corrupted images, uploads only the ones whose uncertainty lies in
# CEMA's entropy band, the cloud distils the teacher's detections into a copy of the edge model's
# normalisation layers and sends them back down as a PARAM_UPDATE.
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_cema.py \
#       work_dirs/demo/dynamic/epoch_12.pth
# Other methods: --cfg-options test_cfg.method=tent (none, norm_stats, tent, cema, upload_all,
# random with test_cfg.random_ratio=0.2); continual mode: test_cfg.reset=False.
# tools/benchmark_online_adaptation.py runs every method on >= 6 corruptions at severities 3, 5.
_base_ = ['./ecc_faster_rcnn_r18_synthetic_dynamic.py', './_base_/adaptation/cema.py']

test_cfg = {{_base_.cema_loop}}
