"""Scoring the first N images of a larger set: COCO must count only the images that were seen
(mmdet's CocoMetric alone scores every image of its annotation file)."""
import json
import os.path as osp

import pytest
import torch
from mmdet.evaluation import CocoMetric
from mmdet.structures import DetDataSample
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

import ecc_mmdet  # noqa: F401
from ecc_mmdet.apis.evaluation import score_only_seen_images


def _perfect(ann, img_id, cat_ids):
    s = DetDataSample(metainfo=dict(img_id=img_id, ori_shape=(64, 64)))
    boxes = [a['bbox'] for a in ann['annotations'] if a['image_id'] == img_id]
    labels = [cat_ids.index(a['category_id']) for a in ann['annotations']
              if a['image_id'] == img_id]
    s.pred_instances = InstanceData(
        bboxes=torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4),
        scores=torch.ones(len(boxes)), labels=torch.tensor(labels, dtype=torch.long))
    return s


@pytest.mark.parametrize('restrict', [True, False])
def test_only_the_seen_images_are_scored(tiny_coco, restrict):
    ann_file = osp.join(tiny_coco, 'annotations', 'instances_val.json')
    ann = json.load(open(ann_file))
    cat_ids = [c['id'] for c in ann['categories']]
    evaluator = Evaluator([CocoMetric(ann_file=ann_file, metric='bbox')])
    evaluator.dataset_meta = dict(classes=tuple(c['name'] for c in ann['categories']))
    seen = [im['id'] for im in ann['images']][:2]  # perfect detections on 2 of the 4 images
    evaluator.process(data_samples=[_perfect(ann, i, cat_ids) for i in seen])
    if restrict:
        score_only_seen_images(evaluator, seen)
    m = evaluator.evaluate(len(seen))['coco/bbox_mAP']
    if restrict:
        assert m == pytest.approx(1.0)
    else:  # the unseen images' objects count as missed
        assert m < 0.9
