# The demo's dynamic system (task-driven hyperprior student, edge exit) with the gain router: the
# learned router with the exit maps' expected object count and score bands as inputs as well
# (LearnedRouter(gain_features=True)), classifying "the cloud finds more objects here" instead of
# regressing the per-image AP gain (a count is not pulled around by the per-image AP noise; of
# regress, rank and classify it routed best in docs/results.md, "Gain routers"). Fit it on
# thousands of held-out images (the generator makes them: tools/make_synthetic_coco.py
# --num-calib 3400), away from the first 200 that RouterCalibrationHook uses for the threshold:
#   python tools/train_router.py configs/ecc_faster_rcnn_r18_synthetic_dynamic_gain.py \
#       work_dirs/demo/dynamic_hp/epoch_12.pth --out work_dirs/demo/dynamic_hp/gain_router.pth \
#       --skip 400 --num-images 3000 --data-root data/synthetic_coco_routers
#   python tools/test.py configs/ecc_faster_rcnn_r18_synthetic_dynamic_gain.py \
#       work_dirs/demo/dynamic_hp/gain_router.pth --data-root data/synthetic_coco_routers
# It runs on the light edge as well (tools/export_edge_onnx.py exports its bands and weights).
_base_ = './ecc_faster_rcnn_r18_synthetic_dynamic_hp.py'

model = dict(router=dict(_delete_=True, type='LearnedRouter', target_offload_ratio=0.5,
                         gain_features=True, objective='classify'))
