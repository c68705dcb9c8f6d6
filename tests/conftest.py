"""Shared fixtures: a tiny seeded synthetic COCO set, tiny models and seeded batches, and
helpers to run the real CLI tools."""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BASELINE_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
TINY_FRCNN = osp.join(REPO, 'configs', '_base_', 'models', 'faster_rcnn_r18_fpn_tiny.py')
TINY_RETINA = osp.join(REPO, 'configs', '_base_', 'models', 'retinanet_r18_fpn_tiny.py')
# RTMDet-tiny narrowed to 1/8 width (CSPNeXt + CSPNeXtPAFPN + RTMDetSepBNHead), 6 classes
TINY_RTMDET = dict(
    type='RTMDet', use_syncbn=False,
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                           std=[57.375, 57.12, 58.395], pad_size_divisor=32),
    backbone=dict(type='CSPNeXt', deepen_factor=0.167, widen_factor=0.125,
                  norm_cfg=dict(type='BN')),
    neck=dict(type='CSPNeXtPAFPN', expand_ratio=0.5, in_channels=[32, 64, 128],
              out_channels=32, num_csp_blocks=1, norm_cfg=dict(type='BN')),
    bbox_head=dict(type='RTMDetSepBNHead', num_classes=6, in_channels=32, stacked_convs=1,
                   feat_channels=32, anchor_generator=dict(type='MlvlPointGenerator', offset=0,
                                                           strides=[8, 16, 32]),
                   bbox_coder=dict(type='DistancePointBBoxCoder'), norm_cfg=dict(type='BN'),
                   loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0),
                   loss_bbox=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(assigner=dict(type='DynamicSoftLabelAssigner', topk=13), allowed_border=-1,
                   pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=200, score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65),
                  max_per_img=50))

# the repository's tools share code in tools/ecc_tools (not part of the installed package)
sys.path.insert(0, osp.join(REPO, 'tools'))


def tiny_model_cfg(path=TINY_FRCNN, width=16, norm_eval=None):
    """The project's tiny model config, narrowed further (base_channels) for test speed."""
    from mmengine.config import Config
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.base_channels = width
    if norm_eval is not None:
        cfg.backbone.norm_eval = norm_eval
    cfg.neck.in_channels = [width * 2**i for i in range(4)]
    return cfg


def split_cfg(cfg, split_after=1, compressor=None, two_stage=True, measure_flops=True):
    """``cfg`` as a split detector (lossless Float32Neck unless ``compressor`` is given)."""
    cfg = copy.deepcopy(cfg)
    cfg.type = 'EdgeCloudTwoStageDetector' if two_stage else 'EdgeCloudSingleStageDetector'
    cfg.split_after = split_after
    cfg.compressor = copy.deepcopy(compressor or dict(type='Float32Neck'))
    cfg.measure_flops = measure_flops
    return cfg


def exit_cfg(channels=8, num_classes=6):
    """A tiny ATSS edge exit (MEANet main exit) config on F_k."""
    return dict(
        type='EdgeExit',
        neck=dict(type='EdgeExitPyramid', out_channels=channels, num_levels=3),
        head=dict(type='ATSSHead', num_classes=num_classes, in_channels=channels,
                  feat_channels=channels, stacked_convs=1,
                  norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
                  anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                                        octave_base_scale=2, scales_per_octave=1,
                                        strides=[8, 16, 32]),
                  bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4,
                                  target_stds=[0.1, 0.1, 0.2, 0.2]),
                  loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                loss_weight=1.0),
                  loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
                  loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True,
                                       loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                       pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.6), max_per_img=20))


def fake_batch(model, n=2, size=96, seed=0, with_gt=False, training=False):
    """n seeded random uint8 images preprocessed by ``model``; ``with_gt``: 2 GT boxes each."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
            for _ in range(n)]
    samples = []
    for i in range(n):
        s = DetDataSample(metainfo=dict(img_id=i, ori_shape=(size, size), img_shape=(size, size),
                                        scale_factor=(1.0, 1.0), pad_shape=(size, size)))
        if with_gt:
            s.gt_instances = InstanceData(
                bboxes=torch.tensor([[4.0, 6.0, 30.0, 34.0], [28.0, 20.0, 60.0, 58.0]]),
                labels=torch.tensor([i % 6, (i + 3) % 6]))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), training)
    return data['inputs'], data['data_samples']


@pytest.fixture(scope='session')
def tiny_coco(tmp_path_factory):
    """8 train / 4 val images of 64 px, seeded; shared by every test that needs a dataset."""
    from ecc_mmdet.datasets.synthetic_coco import generate_synthetic_coco
    root = tmp_path_factory.mktemp('tiny_coco')
    generate_synthetic_coco(str(root), num_train=8, num_val=4, image_size=64, seed=1,
                            min_objects=2, max_objects=4, progress=False)
    return str(root)


@pytest.fixture(scope='session')
def served_model(tiny_coco, tmp_path_factory):
    """A seeded, untrained split detector (entropy bottleneck, coding tables built) as files:
    dict(config, checkpoint, data_root). Untrained weights still give many boxes per image."""
    import torch
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import build_detector, load_config
    d = tmp_path_factory.mktemp('served')
    cfg = load_config(osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic.py'),
                      data_root=tiny_coco)
    config = str(d / 'config.py')
    cfg.dump(config)
    torch.manual_seed(0)
    model = build_detector(cfg.model)  # eval mode: the coding tables are built
    checkpoint = str(d / 'model.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return dict(config=config, checkpoint=checkpoint, data_root=tiny_coco)



@pytest.fixture(scope='session')
def served_detector(served_model):
    """The ``served_model`` files loaded in-process (the reference the servers must match)."""
    from ecc_mmdet.apis import build_detector, load_config
    return build_detector(load_config(served_model['config']).model,
                          served_model['checkpoint'])


@pytest.fixture(scope='session')
def served_payloads(served_detector):
    """Three real payloads of ``served_detector`` (seeded 128-px images)."""
    inputs, samples = fake_batch(served_detector, n=3, size=128, seed=7)
    return served_detector.encode(inputs, samples)


def data_options(root):
    """Arguments that point every dataloader and evaluator of a config at ``root``."""
    return ['--data-root', str(root)]


def run_tool(tool, *args, check=True, timeout=600):
    """Run tools/<tool>.py in a fresh interpreter, as a user would; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=os.environ.get(
        'OMP_NUM_THREADS', '2'))
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', f'{tool}.py'), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{tool}.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-3000:]}')
    return proc


