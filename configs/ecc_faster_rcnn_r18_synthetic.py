# Split Faster R-CNN on the synthetic dataset (CPU-trainable twin of ecc_faster_rcnn.py).
# Edge: stem + layer1 + EntropyBottleneckNeck encoder -> range-coded bitstream.
# Cloud: decoder + layer2..4 + FPN + RPN/RoI heads.
#   python tools/train.py configs/ecc_faster_rcnn_r18_synthetic.py
#   python tools/test.py  configs/ecc_faster_rcnn_r18_synthetic.py work_dirs/.../epoch_12.pth
_base_ = './faster_rcnn_r18_fpn_synthetic.py'

model = dict(
    type='EdgeCloudTwoStageDetector',
    split_after=1,  # edge = stem + layer1 (64 channels at stride 4)
    compressor=dict(type='EntropyBottleneckNeck', latent_channels=32, downsample=2, beta=0.05))

# COCO mAP and the communication cost side by side; latency is modelled per uplink bandwidth.
val_evaluator = [
    dict(type='CocoMetric', ann_file='data/synthetic_coco/annotations/instances_val.json',
         metric='bbox', format_only=False),
    dict(type='CommunicationMetric', bandwidth_mbps=[1.0, 10.0]),
]
test_evaluator = val_evaluator
