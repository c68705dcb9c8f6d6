"""Dynamic batching, serving settings and token handling, in-process (no model, no network)."""
import asyncio
import threading

import pytest

from ecc_mmdet.serving.app import read_token
from ecc_mmdet.serving.batching import DynamicBatcher, QueueFullError
from ecc_mmdet.serving.service import ServingConfig


def test_batches_group_by_key_respect_the_size_and_answer_each_item():
    calls = []

    def fn(values):
        calls.append(list(values))
        assert threading.current_thread().name.startswith('ecc-batch')  # off the event loop
        return [v * 10 for v in values]

    async def main():
        b = DynamicBatcher(fn, max_batch_size=3, max_wait_ms=50, max_queue=64)
        b.start()
        items = [('a', 1), ('b', 2), ('a', 3), ('a', 4), ('a', 5), ('b', 6)]
        out = await asyncio.gather(*(b.submit(k, v) for k, v in items))
        await b.stop()
        return out

    out = asyncio.run(main())
    assert [r for r, _ in out] == [10, 20, 30, 40, 50, 60]  # each its own answer, in order
    assert all(len(c) <= 3 for c in calls)
    for c in calls:  # never two keys in one batch
        assert set(c) <= {1, 3, 4, 5} or set(c) <= {2, 6}, c
    assert sorted(v for c in calls for v in c) == [1, 2, 3, 4, 5, 6]
    infos = [info for _, info in out]
    assert max(i.batch_size for i in infos) == 3 and all(i.queue_ms >= 0 for i in infos)


def test_a_full_queue_refuses_at_once_and_stop_drains_the_rest():
    release = threading.Event()

    def fn(values):
        release.wait(5)
        return values

    async def main():
        b = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit('k', 0))
        await asyncio.sleep(0.05)  # the first one now runs; two more fill the queue
        waiting = [asyncio.ensure_future(b.submit('k', i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await b.submit('k', 3)
        assert b.depth == 2
        release.set()
        await b.stop()  # finishes what was queued
        with pytest.raises(RuntimeError, match='not running'):
            await b.submit('k', 4)
        return [r for r, _ in await asyncio.gather(first, *waiting)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_failing_batch_fails_its_own_requests_only():
    def fn(values):
        if 'bad' in values:
            raise ValueError('boom')
        return values

    async def main():
        b = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0)
        b.start()
        res = await asyncio.gather(b.submit('k', 'bad'), b.submit('k', 'ok'),
                                   return_exceptions=True)
        await b.stop()
        return res

    bad, ok = asyncio.run(main())
    assert isinstance(bad, ValueError) and ok[0] == 'ok'


def test_serving_config_and_token_sources(tmp_path):
    assert ServingConfig.from_dict(None) == ServingConfig()
    cfg = ServingConfig.from_dict(dict(max_batch_size=2, ray=dict(num_replicas=3)))
    assert cfg.max_batch_size == 2  # the ray dict belongs to the Ray deployment
    with pytest.raises(ValueError, match=r"unknown serving option\(s\) \['max_batch'\]"):
        ServingConfig.from_dict(dict(max_batch=2))
    with pytest.raises(ValueError):
        DynamicBatcher(lambda v: v, max_batch_size=0)
    f = tmp_path / 'token'
    f.write_text('from-file\n')
    env = dict(ECC_SERVE_TOKEN='from-env', ECC_SERVE_TOKEN_FILE=str(f))
    assert read_token(env, None) == 'from-file'
    assert read_token({'ECC_SERVE_TOKEN': ' from-env '}) == 'from-env'
    with pytest.raises(ValueError, match='no bearer token'):
        read_token({})
    assert read_token({}, allow_none=True) is None
    (tmp_path / 'empty').write_text('\n')
    with pytest.raises(ValueError, match='is empty'):
        read_token({}, str(tmp_path / 'empty'))
