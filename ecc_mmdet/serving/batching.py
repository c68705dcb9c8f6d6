"""Dynamic batching with a bounded queue, for the cloud server.

Requests wait at most ``max_wait_ms`` for others with the same key (payloads that decode to the
same feature shape) and run together, up to ``max_batch_size``; the model runs on one worker
thread, so the event loop keeps accepting, refusing and answering requests meanwhile. When
``max_queue`` requests are waiting, :meth:`DynamicBatcher.submit` raises :class:`QueueFullError`
at once (the server answers 503 with Retry-After): a request is answered or refused, never
dropped.
"""
import asyncio
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, List, NamedTuple, Sequence

__all__ = ['BatchInfo', 'DynamicBatcher', 'QueueFullError']


class QueueFullError(RuntimeError):
    """The batcher's queue is full; retry later."""


class BatchInfo(NamedTuple):
    queue_ms: float  # from submit to the start of its batch
    batch_size: int
    batch_ms: float  # wall time of the whole batch


class _Item:
    __slots__ = ('value', 'future', 't_submit')

    def __init__(self, value, future):
        self.value, self.future, self.t_submit = value, future, time.perf_counter()


class DynamicBatcher:
    """Groups submitted items by key and runs ``fn(list of values) -> list of results``.

    Args:
        fn: the batch function (runs on a single worker thread).
        max_batch_size: most items per call of ``fn`` (1 disables batching).
        max_wait_ms: how long the first item of a batch waits for more.
        max_queue: most items waiting (not yet running) before ``submit`` refuses.
    """

    def __init__(self, fn: Callable[[List[Any]], Sequence[Any]], max_batch_size: int = 8,
                 max_wait_ms: float = 5.0, max_queue: int = 64):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError('max_batch_size and max_queue must be >= 1, max_wait_ms >= 0')
        self.fn = fn
        self.max_batch_size, self.max_wait_s = int(max_batch_size), max_wait_ms / 1e3
        self.max_queue = int(max_queue)
        self._queues: 'OrderedDict[Hashable, deque]' = OrderedDict()
        self._depth = 0
        self._wakeup = None
        self._task = None
        self._executor = None
        self._closing = False
        self.batches_run = 0

    @property
    def depth(self) -> int:
        """Items waiting (not yet running)."""
        return self._depth

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    def start(self) -> None:
        """Start the worker on the running event loop (idempotent)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix='ecc-batch')
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued item, then stop the worker."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, value) -> tuple:
        """-> (result, BatchInfo). Raises QueueFullError when the queue is full, RuntimeError
        when stopping, and whatever ``fn`` raised for this batch."""
        if self._closing or self._task is None:
            raise RuntimeError('the batcher is not running')
        if self._depth >= self.max_queue:
            raise QueueFullError(f'{self._depth} requests waiting (max {self.max_queue})')
        item = _Item(value, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(item)
        self._depth += 1
        self._wakeup.set()
        return await item.future

    def _take(self, key) -> List[_Item]:
        q = self._queues[key]
        batch = [q.popleft() for _ in range(min(len(q), self.max_batch_size))]
        if not q:
            del self._queues[key]
        self._depth -= len(batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, q = next(iter(self._queues.items()))  # oldest key first
            deadline = q[0].t_submit + self.max_wait_s
            while (len(self._queues.get(key, ())) < self.max_batch_size and not self._closing
                   and time.perf_counter() < deadline):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(),
                                           max(0.0, deadline - time.perf_counter()))
                except asyncio.TimeoutError:
                    break
            batch = self._take(key)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn,
                                                     [it.value for it in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f'batch function returned {len(results)} results for '
                                       f'{len(batch)} items')
                error = None
            except Exception as e:  # every waiter of this batch gets the error
                error, results = e, [None] * len(batch)
            ms = (time.perf_counter() - t0) * 1e3
            self.batches_run += 1
            for it, res in zip(batch, results):
                if it.future.done():  # the client went away
                    continue
                if error is not None:
                    it.future.set_exception(error)
                else:
                    it.future.set_result(
                        (res, BatchInfo((t0 - it.t_submit) * 1e3, len(batch), ms)))
