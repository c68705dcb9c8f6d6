# Real COCO 2017, standard MMDetection layout:
#   data/coco/annotations/instances_{train,val}2017.json, data/coco/{train,val}2017/*.jpg
# Point `data_root` elsewhere with --cfg-options if your copy lives somewhere else, e.g.
#   --cfg-options train_dataloader.dataset.data_root=/datasets/coco/ ...
# This is MMDetection's own COCO base, unchanged, so results are comparable with its model zoo.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
