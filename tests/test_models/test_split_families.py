"""RTMDet, YOLOX and the DETR family as split detectors: a lossless codec (Float32Neck) gives the
unsplit detector's detections on the same weights, through the real bitstream; side builds,
config conversion and the errors specific to these families."""
import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import ecc_mmdet  # noqa: F401
from ecc_mmdet.apis.inference import split_model_cfg, unsplit_model_cfg
from ecc_mmdet.utils import ConfigError

from conftest import TINY_RTMDET



@pytest.fixture(autouse=True)
def _mmdet_scope():
    init_default_scope('mmdet')  # the detectors build their data_preprocessor by bare name


BN = dict(type='BN')
CSP_NECK = dict(in_channels=[32, 64, 128], out_channels=32, num_csp_blocks=1, norm_cfg=BN)

TINY_YOLOX = dict(
    type='YOLOX',
    data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
    backbone=dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.125, norm_cfg=BN),
    neck=dict(type='YOLOXPAFPN', **CSP_NECK),
    bbox_head=dict(type='YOLOXHead', num_classes=6, in_channels=32, feat_channels=32,
                   stacked_convs=1, norm_cfg=BN),
    train_cfg=dict(assigner=dict(type='SimOTAAssigner', center_radius=2.5)),
    test_cfg=dict(score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65)))


def _deformable(kind, backbone, in_channels):
    """A tiny Deformable DETR / DINO: 1 encoder and 1 decoder layer, 20 queries, 32 dims (DINO:
    256, which mmdet's DINO decoder hard-codes through its 128-feature sine encoding)."""
    dims = 256 if kind == 'DINO' else 32
    attn = dict(embed_dims=dims, num_levels=3, num_heads=2, num_points=2)
    ffn = dict(embed_dims=dims, feedforward_channels=64)
    cfg = dict(
        # Deformable DETR's two-stage variant also hard-codes 128-feature encodings
        type=kind, num_queries=20, with_box_refine=kind == 'DINO', as_two_stage=kind == 'DINO',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=1),
        backbone=backbone,
        neck=dict(type='ChannelMapper', in_channels=in_channels, kernel_size=1,
                  out_channels=dims, act_cfg=None, norm_cfg=dict(type='GN', num_groups=8),
                  num_outs=3),
        encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=attn, ffn_cfg=ffn)),
        decoder=dict(num_layers=1, return_intermediate=True,
                     layer_cfg=dict(self_attn_cfg=dict(embed_dims=dims, num_heads=2),
                                    cross_attn_cfg=attn, ffn_cfg=ffn),
                     post_norm_cfg=None),
        positional_encoding=dict(num_feats=dims // 2, normalize=True, offset=0.0, temperature=20),
        bbox_head=dict(type=f'{kind}Head', num_classes=6, embed_dims=dims, sync_cls_avg_factor=False,
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True, loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0), dict(type='BBoxL1Cost', weight=5.0,
                                                         box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
        test_cfg=dict(max_per_img=20))
    if kind == 'DINO':
        cfg['dn_cfg'] = dict(label_noise_scale=0.5, box_noise_scale=1.0,
                             group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=10))
        cfg['decoder']['layer_cfg']['cross_attn_cfg'] = attn
        cfg['encoder']['layer_cfg']['self_attn_cfg'] = attn
        cfg['encoder']['layer_cfg']['self_attn_cfg'].pop('num_heads', None)
    return cfg


def _detr(kind='DETR'):
    """A tiny DETR / Conditional DETR on ResNet-18/8 (one encoder and decoder layer; 32 dims,
    Conditional DETR 256: its decoder hard-codes a 128-feature sine encoding)."""
    d = 32 if kind == 'DETR' else 256
    attn = dict(embed_dims=d, num_heads=2, batch_first=True)
    ffn = dict(embed_dims=d, feedforward_channels=64)
    dec_attn = dict(attn) if kind == 'DETR' else dict(embed_dims=d, num_heads=2,
                                                      cross_attn=False)
    cross = dict(attn) if kind == 'DETR' else dict(embed_dims=d, num_heads=2, cross_attn=True)
    return dict(
        type=kind, num_queries=20,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=1),
        backbone=dict(type='ResNet', depth=18, base_channels=8, out_indices=(3, ),
                      norm_eval=False),
        neck=dict(type='ChannelMapper', in_channels=[64], kernel_size=1, out_channels=d,
                  act_cfg=None, norm_cfg=None, num_outs=1),
        encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=attn, ffn_cfg=ffn)),
        decoder=dict(num_layers=1, return_intermediate=True,
                     layer_cfg=dict(self_attn_cfg=dec_attn, cross_attn_cfg=cross,
                                    ffn_cfg=ffn)),
        positional_encoding=dict(num_feats=d // 2, normalize=True),
        # given explicitly: DETRHead edits its default loss_cls dict in place (a mutable default)
        bbox_head=dict(type=f'{kind}Head', num_classes=6, embed_dims=d,
                       loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1,
                                     use_sigmoid=False, loss_weight=1.0, class_weight=1.0)
                       if kind == 'DETR' else dict(type='FocalLoss', use_sigmoid=True,
                                                   gamma=2.0, alpha=0.25, loss_weight=2.0)),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='ClassificationCost', weight=1.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
        test_cfg=dict(max_per_img=20))


