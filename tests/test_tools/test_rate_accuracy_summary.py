"""The rate-accuracy summary (BD-rate vs the input-codec front, targets, table) on constructed
curves with known answers."""
import pytest
from ecc_tools.rate_accuracy import front_bytes_at, front_rows, summarize, table


def _row(method, setting, kb, mAP, edge=0.0, cloud=1.0):
    return dict(method=method, setting=setting, bytes_per_image=kb * 1000.0, bbox_mAP=mAP,
                bbox_mAP_50=mAP * 1.5, edge_gflops=edge, cloud_gflops=cloud,
                edge_flops_fraction=None, latency_ms=None, real_to_est=None)


TEACHER = _row('teacher', 'original image', 0.0, 20.0, None, None)
JPEG = [_row('cloud-only JPEG', 'q=10', 2.0, 10.0), _row('cloud-only JPEG', 'q=30', 4.0, 15.0),
        _row('cloud-only JPEG', 'q=90', 8.0, 19.5)]
# WebP: exactly half of JPEG's bytes at every mAP -> it alone is the input-codec front
WEBP = [_row('cloud-only WebP', 'q=5', 1.0, 10.0), _row('cloud-only WebP', 'q=30', 2.0, 15.0),
        _row('cloud-only WebP', 'q=70', 4.0, 19.5)]


def _learned(factor):
    """A learned curve at ``factor`` x WebP's bytes at every mAP."""
    return [_row('learned bottleneck', f'beta={b}', kb * factor, m, 0.1, 0.9)
            for b, (kb, m) in zip((0.2, 0.05, 0.01), ((1.0, 10.0), (2.0, 15.0), (4.0, 19.5)))]


def test_bd_rate_is_against_the_front_of_all_input_codecs():
    rows = [TEACHER] + JPEG + WEBP + _learned(0.5)
    s = summarize(rows)
    assert [r['setting'] for r in front_rows(JPEG + WEBP)] == ['q=5', 'q=30', 'q=70']
    assert s['input_codec_front'] == ['WebP q=5', 'WebP q=30', 'WebP q=70']
    assert s['bd_rate_learned_vs_input_front'] == pytest.approx(-0.5, abs=1e-9)
    assert s['bd_rate_learned_vs'] == {'cloud-only JPEG': pytest.approx(-0.75, abs=1e-9),
                                       'cloud-only WebP': pytest.approx(-0.5, abs=1e-9)}
    # within 1 mAP of 20.0: WebP q=70 (4 KB) and the student at 2 KB -> ratio 1/2
    assert s['cheapest_input_within_1_mAP'] == dict(setting='WebP q=70', bytes=4000.0, mAP=19.5)
    assert s['bytes_ratio_learned_to_input_within_1_mAP'] == pytest.approx(0.5)
    assert s['best_learned_edge_flops_fraction'] == pytest.approx(0.1)
    assert s['targets'] == dict(bd_rate_vs_input_front_le_minus_50pct=True,
                                within_1_mAP_at_quarter_bytes=False,
                                edge_flops_at_most_15pct=True)
    # each learned point at half the front's bytes for its mAP
    assert [p['ratio'] for p in s['learned_vs_front_at_same_mAP']] == pytest.approx([0.5] * 3)
    assert front_bytes_at(front_rows(WEBP), 12.5) == pytest.approx(2 ** 0.5 * 1000)
    assert front_bytes_at(front_rows(WEBP), 19.6) is None  # the front never gets there
    text = table(rows, s, 1.0)
    assert 'learned bottleneck beta=0.05: 1.00 KB at 15.0 mAP; the input-codec front needs ' \
        '2.00 KB: 0.50x' in text
    assert 'BD-rate learned bottleneck vs the Pareto front of all input codecs: -50.0 %' in text
    assert 'BD-rate learned bottleneck vs cloud-only JPEG: -75.0 %' in text
    assert 'within_1_mAP_at_quarter_bytes: MISSED' in text


