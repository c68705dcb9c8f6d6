# The task-driven channel-context GDN student (ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py)
# with a stride-4 latent instead of stride 2: 64 channels on a quarter of the positions (half the
# symbols of the 32-channel stride-2 latent), z at half the latent's size. Fewer positions make
# the exact slice transforms and the range coding cheaper; docs/results.md measures what it
# costs in accuracy.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn_s4.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py'

model = dict(compressor=dict(downsample=4, latent_channels=64, hyper_downsample=2))
