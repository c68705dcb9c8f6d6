"""CommunicationMetric over hand-made CommRecords with known figures."""
import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from mmdet.registry import METRICS
from mmdet.structures import DetDataSample

from ecc_mmdet.structures import comm_record as accounting
from ecc_mmdet.structures import CommRecord
from ecc_mmdet.evaluation import CommunicationMetric, MissingCommRecordError, bandwidth_key

PAYLOADS = [100, 200, 300, 400, 1000]  # offloaded images
HEADER = 10


def _records():
    """5 offloaded images + 1 kept on the edge, every optional field filled."""
    recs = [
        CommRecord(payload_bytes=p, header_bytes=HEADER, estimated_bits=(p - HEADER - 10) * 8.0,
                   codec='entropy_bottleneck', offloaded=True, edge_flops=1e9, cloud_flops=3e9,
                   edge_params=2_500_000, edge_time_s=0.010, cloud_time_s=0.020,
                   codec_time_s=0.004) for p in PAYLOADS
    ]
    recs.append(CommRecord(payload_bytes=0, header_bytes=0, estimated_bits=None,
                           codec='edge_exit', offloaded=False, edge_flops=1e9, cloud_flops=None,
                           edge_params=2_500_000, edge_time_s=0.010, cloud_time_s=None,
                           codec_time_s=None))
    return recs


def _sample_dicts(records, with_pred=True):
    """What an evaluator's metrics receive: DetDataSample.to_dict() with the record attached."""
    out = []
    for i, rec in enumerate(records):
        s = DetDataSample(metainfo=dict(img_id=i, img_path=f'img_{i}.jpg', ori_shape=(32, 32)))
        if with_pred:
            s.pred_instances = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                            labels=torch.zeros(0, dtype=torch.long))
        if rec is not None:
            accounting.attach(s, rec)
        out.append(s.to_dict())
    return out


def _run(metric, records):
    metric.process({}, _sample_dicts(records))
    return metric.compute_metrics(metric.results)


def test_known_values_all_fields():
    metric = CommunicationMetric(bandwidth_mbps=[10.0, 2.5], rtt_ms=5.0)
    m = _run(metric, _records())
    assert m['num_images'] == 6
    assert m['offload_ratio'] == pytest.approx(5 / 6)
    # over offloaded images only
    assert m['bytes_mean'] == pytest.approx(400.0)
    assert m['bytes_median'] == pytest.approx(300.0)
    assert m['bytes_p95'] == pytest.approx(880.0)  # 400 + 0.8 * (1000 - 400), linear
    assert m['kbytes_mean'] == pytest.approx(0.4)
    assert m['header_bytes_mean'] == pytest.approx(10.0)
    # estimate body = real body - 10 bytes: mean est body 380, real body 390
    assert m['est_bytes_mean'] == pytest.approx(390.0)
    assert m['real_to_est_ratio'] == pytest.approx(390.0 / 380.0)
    # over all images, 0 for the one kept on the edge
    assert m['bytes_per_image_mean'] == pytest.approx(2000 / 6)
    # compute split: cloud FLOPs of the non-offloaded image count as 0
    assert m['edge_gflops'] == pytest.approx(1.0)
    assert m['cloud_gflops'] == pytest.approx(15 / 6)
    assert m['edge_flops_fraction'] == pytest.approx(6 / 21)
    assert m['edge_params_m'] == pytest.approx(2.5)
    assert m['edge_time_ms'] == pytest.approx(10.0)
    assert m['cloud_time_ms'] == pytest.approx(100 / 6)
    assert m['codec_time_ms'] == pytest.approx(4.0)
    # latency = edge + offloaded * (bytes*8/bw + rtt) + cloud, averaged over all 6 images
    # 10 Mbit/s: 2000 bytes -> 1.6 ms in total; 2.5 Mbit/s: 6.4 ms in total
    assert m['uplink_ms_at_10mbps'] == pytest.approx((1.6 + 5 * 5.0) / 6)
    assert m['uplink_ms_at_2p5mbps'] == pytest.approx((6.4 + 5 * 5.0) / 6)
    assert m['latency_ms_at_10mbps'] == pytest.approx((6 * 10.0 + 5 * 20.0 + 1.6 + 25.0) / 6)
    assert m['latency_ms_at_2p5mbps'] == pytest.approx((6 * 10.0 + 5 * 20.0 + 6.4 + 25.0) / 6)
    assert all(isinstance(v, float) for v in m.values())