R18 = dict(type='ResNet', depth=18, base_channels=8, out_indices=(1, 2, 3), norm_eval=False)
SWIN = dict(type='SwinTransformer', embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
            window_size=4, out_indices=(1, 2, 3), init_cfg=None)
TINY_DINO_SWIN = _deformable('DINO', SWIN, [32, 64, 128])
TINY_DEFORMABLE_R18 = _deformable('DeformableDETR', R18, [16, 32, 64])
TINY_RETINA_MNV2 = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
    backbone=dict(type='MobileNetV2', widen_factor=0.25, out_indices=(2, 4, 6)),
    neck=dict(type='FPN', in_channels=[8, 24, 80], out_channels=16, num_outs=3),
    bbox_head=dict(type='RetinaHead', num_classes=6, in_channels=16, feat_channels=16,
                   stacked_convs=1,
                   anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                         scales_per_octave=1, ratios=[1.0],
                                         strides=[8, 16, 32]),
                   bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                                   target_stds=[1.0, 1.0, 1.0, 1.0])),
    train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                 min_pos_iou=0), sampler=dict(type='PseudoSampler'),
                   allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=200, score_thr=0.01, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=50))

FAMILIES = {  # name -> (unsplit config, split_after)
    'RTMDet/CSPNeXt': (TINY_RTMDET, 1),
    'YOLOX/CSPDarknet': (TINY_YOLOX, 2),
    'DINO/Swin': (TINY_DINO_SWIN, 2),
    'DeformableDETR/ResNet': (TINY_DEFORMABLE_R18, 1),
    'RetinaNet/MobileNetV2': (TINY_RETINA_MNV2, 3),
    'DETR/ResNet': (_detr('DETR'), 2),
    'ConditionalDETR/ResNet': (_detr('ConditionalDETR'), 1),
}


def _batch(model, shapes=((96, 80), (72, 96)), seed=0):
    """Seeded uint8 images of different sizes (padding masks matter for DETRs)."""
    g = torch.Generator().manual_seed(seed)
    imgs, samples = [], []
    for i, (h, w) in enumerate(shapes):
        imgs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        samples.append(DetDataSample(metainfo=dict(img_id=i, ori_shape=(h, w), img_shape=(h, w),
                                                   scale_factor=(1.0, 1.0))))
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), False)
    return data['inputs'], data['data_samples']


