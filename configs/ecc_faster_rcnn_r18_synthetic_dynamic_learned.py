# The dynamic system with the learned router (DynamicDet / ORIC style) instead of the entropy rule.
# The router is fitted after the exits, on held-out images, by tools/train_router.py, which writes
# a checkpoint holding the model and the router:
#   python tools/train_router.py configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
#       work_dirs/demo/dynamic/epoch_12.pth --out work_dirs/demo/dynamic/learned_router.pth
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_dynamic_learned.py \
#       work_dirs/demo/dynamic/learned_router.pth
# Its threshold is calibrated to the target offload ratio by RouterCalibrationHook (first 200
# calib images; the router was fitted on the next 200).
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic.py'

model = dict(router=dict(_delete_=True, type='LearnedRouter', target_offload_ratio=0.5))
