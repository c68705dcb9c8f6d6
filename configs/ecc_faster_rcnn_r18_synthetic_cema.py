# Online adaptation under distribution shift (CEMA for detection) of the dynamic split Faster
# R-CNN: the edge exit meets corrupted images, uploads only the ones whose uncertainty lies in
# CEMA's entropy band, the cloud distils the teacher's detections into a copy of the edge model's
# normalisation layers and sends them back down as a PARAM_UPDATE.
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_cema.py \
#       work_dirs/demo/dynamic/epoch_12.pth
# Other methods: --cfg-options test_cfg.method=tent (none, norm_stats, tent, cema, upload_all,
# random with test_cfg.random_ratio=0.2); continual mode: test_cfg.reset=False.
# tools/benchmark_online_adaptation.py runs every method on >= 6 corruptions at severities 3, 5.
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic.py'

test_cfg = dict(
    _delete_=True,
    type='OnlineAdaptationLoop',
    method='cema',
    corruptions=[('gaussian_noise', 3), ('defocus_blur', 3), ('fog', 3)],
    reset=True,
    order_seed=0,
    # CEMA's entropy band on the exit's normalised top-k class entropy, its bounds set to
    # quantiles of the stream's first 32 images; the upper bound then follows the stream's
    # running mean entropy (dynamic)
    selector=dict(type='EntropySelector', band=(0.5, 0.8), dynamic=True, lam=1.0, warmup=32),
    cloud=dict(lr=2.5e-3, momentum=0.9, steps=2, batch_size=8, new_fraction=0.25,
               capacity=512, score_thr=0.5, entropy_weight=0.0),
    update_interval=2,
    upload_codec=dict(codec='webp', quality=90),
    top_k=10)
