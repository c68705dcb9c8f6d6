# The task-driven channel-context student (configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task.py)
# with GDN between the encoder's convolutions and IGDN between the decoder's instead of the leaky
# ReLU (the image codecs' nonlinearity; ecc_mmdet/models/compressors/gdn.py). Everything else is
# the same, so the two compare at equal settings; docs/results.md measures it.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd_cc_task.py'

model = dict(compressor=dict(gdn=True))