def test_missing_optional_fields_are_skipped():
    metric = CommunicationMetric(bandwidth_mbps=8.0)
    m = _run(metric, [CommRecord(payload_bytes=1000), CommRecord(payload_bytes=3000)])
    assert m['bytes_mean'] == 2000.0 and m['offload_ratio'] == 1.0
    assert m['uplink_ms_at_8mbps'] == pytest.approx(2.0)  # 16000 bits / 8e6 bit/s = 2 ms
    for key in ('est_bytes_mean', 'real_to_est_ratio', 'edge_gflops', 'cloud_gflops',
                'edge_flops_fraction', 'edge_params_m', 'edge_time_ms', 'cloud_time_ms',
                'codec_time_ms', 'latency_ms_at_8mbps'):
        assert key not in m
    # an offloaded image without cloud time -> no latency even though edge times exist
    m = _run(CommunicationMetric(), [CommRecord(payload_bytes=10, edge_time_s=0.1)])
    assert m['edge_time_ms'] == pytest.approx(100.0) and 'latency_ms_at_10mbps' not in m


def test_nothing_offloaded():
    recs = [CommRecord(payload_bytes=0, offloaded=False, edge_time_s=0.002) for _ in range(3)]
    m = _run(CommunicationMetric(rtt_ms=50.0), recs)
    assert m['offload_ratio'] == 0.0 and m['bytes_per_image_mean'] == 0.0
    assert 'bytes_mean' not in m and 'bytes_p95' not in m
    assert m['uplink_ms_at_10mbps'] == 0.0  # no RTT when nothing is sent
    assert m['latency_ms_at_10mbps'] == pytest.approx(2.0)
    assert m['cloud_time_ms'] == 0.0


def test_missing_record_error_names_the_fix():
    metric = CommunicationMetric()
    samples = _sample_dicts([CommRecord(payload_bytes=5), None])
    with pytest.raises(MissingCommRecordError) as exc:
        metric.process({}, samples)
    msg = str(exc.value)
    assert 'img_1.jpg' in msg and 'no communication record' in msg
    assert 'EdgeCloud' in msg and 'JPEGCompressImage' in msg and "'ecc_comm'" in msg
    assert 'PackDetInputs' in msg


def test_empty_results():
    assert CommunicationMetric().compute_metrics([]) == {}


@pytest.mark.parametrize('bw, key', [(10.0, '10mbps'), (10, '10mbps'), (2.5, '2p5mbps'),
                                     (0.5, '0p5mbps'), (100.0, '100mbps')])
def test_bandwidth_key(bw, key):
    assert bandwidth_key(bw) == key


@pytest.mark.parametrize('kwargs', [dict(bandwidth_mbps=0), dict(bandwidth_mbps=[10, -1]),
                                    dict(bandwidth_mbps=[]), dict(bandwidth_mbps='10'),
                                    dict(bandwidth_mbps=float('nan')), dict(rtt_ms=-1.0)])
def test_invalid_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        CommunicationMetric(**kwargs)


def test_through_evaluator_beside_another_metric():
    init_default_scope('mmdet')
    assert METRICS.get('CommunicationMetric') is CommunicationMetric
    evaluator = Evaluator([dict(type='CommunicationMetric', bandwidth_mbps=[1, 10]),
                           dict(type='CommunicationMetric', prefix='comm_b')])
    recs = _records()
    for start in (0, 3):  # two batches of DetDataSample objects, as the test loop sends them
        batch = []
        for i, rec in enumerate(recs[start:start + 3]):
            s = DetDataSample(metainfo=dict(img_id=start + i))
            s.pred_instances = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                            labels=torch.zeros(0, dtype=torch.long))
            accounting.attach(s, rec)
            batch.append(s)
        evaluator.process(data_samples=batch, data_batch={})
    m = evaluator.evaluate(len(recs))
    assert m['comm/bytes_mean'] == pytest.approx(400.0)
    assert m['comm/offload_ratio'] == pytest.approx(5 / 6)
    assert m['comm/latency_ms_at_1mbps'] == pytest.approx(
        (6 * 10.0 + 5 * 20.0 + 2000 * 8 / 1e6 * 1e3) / 6)
    assert 'comm/latency_ms_at_10mbps' in m and 'comm_b/latency_ms_at_10mbps' in m
    assert np.isfinite(list(m.values())).all()


def test_tier_shares_and_flops_without_exits():
    recs = [CommRecord(payload_bytes=500, tier='cloud', edge_flops=3e8, exit_flops=1e8,
                       cloud_flops=2e9) for _ in range(2)]
    recs += [CommRecord(payload_bytes=0, offloaded=False, tier='edge_main', edge_flops=2e8,
                        exit_flops=1e8, cloud_flops=0.0) for _ in range(3)]
    m = _run(CommunicationMetric(), recs)
    assert m['tier_cloud_share'] == pytest.approx(0.4)
    assert m['tier_edge_main_share'] == pytest.approx(0.6)
    assert m['bytes_per_image_mean'] == pytest.approx(200.0)  # over all images
    assert m['exit_gflops'] == pytest.approx(0.1)
    assert m['edge_flops_fraction'] == pytest.approx(12e8 / (12e8 + 4e9))
    assert m['edge_flops_fraction_without_exits'] == pytest.approx(7e8 / (7e8 + 4e9))
