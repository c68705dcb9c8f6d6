# CEMA's online-adaptation loop settings (OnlineAdaptationLoop), shared by the configs that put
# it on a dynamic split detector: `test_cfg = {{_base_.cema_loop}}` after listing this file
# among the bases.
cema_loop = dict(
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