def test_quarter_bytes_target_and_its_edge_cases():
    s = summarize([TEACHER] + JPEG + WEBP + _learned(0.25))
    assert s['bytes_ratio_learned_to_input_within_1_mAP'] == pytest.approx(0.25)
    assert s['targets']['within_1_mAP_at_quarter_bytes'] is True
    assert s['bd_rate_learned_vs_input_front'] == pytest.approx(-0.75, abs=1e-9)
    # a student 1.5 points below the teacher is not within 1 mAP, whatever its bytes
    far = [dict(r, bbox_mAP=r['bbox_mAP'] - 1.0) for r in _learned(0.01)]
    s = summarize([TEACHER] + JPEG + WEBP + far)
    assert 'cheapest_learned_within_1_mAP' not in s
    assert s['targets']['within_1_mAP_at_quarter_bytes'] is False
    # no input codec within 1 mAP but a student is: it is met (nothing to be 1/4 of)
    low = [dict(r, bbox_mAP=min(r['bbox_mAP'], 18.0)) for r in JPEG + WEBP]
    s = summarize([TEACHER] + low + _learned(2.0))
    assert 'cheapest_input_within_1_mAP' not in s
    assert s['targets']['within_1_mAP_at_quarter_bytes'] is True


def test_intervals_come_from_the_shared_resamples():
    rng = [float(v) for v in range(10)]

    def with_samples(r, offset):
        return dict(r, mAP_samples=[r['bbox_mAP'] + offset + v for v in rng])

    teacher = with_samples(TEACHER, 0.0)
    inputs = [with_samples(r, 0.0) for r in JPEG + WEBP]
    learned = [with_samples(r, 0.0) for r in _learned(0.5)]
    # every resample moves every row by the same amount: the paired differences are constant
    s = summarize([teacher] + inputs + learned)
    assert s['best_learned_mAP_gap_to_teacher_ci'] == pytest.approx([0.5, 0.5])
    assert s['mAP_learned_minus_input_within_1_mAP_ci'] == pytest.approx([0.0, 0.0])
    # ... and the BD-rate is the same -50 % on each of them
    assert s['bd_rate_learned_vs_input_front_ci'] == pytest.approx([-0.5, -0.5], abs=1e-9)
    text = table([teacher] + inputs + learned, s, 1.0)
    assert '(95% CI [-50.0, -50.0] %)' in text and '0.5 mAP below the teacher (95% CI' in text


def test_variable_rate_points_form_their_own_curve():
    variable = [dict(r, method='variable-rate student', setting=f'vr r={k}')
                for k, r in enumerate(_learned(0.25))]
    s = summarize([TEACHER] + JPEG + WEBP + _learned(0.5) + variable)
    assert s['bd_rate_variable_rate_vs_input_front'] == pytest.approx(-0.75, abs=1e-9)
    assert s['bd_rate_variable_rate_vs_single_rate_students'] == pytest.approx(-0.5, abs=1e-9)
    assert s['bd_rate_learned_vs_input_front'] == pytest.approx(-0.5, abs=1e-9)  # unchanged
    vr = [p for p in s['learned_vs_front_at_same_mAP'] if p['method'] == 'variable-rate student']
    assert [p['ratio'] for p in vr] == pytest.approx([0.25] * 3)


def test_other_families_are_compared_with_their_own_teacher_and_front():
    """A second detector family (e.g. RTMDet) next to the main one: its rows never enter the
    main family's front or targets; its own summary uses its own teacher and WebP rows."""
    fam = [_row('RTMDet teacher', 'original image', 0.0, 12.0, None, None),
           _row('RTMDet cloud-only WebP', 'q=5', 1.0, 8.0),
           _row('RTMDet cloud-only WebP', 'q=30', 4.0, 11.0),
           _row('RTMDet learned bottleneck', 'KD student', 1.0, 10.0, 0.2, 0.8)]
    main = [TEACHER] + WEBP + _learned(0.5)
    s = summarize(main + fam)
    assert s == {**summarize(main), 'families': s['families']}  # main results unchanged
    f = s['families']['RTMDet']
    assert f['teacher_mAP'] == 12.0 and f['gap_to_teacher'] == pytest.approx(2.0)
    # its front: 1 KB at 8 mAP -> 4 KB at 11 mAP; at 10 mAP: 1 KB * 4 ** (2/3)
    assert f['input_front_bytes_at_student_mAP'] == pytest.approx(1000 * 4 ** (2 / 3))
    assert f['bytes_ratio_to_input_front'] == pytest.approx(4 ** (-2 / 3))
    assert f['edge_flops_fraction'] == pytest.approx(0.2)
    assert s['families']['main']['student_mAP'] == 19.5
    text = table(main + fam, s, 1.0)
    assert 'RTMDet student: 1.00 KB at 10.0 mAP, 2.0 below its teacher, 0.40x its input-codec ' \
           "front's bytes, edge 20 % of its FLOPs" in text


