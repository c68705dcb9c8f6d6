"""tools/benchmark_serving.py end to end on a tiny setting: every answer checked against the
in-process cloud, bytes equal to CommunicationMetric's, the fuzz run clean, JSON/table/plot
written. (Timings are reported, never asserted.)"""
import json

from conftest import run_tool


def test_benchmark_serving_small_run(served_model, tmp_path):
    out = tmp_path / 'serving.json'
    run_tool('benchmark_serving', served_model['config'], served_model['checkpoint'],
             '--data-root', served_model['data_root'], '--num-images', 3, '--requests', 6,
             '--concurrency', 1, 3, '--fuzz', 45, '--retry-queue', 1, '--out', out,
             timeout=900)
    res = json.loads(out.read_text())
    assert res['bytes']['equal'] and res['bytes']['payloads'] > 0
    runs = res['levels'] + [res['unbatched'], res['retry']]
    assert [r['concurrency'] for r in runs] == [1, 3, 3, 3]
    for r in runs:
        assert r['answered'] == 6 and r['lost'] == r['duplicated'] == r['mismatched'] == 0
        assert r['latency_ms']['p50'] <= r['latency_ms']['p95'] <= r['latency_ms']['p99']
    assert res['unbatched']['mean_batch'] == 1.0
    f = res['fuzz']
    assert f['cases'] == 45 and f['server_5xx'] == 0 and f['hangs'] == 0
    assert f['num_problems'] == 0 and f['server_alive']
    assert f['by_kind']['wrong'] == {'409': sum(f['by_kind']['wrong'].values())}
    text = (tmp_path / 'serving.txt').read_text()
    assert 'Targets:' in text and (tmp_path / 'serving.png').stat().st_size > 0
