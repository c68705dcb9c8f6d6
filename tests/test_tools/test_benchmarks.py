"""The benchmark tools run end to end on a handful of images and write what they promise."""
import json
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import REPO, run_tool

TEACHER = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
STUDENT = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_kd.py')
VR_STUDENT = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_kd_vr.py')


def _checkpoints(tmp_path):
    """A teacher checkpoint and a student initialised from it (as the KD hook would start)."""
    import ecc_mmdet  # noqa: F401
    from ecc_mmdet.apis.inference import build_detector
    torch.manual_seed(0)
    teacher = build_detector(Config.fromfile(TEACHER).model)
    student = build_detector(Config.fromfile(STUDENT).model)
    student.load_state_dict(teacher.state_dict(), strict=False)
    student.eval()  # builds the entropy model's tables, saved with the checkpoint
    t, s = str(tmp_path / 'teacher.pth'), str(tmp_path / 'student.pth')
    save_checkpoint({'state_dict': teacher.state_dict(), 'meta': {}}, t)
    save_checkpoint({'state_dict': student.state_dict(), 'meta': {}}, s)
    vr = build_detector(Config.fromfile(VR_STUDENT).model)
    vr.load_state_dict(teacher.state_dict(), strict=False)
    vr.eval()
    save_checkpoint({'state_dict': vr.state_dict(), 'meta': {}}, str(tmp_path / 'vr.pth'))
    return t, s


def test_rate_accuracy_benchmark_end_to_end(tiny_coco, tmp_path):
    teacher, student = _checkpoints(tmp_path)
    out = tmp_path / 'ra' / 'rate_accuracy.json'
    run_tool('benchmark_rate_accuracy', '--teacher-config', TEACHER, '--teacher-checkpoint',
             teacher, '--student', 'beta=x', STUDENT, student, '--jpeg-qualities', '10', '90',
             '--webp-qualities', '30', '--avif-qualities', '30', '--fit-to-input',
             '--variable-rate-student', 'vr', VR_STUDENT, str(tmp_path / 'vr.pth'),
             '--quantize-bits', '8', '4', '--split-after', '0', '--data-root', tiny_coco,
             '--num-images', '3', '--bootstrap', '20', '--out', out)
    res = json.load(open(out))
    methods = [(r['method'], r['setting']) for r in res['rows']]
    assert methods == [('teacher', 'original image'), ('cloud-only JPEG', 'q=10'),
                       ('cloud-only JPEG', 'q=90'), ('cloud-only JPEG (fitted)', 'q=10'),
                       ('cloud-only JPEG (fitted)', 'q=90'), ('cloud-only WebP', 'q=30'),
                       ('cloud-only WebP (fitted)', 'q=30'), ('cloud-only AVIF', 'q=30'),
                       ('cloud-only AVIF (fitted)', 'q=30'), ('8-bit features', 'split_after=0'),
                       ('4-bit features', 'split_after=0'), ('learned bottleneck', 'beta=x'),
                       *[('variable-rate student', f'vr r={r}') for r in range(4)]]
    rows = {m: r for m, r in zip(methods, res['rows'])}
    jpeg10, jpeg90 = rows[('cloud-only JPEG', 'q=10')], rows[('cloud-only JPEG', 'q=90')]
    assert 0 < jpeg10['bytes_per_image'] < jpeg90['bytes_per_image']
    # 64 px images are already within the detector's 128 px input: fitting sends the same file
    for codec in ('JPEG', 'WebP', 'AVIF'):
        q = 'q=10' if codec == 'JPEG' else 'q=30'
        assert rows[(f'cloud-only {codec} (fitted)', q)]['bytes_per_image'] == \
            rows[(f'cloud-only {codec}', q)]['bytes_per_image']
    # every row has its bootstrap samples (the same 20 resamples of the 3 images) and interval
    for r in res['rows']:
        assert len(r['mAP_samples']) == 20
        assert r['mAP_ci'][0] <= r['mAP_ci'][1]
        assert min(r['mAP_samples']) <= r['mAP_ci'][0] and r['mAP_ci'][1] <= max(r['mAP_samples'])
    # the input-codec front is made of input-codec settings, cheapest first
    front = res['summary']['input_codec_front']
    assert front and all(f.split(' ')[0] in ('JPEG', 'WebP', 'AVIF') for f in front)
    q8, q4 = rows[('8-bit features', 'split_after=0')], rows[('4-bit features', 'split_after=0')]
    assert q4['bytes_per_image'] < q8['bytes_per_image']
    learned = rows[('learned bottleneck', 'beta=x')]
    assert learned['bytes_per_image'] > 0 and 0 < learned['edge_flops_fraction'] < 0.15
    # the teacher's mAP is the summary's reference, and every other row is measured against it
    assert res['summary']['teacher_mAP'] == rows[('teacher', 'original image')]['bbox_mAP']
    assert set(res['summary']['targets']) == {'bd_rate_vs_input_front_le_minus_50pct',
                                              'within_1_mAP_at_quarter_bytes',
                                              'edge_flops_at_most_15pct',
                                              'variable_rate_within_0.5_mAP_of_single_rate'}
    assert learned['codec'] == 'entropy_bottleneck'
    assert rows[('variable-rate student', 'vr r=0')]['codec'] == 'variable_rate_bottleneck'
    assert osp.getsize(str(out).replace('.json', '.png')) > 1000
    # One student is one point on the learned curve and BD-rate needs two per curve, so it is
    # None here by construction -- and the table then prints no BD-rate line. The value itself is
    # checked on constructed curves in test_rate_accuracy_summary.py.
    assert res['summary']['bd_rate_learned_vs_input_front'] is None
    assert all(v is None for v in res['summary']['bd_rate_learned_vs'].values())
    assert 'BD-rate learned' not in open(str(out).replace('.json', '.txt')).read()
    # --merge: a later run adds a student without re-encoding any image; the earlier rows stay
    merged = tmp_path / 'ra' / 'merged.json'
    run_tool('benchmark_rate_accuracy', '--teacher-config', TEACHER, '--teacher-checkpoint',
             teacher, '--student', 'again', STUDENT, student, '--jpeg-qualities',
             '--webp-qualities', '--avif-qualities', '--quantize-bits', '--data-root', tiny_coco,
             '--num-images', '3', '--bootstrap', '20', '--merge', out, '--out', merged)
    res2 = json.load(open(merged))
    assert [(r['method'], r['setting']) for r in res2['rows']] == \
        methods + [('learned bottleneck', 'again')]
    assert res2['rows'][-1]['mAP_samples'] == learned['mAP_samples']  # same model, same resamples
    other = tmp_path / 'ra' / 'other.json'
    with open(out) as f:
        doc = json.load(f)
    doc['rows'][0]['bbox_mAP'] += 1.0  # made with another teacher or other images
    with open(other, 'w') as f:
        json.dump(doc, f)
    proc = run_tool('benchmark_rate_accuracy', '--teacher-config', TEACHER, '--teacher-checkpoint',
                    teacher, '--jpeg-qualities', '--webp-qualities', '--avif-qualities',
                    '--quantize-bits', '--data-root', tiny_coco, '--num-images', '3',
                    '--bootstrap', '20', '--merge', other, '--out', merged, check=False)
    assert proc.returncode != 0 and 'teacher row differs' in proc.stderr + proc.stdout


