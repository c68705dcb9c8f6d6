# A cloud teacher that knows more than the edge under shift, reusing what the demo's teacher
# learned: the R18-FPN teacher (configs/faster_rcnn_r18_fpn_synthetic.py) trained 12 more epochs
# with corruption augmentation (RandomCorruption: half of the images get one of the four
# held-out ImageNet-C corruptions -- speckle noise, gaussian blur, spatter, saturate -- at
# severity 1-5; the corruptions the benchmarks evaluate are refused by the transform). Same
# architecture, so it labels CEMA's uploads and distils into the student unchanged.
# (configs/faster_rcnn_r34_fpn_synthetic_robust.py is the larger one trained from scratch.)
#   python tools/train.py configs/faster_rcnn_r18_fpn_synthetic_robust_ft.py \
#       --work-dir work_dirs/robust_ft_teacher \
#       --cfg-options load_from=work_dirs/demo/baseline/epoch_12.pth
_base_ = './faster_rcnn_r18_fpn_synthetic.py'

load_from = 'work_dirs/demo/baseline/epoch_12.pth'  # the clean teacher it starts from

train_dataloader = dict(dataset=dict(pipeline={{_base_.corrupted_train_pipeline}}))

# a fine-tune: a short warm-up to half the from-scratch rate, then cosine decay
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end={{_base_.max_epochs}},
         eta_min_ratio=0.05, convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
