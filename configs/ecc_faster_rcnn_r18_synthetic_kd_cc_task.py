# The task-driven hyperprior student with a channel-conditional context model
# (ChannelContextHyperpriorNeck, Minnen & Singh 2020): y's 32 channels are coded in 4 slices of 8,
# each slice's means and scales corrected from the slices decoded before it, in exact integer
# arithmetic (the same tables on any machine). Everything else -- split point, latent size, beta,
# schedule, the task-driven distortion -- is configs/ecc_faster_rcnn_r18_synthetic_kd_hp_task.py,
# so the two compare at equal settings.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_hp_task.py'

model = dict(
    compressor=dict(type='ChannelContextHyperpriorNeck', num_slices=4, context_channels=32,
                    context_layers=2))
