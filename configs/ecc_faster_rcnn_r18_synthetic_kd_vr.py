# One KD student that serves four rate points chosen at run time (VariableRateBottleneckNeck:
# gain units + one entropy model per point), trained with the KD student's schedule; each
# iteration trains a random point with its own rate weight (betas 0.4, 0.2, 0.1, 0.05 = the
# single-rate students' beta range). Serve a point with
#   --cfg-options model.compressor.rate_point=R    (0 = lowest rate, 3 = highest)
# or compressor.set_rate_point(R) at run time; the cloud reads the point from each payload.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic_kd_vr.py \
#       --cfg-options teacher_checkpoint=work_dirs/demo/baseline/epoch_12.pth
_base_ = './ecc_faster_rcnn_r18_synthetic_kd.py'

model = dict(
    compressor=dict(type='VariableRateBottleneckNeck', num_rates=4, beta=0.05, rate_point=3))
