# The KD student with a mean-scale hyperprior instead of the factorized entropy model
# (HyperpriorBottleneckNeck): side information z (16 channels, 4x smaller than the latent) gives
# every latent element its own mean and scale, so flat background costs almost nothing. The
# hyper-synthesis is evaluated in integer arithmetic when coding: edge and cloud pick the same
# tables on any machine. Split point, latent size, beta, schedule and distillation are the KD
# student's (configs/ecc_faster_rcnn_r18_synthetic_kd.py), so the two compare at equal settings.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_hp.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd.py'

model = dict(
    compressor=dict(type='HyperpriorBottleneckNeck', hyper_channels=16, hyper_downsample=4,
                    predict_means=True))
