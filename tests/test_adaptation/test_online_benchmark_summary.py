"""The online-adaptation benchmark's summary: averages over corruptions, recovery of the mAP lost
to the shift, paired gains, and the targets, on rows with known answers."""
import pytest

from benchmark_online_adaptation import summarize, table


def _row(method, corruption, edge, upload=0.0, off_q4=0.5, seed=0, updates=0, ratio=0.0):
    return dict(mode='reset', method=method, corruption=corruption, severity=3, seed=seed,
                stream=f'{corruption}@3', edge_mAP=edge, system_mAP=edge + 1, upload_ratio=upload,
                uplink_adapt_bytes_per_image=1000 * upload, uplink_infer_bytes_per_image=500.0,
                downlink_bytes_per_image=10.0 * updates, downlink_per_update_ratio=ratio,
                num_updates=updates, offload_ratio=off_q4, offload_ratio_first_quarter=0.1,
                offload_ratio_last_quarter=off_q4)


def test_recovery_gains_and_targets_have_known_values():
    clean = [dict(edge_mAP=10.0, system_mAP=12.0, offload_ratio=0.5)]
    rows = [_row('none', 'fog', 2.0, off_q4=0.1), _row('none', 'noise', 4.0, off_q4=0.1),
            _row('cema', 'fog', 7.0, 0.2, 0.4, updates=3, ratio=0.008),
            _row('cema', 'noise', 7.0, 0.3, 0.4, updates=3, ratio=0.006),
            _row('random', 'fog', 5.0, 0.25), _row('random', 'noise', 5.0, 0.25),
            _row('norm_stats', 'fog', 6.0), _row('norm_stats', 'noise', 6.0)]
    s = summarize(rows, clean, ['none', 'norm_stats', 'cema', 'random'], [3], ['fog', 'noise'])
    cema = s['by_severity']['3']['cema']
    # none averages 3.0, clean 10.0: 7 lost; CEMA at 7.0 gets back 4 of them
    assert cema['edge_mAP'] == pytest.approx(7.0)
    assert cema['recovery'] == pytest.approx(4 / 7)
    assert cema['upload_ratio'] == pytest.approx(0.25)
    assert cema['edge_gain_vs_none']['mean'] == pytest.approx(4.0)
    assert cema['edge_gain_vs_none']['sd'] == pytest.approx(2 ** 0.5)
    t = s['targets']
    assert t['recovery_ge_50pct_at_s3']['met']
    assert t['beats_random_and_edge_only_at_s3']['met']
    assert t['offload_ratio_back_toward_clean_at_s3']['met']  # 0.4 is nearer 0.5 than 0.1
    assert t['downlink_per_update_le_1pct']['met'] and \
        t['downlink_per_update_le_1pct']['value'] == pytest.approx(0.008)
    # uploading more than 30 % misses the first target whatever the recovery
    rows[3]['upload_ratio'] = 0.9
    s2 = summarize(rows, clean, ['none', 'norm_stats', 'cema', 'random'], [3], ['fog', 'noise'])
    assert not s2['targets']['recovery_ge_50pct_at_s3']['met']
    # an edge-only method above CEMA misses the second
    rows[6]['edge_mAP'] = rows[7]['edge_mAP'] = 8.0
    s3 = summarize(rows, clean, ['none', 'norm_stats', 'cema', 'random'], [3], ['fog', 'noise'])
    assert not s3['targets']['beats_random_and_edge_only_at_s3']['met']
    text = table(dict(summary=s3, rows=rows, num_images=100, seeds=[0]))
    assert 'recovery_ge_50pct_at_s3: missed' in text and 'cema' in text


def test_another_teacher_gets_its_own_targets_and_the_budget_is_checked_per_stream():
    """``cema@robust`` rows (``--teacher robust ...``) are averaged and targeted on their own,
    against their own random control; CEMA minus BN statistics gets a t-interval over streams;
    one stream 6 points off the budget misses the budget target."""
    from benchmark_online_adaptation import method_order, target_ratio
    clean = [dict(edge_mAP=10.0, system_mAP=12.0, offload_ratio=0.5)]
    cs = ('fog', 'noise', 'blur')
    rows = ([_row('none', c, 3.0) for c in cs] + [_row('norm_stats', c, 5.0) for c in cs]
            + [_row('cema', c, e, 0.3) for c, e in zip(cs, (5.0, 5.5, 4.5))]
            + [_row('random', c, 5.0, 0.3) for c in cs]
            + [_row('cema@robust', c, e, u) for c, e, u in zip(cs, (7, 8, 6), (.3, .36, .3))]
            + [_row('random@robust', c, 5.0, 0.3) for c in cs])
    methods = method_order({r['method'] for r in rows})
    assert methods == ['none', 'norm_stats', 'cema', 'cema@robust', 'random', 'random@robust']
    ratio = target_ratio(dict(selector=dict(type='EntropySelector', band=(0.5, 0.8))))
    assert ratio == pytest.approx(0.3)
    assert target_ratio(dict(selector=dict(band=(0.5, 0.8), budget=False))) is None
    s = summarize(rows, clean, methods, [3], list(cs), ratio)
    assert s['by_severity']['3']['cema@robust']['edge_mAP'] == pytest.approx(7.0)
    t = s['targets']
    # CEMA - BN statistics: 0, +0.5, -0.5 -> mean 0, the interval straddles 0
    assert t['minus_norm_stats_ci_above_0_at_s3']['mean'] == pytest.approx(0.0)
    assert not t['minus_norm_stats_ci_above_0_at_s3']['met']
    # with the robust teacher: +2, +3, +1 -> mean 2, sd 1, t(0.975, 2) = 4.303 -> [-0.48, 4.48]
    rob = t['minus_norm_stats_ci_above_0_at_s3@robust']
    assert rob['mean'] == pytest.approx(2.0) and rob['ci95'] == '[-0.48, +4.48]'
    assert t['beats_random_and_edge_only_at_s3@robust']['others'] == {
        'random@robust': 5.0, 'norm_stats': 5.0}
    assert t['upload_ratio_within_5pts_every_stream']['met']
    off = t['upload_ratio_within_5pts_every_stream@robust']
    assert not off['met'] and off['worst_stream'] == 'noise@3 seed 0'
    assert off['worst_ratio'] == pytest.approx(0.36)