def _pair(name, compressor=None):
    cfg, k = FAMILIES[name]
    cfg = ConfigDict(copy.deepcopy(cfg))  # heads read test_cfg by attribute, as from a file
    torch.manual_seed(0)
    unsplit = MODELS.build(copy.deepcopy(cfg))
    if 'DETR' in name or 'DINO' in name:
        unsplit.init_weights()  # DETRs hold torch.Tensor(...) parameters: garbage until then
    unsplit.eval()
    split_cfg = split_model_cfg(cfg, k, compressor or dict(type='Float32Neck'))
    split_cfg['measure_flops'] = False
    split = MODELS.build(copy.deepcopy(split_cfg)).eval()
    split.cfg_for_test = split_cfg
    res = split.load_state_dict(unsplit.state_dict(), strict=False)
    assert not res.unexpected_keys
    assert all(key.startswith('compressor.') for key in res.missing_keys)
    return unsplit, split


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_lossless_split_gives_the_unsplit_detections(name):
    unsplit, split = _pair(name)
    assert type(split).__name__.startswith('EdgeCloud')
    assert isinstance(unsplit, MODELS.get(unsplit_model_cfg(split.cfg_for_test)['type']))
    inputs, samples = _batch(unsplit)
    with torch.no_grad():
        ref = unsplit.predict(inputs, copy.deepcopy(samples))
        # through the real bitstream: payloads carry the image meta the cloud uses
        payloads = split.encode(inputs, samples)
        got = split.decode_and_predict(payloads)
    assert sum(len(r.pred_instances) for r in ref) > 0
    for r, g in zip(ref, got):
        r, g = r.pred_instances, g.pred_instances
        assert len(r) == len(g)
        assert torch.equal(r.labels, g.labels)
        torch.testing.assert_close(g.bboxes, r.bboxes, rtol=0, atol=1e-4)
        torch.testing.assert_close(g.scores, r.scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize('name', ['DINO/Swin', 'RTMDet/CSPNeXt'])
def test_side_builds_hold_only_their_side(name):
    unsplit, split = _pair(name, dict(type='QuantizeNeck', n_bits=8))
    edge, cloud = split.build_edge(), split.build_cloud()
    e_keys, c_keys = set(edge.state_dict()), set(cloud.state_dict())
    assert any(k.startswith('backbone.') for k in e_keys)
    assert not any(k.startswith(('neck.', 'bbox_head.', 'encoder.', 'decoder.', 'level_embed'))
                   for k in e_keys)
    assert any(k.startswith('bbox_head.') for k in c_keys)
    edge_only = ('backbone.patch_embed.', 'backbone.stem.', 'backbone.stage1.', 'compressor.')
    assert any(k.startswith(edge_only) for k in e_keys)
    assert not any(k.startswith(edge_only) and 'pairing' not in k for k in c_keys
                   if not k.startswith('compressor.'))
    inputs, samples = _batch(unsplit)
    with torch.no_grad():
        payloads = edge.encode(inputs, samples)
        assert payloads == split.encode(inputs, samples)
        got = cloud.decode_and_predict(payloads)
        ref = split.decode_and_predict(payloads)
    for r, g in zip(ref, got):
        assert torch.equal(r.pred_instances.bboxes, g.pred_instances.bboxes)


def test_split_dino_trains_one_step():
    """The DETR loss path (denoising queries, Hungarian matching) runs through the split."""
    _, split = _pair('DINO/Swin', dict(type='EntropyBottleneckNeck', latent_channels=8))
    split.train()
    inputs, samples = _batch(split)
    losses = split.loss(inputs, _with_gt(samples))
    assert 'loss_rate' in losses and 'loss_cls' in losses
    total = sum(v for k, v in losses.items() if 'loss' in k and isinstance(v, torch.Tensor))
    total.backward()
    assert split.compressor.g_a[0].weight.grad is not None


def _with_gt(samples):
    for s in samples:
        s.gt_instances = InstanceData(bboxes=torch.tensor([[4.0, 6.0, 40.0, 44.0]]),
                                      labels=torch.tensor([1]))
    return samples


@pytest.mark.parametrize('name', ['DINO/Swin', 'RTMDet/CSPNeXt', 'DETR/ResNet'])
def test_split_loss_is_the_families_own_loss(name):
    """Each family's ``loss_from_features`` is its mmdet ``loss`` after ``extract_feat``: with a
    lossless codec the split's losses are the unsplit detector's (same draws, same weights)."""
    unsplit, split = _pair(name)
    unsplit.train()
    split.train()
    inputs, samples = _batch(unsplit)
    torch.manual_seed(5)  # DINO's denoising queries
    ref = unsplit.loss(inputs, _with_gt(copy.deepcopy(samples)))
    torch.manual_seed(5)
    got = split.loss(inputs, _with_gt(copy.deepcopy(samples)))
    assert set(got) == set(ref)
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=k)


def test_every_mmdet_detr_class_is_split_or_listed():
    """An explicit split class per mmdet DETR class that keeps the base flow; a new
    ``DetectionTransformer`` subclass in mmdet makes this fail until it is split or listed."""
    import mmdet.models.detectors as mmdet_detectors
    from mmdet.models.detectors.base_detr import DetectionTransformer

    from ecc_mmdet.models.detectors import DETR_SPLIT_TYPES, NOT_SPLIT
    mmdet_detrs = {n for n, c in vars(mmdet_detectors).items() if isinstance(c, type)
                   and issubclass(c, DetectionTransformer) and c is not DetectionTransformer}
    assert mmdet_detrs == set(DETR_SPLIT_TYPES.values()) | set(NOT_SPLIT)
    assert not set(DETR_SPLIT_TYPES.values()) & set(NOT_SPLIT)
    for split_name, base in DETR_SPLIT_TYPES.items():
        cls = MODELS.get(split_name)
        assert cls.unsplit_type == base and issubclass(cls, getattr(mmdet_detectors, base))
        assert all(getattr(getattr(mmdet_detectors, base), m) is getattr(DetectionTransformer, m)
                   for m in ('extract_feat', 'loss', 'predict', '_forward')), base
    assert MODELS.get('EdgeCloudGroundingDINO') is None


def test_family_errors():
    with pytest.raises(ConfigError, match="use type='EdgeCloudTwoStageDetector'"):
        MODELS.build(dict(TINY_DEFORMABLE_R18, type='EdgeCloudDeformableDETR',
                          roi_head=dict(), compressor=dict(type='Float32Neck')))
    with pytest.raises(ConfigError, match='computed on the edge before the split'):
        MODELS.build(split_model_cfg(TINY_RTMDET, 3, dict(type='Float32Neck')))
    bad = copy.deepcopy(TINY_DINO_SWIN)
    bad['backbone']['frozen_stages'] = 2
    model = MODELS.build(split_model_cfg(bad, 2, dict(type='Float32Neck')))
    model.eval()  # evaluating such a split is fine; training it is refused before a step
    with pytest.raises(ConfigError, match='frozen_stages=2 .* Use frozen_stages <= 1'):
        model.train()


def test_ddq_detr_is_refused_by_name():
    with pytest.raises(ConfigError, match='EdgeCloudDDQDETR|DDQDETR cannot be split yet'):
        MODELS.build(dict(type='EdgeCloudDDQDETR', split_after=1,
                          compressor=dict(type='Float32Neck')))