def test_codec_benchmark_end_to_end(tiny_coco, tmp_path):
    _, student = _checkpoints(tmp_path)
    out = tmp_path / 'codec.json'
    proc = run_tool('benchmark_codec', STUDENT, student, '--data-root', tiny_coco,
                    '--num-images', '3', '--warmup', '1', '--out', out)
    res = json.load(open(out))
    assert res['num_images'] == 3 and res['codec'] == 'entropy_bottleneck'
    assert res['payload_bytes_mean'] == res['header_bytes_mean'] + res['body_bytes_mean']
    assert 0.5 < res['real_to_est_body_ratio'] < 2.0
    assert res['split_ms_per_image'] > 0 and res['unsplit_ms_per_image'] > 0
    assert set(res['targets']) == {'codec_share_le_10pct', 'throughput_ratio_ge_0p9',
                                   'real_within_3pct_of_estimate'}
    assert 'real / estimated body' in proc.stdout


def test_bit_allocation_figures_and_tool(tiny_coco, tmp_path):
    from benchmark_bit_allocation import allocation, box_coverage
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    s = DetDataSample(metainfo=dict(scale_factor=(2.0, 2.0)))
    s.gt_instances = InstanceData(bboxes=torch.tensor([[0.0, 0.0, 8.0, 4.0]]))  # 16x8 input px
    cover = box_coverage([s], (32, 32), (4, 4))  # 8-px cells: two full cells of the top row
    assert cover[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0] and float(cover.sum()) == 2.0
    bits = torch.ones(1, 4, 4)
    bits[0, 0, :2] = 7.0  # 14 of the 28 bits on 2 of the 16 cells
    a = allocation(bits, cover)
    assert a['bits_per_image'] == 28.0 and a['object_area_share'] == 2 / 16
    assert a['object_bits_share'] == 0.5 and a['object_to_background_bits_per_area'] == 7.0
    _, student = _checkpoints(tmp_path)
    out = tmp_path / 'ba.json'
    run_tool('benchmark_bit_allocation', '--student', 'kd', STUDENT, student, '--data-root',
             tiny_coco, '--num-images', '3', '--out', out)
    row, = json.load(open(out))['rows']
    assert row['codec'] == 'entropy_bottleneck' and row['bits_per_image'] > 0
    assert 0 < row['object_area_share'] < 1 and 0 < row['object_bits_share'] < 1
    assert 'KB' not in open(str(out).replace('.json', '.txt')).read()