def test_variable_rate_points_against_single_rate_students_of_their_codec():
    single = [dict(_row('learned bottleneck', f'HP beta={b}', kb, m), codec='hyperprior_bottleneck')
              for b, kb, m in ((0.2, 1.0, 10.0), (0.05, 4.0, 14.0))]
    factorized = [_row('learned bottleneck', 'KD beta=0.05', 2.0, 30.0)]  # another codec: ignored
    vr = [dict(_row('variable-rate student', f'VR r={r}', kb, m), codec='variable_rate_hyperprior')
          for r, kb, m in ((0, 1.0, 9.8), (1, 2.0, 11.0), (2, 8.0, 15.0))]
    s = summarize([TEACHER] + WEBP + single + factorized + vr)
    got = {v['setting']: v for v in s['variable_rate_vs_single_rate']}
    assert got['VR r=0']['gap'] == pytest.approx(0.2)
    # 2 KB is halfway between 1 and 4 KB in log-bytes: the single-rate curve reaches 12.0 there
    assert got['VR r=1']['single_rate_mAP_at_bytes'] == pytest.approx(12.0)
    assert got['VR r=1']['gap'] == pytest.approx(1.0)
    assert got['VR r=2']['gap'] is None  # beyond the single-rate students' bytes
    from ecc_tools.rate_accuracy import map_at_bytes
    assert map_at_bytes(single, 4100.0) == 14.0  # 2.5 % beyond the end: the same bytes
    assert s['targets']['variable_rate_within_0.5_mAP_of_single_rate'] is False
    ok = [dict(v, bbox_mAP=v['bbox_mAP'] + 0.6) for v in vr[:2]]
    s = summarize([TEACHER] + WEBP + single + ok)
    assert s['targets']['variable_rate_within_0.5_mAP_of_single_rate'] is True
    assert s['bd_rate_by_codec_vs_input_front']['hyperprior_bottleneck'] is not None
    assert 'variable-rate VR r=1: 2.00 KB at 11.6 mAP vs the single-rate hyperprior_bottleneck ' \
        'students: they reach 12.0 there, +0.4 mAP' in table([TEACHER] + WEBP + single + ok, s, 1.0)


def test_bd_rate_between_learned_codecs():
    """Two codecs' single-rate students: the second at half the bytes for the same mAP is
    -50 % against the first (and +100 % the other way); a codec with one student is left out."""
    hp = [dict(_row('learned bottleneck', f'HP beta={b}', kb, m), codec='hyperprior_bottleneck')
          for b, kb, m in ((0.2, 1.0, 10.0), (0.05, 4.0, 14.0))]
    cc = [dict(r, setting='CC ' + r['setting'], bytes_per_image=r['bytes_per_image'] / 2,
               codec='channel_context_hyperprior') for r in hp]
    one = [dict(_row('learned bottleneck', 'KD', 2.0, 12.0), codec='entropy_bottleneck')]
    s = summarize([TEACHER] + WEBP + hp + cc + one)
    pairs = s['bd_rate_between_codecs']
    assert set(pairs) == {'channel_context_hyperprior vs hyperprior_bottleneck',
                          'hyperprior_bottleneck vs channel_context_hyperprior'}
    assert pairs['channel_context_hyperprior vs hyperprior_bottleneck']['bd_rate'] == \
        pytest.approx(-0.5)
    assert pairs['hyperprior_bottleneck vs channel_context_hyperprior']['bd_rate'] == \
        pytest.approx(1.0)
    assert 'BD-rate channel_context_hyperprior vs hyperprior_bottleneck (single-rate ' \
        'students): -50.0 %' in table([TEACHER] + WEBP + hp + cc + one, s, 1.0)
