# One KD student, four rate points chosen at run time, on the hyperprior bottleneck
# (VariableRateHyperpriorNeck: per-point gains on the latent, one shared hyperprior and Gaussian
# conditional, so no point has an entropy model fitted on only a quarter of the updates -- what
# held the factorized variable-rate student back). Rate weights 0.4, 0.2, 0.1, 0.05 (lowest rate
# first) span the single-rate students' betas. Serve a point with
#   --cfg-options model.compressor.rate_point=R    (0 = lowest rate, 3 = highest)
# or compressor.set_rate_point(R) at run time; the cloud reads the point from each payload.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr_hp.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_hp.py'

model = dict(
    compressor=dict(type='VariableRateHyperpriorNeck', num_rates=4, rate_point=3))