def predictions_as_ground_truth(config, checkpoint, data_root, out_json, batch_size=4):
    """A COCO annotation file whose ground truth is the checkpoint's own test-set predictions.

    Evaluating the same checkpoint against it through another path (e.g. tools/test.py) must
    give mAP 1.0 -- which only holds if that path loads the weights, runs the same pipeline and
    model, and maps boxes and labels back to the original images exactly as done here. (The
    tiny test trainings cannot reach a non-zero mAP on real labels, so a range check on that
    mAP would prove nothing.) Returns the number of predicted boxes written.
    """
    import json
    import torch
    from ecc_mmdet.apis import build_detector, build_test_dataset, iter_batches, load_config
    cfg = load_config(config, data_root)
    model = build_detector(cfg.model, checkpoint)
    dataset = build_test_dataset(cfg)
    ann_file = cfg.test_evaluator[0]['ann_file'] if isinstance(cfg.test_evaluator, list) \
        else cfg.test_evaluator['ann_file']
    gt = json.load(open(ann_file))
    anns = []
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset, batch_size=batch_size):
            for res in model.predict(inputs, samples):
                inst = res.pred_instances
                for box, label in zip(inst.bboxes.tolist(), inst.labels.tolist()):
                    x1, y1, x2, y2 = box
                    anns.append(dict(id=len(anns) + 1, image_id=res.img_id,
                                     category_id=dataset.cat_ids[label], iscrowd=0,
                                     bbox=[x1, y1, x2 - x1, y2 - y1],
                                     area=(x2 - x1) * (y2 - y1)))
    gt['annotations'] = anns
    with open(out_json, 'w') as f:
        json.dump(gt, f)
    return len(anns)


def own_predictions_root(config, checkpoint, data_root, root):
    """A data root with ``data_root``'s val images whose ground truth is the checkpoint's own
    test-set predictions (:func:`predictions_as_ground_truth`): a tool pointed at it with
    ``--data-root`` must score mAP 100 on the clean images, and something below for anything
    that changes the detections. Returns ``root``."""
    os.makedirs(osp.join(root, 'annotations'))
    os.symlink(osp.join(data_root, 'val'), osp.join(root, 'val'))
    assert predictions_as_ground_truth(config, checkpoint, data_root, osp.join(
        root, 'annotations', 'instances_val.json')) > 0
    return root


def top_half_features(seed=1, n=3, h=24, w=20, channels=8):
    """Smooth feature maps with content in the top half only: a hyperprior should spend
    (almost) nothing below."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, channels, h // 4 + 2, w // 4 + 2, generator=g)
    x = torch.relu(F.interpolate(z, size=(h, w), mode='bilinear', align_corners=False) * 2)
    x[..., h // 2:, :] = 0
    return x


def fit_neck(neck, x, steps=100, lr=1e-2, seed=1):
    """Adam on MSE + the neck's own losses for a fixed feature map (one optimiser, as the
    detector has); returns the neck in eval mode (coding tables built)."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    opt = torch.optim.Adam(neck.parameters(), lr=lr)
    neck.train()
    for _ in range(steps):
        x_hat, losses = neck(x)
        loss = F.mse_loss(x_hat, x) + sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return neck.eval()


@pytest.fixture(scope='session')
def tiny_coco_calib(tmp_path_factory):
    """Like ``tiny_coco`` plus a held-out calib split of 16 images (dynamic inference)."""
    from ecc_mmdet.datasets.synthetic_coco import generate_synthetic_coco
    root = tmp_path_factory.mktemp('tiny_coco_calib')
    generate_synthetic_coco(str(root), num_train=8, num_val=4, num_calib=16, image_size=64,
                            seed=1, min_objects=2, max_objects=4, progress=False)
    return str(root)
