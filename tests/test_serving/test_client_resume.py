"""The edge client never loses an answered image: a real server on a fixed loopback port is
killed (SIGKILL) while ``tools/edge_client.py`` streams 8 images and comes back later than the
old 6 attempts (3-6 s of back-off) allowed: the run finishes within ``--retry-for`` with every
image once and the COCO file of an uninterrupted run. A server that stays away past
``--retry-for``: exit 3, the answered images saved (journal, partial COCO file), the rest
listed, and ``--resume`` sends only the rest. Back-off, ``Retry-After`` and the journal at unit
level with an injected clock (no sleeping)."""
import contextlib
import json
import os
import os.path as osp
import signal
import socket
import threading
import time

import httpx
import pytest

from serving_utils import TOKEN, cloud_server

OLD_GIVE_UP_S = 0.2 * (1 + 2 + 4 + 8 + 16)  # 6 attempts, longest back-off: 6.2 s
GATE_AT = 3  # the edge waits before this image until the server is gone


# ------------------------------------------------------------------ a server that comes back
class Restartable:
    """``tools/serve_cloud.py`` on one fixed loopback port, started and killed at will."""

    def __init__(self, served_model, tmp_path, port):
        self.model, self.tmp, self.port = served_model, tmp_path, port
        self.stack, self.proc = contextlib.ExitStack(), None
        self.url = f'http://127.0.0.1:{port}'

    def start(self) -> float:
        """Start and wait until ready -> seconds it took."""
        t0 = time.perf_counter()
        _, self.proc = self.stack.enter_context(cloud_server(
            self.model, self.tmp, '--cfg-options', 'serving.max_batch_size=1',
            '--port', self.port))  # one image a batch: answers independent of the timing
        return time.perf_counter() - t0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def detect_requests(self) -> float:
        text = httpx.get(self.url + '/metrics', timeout=10,
                         headers={'Authorization': f'Bearer {TOKEN}'}).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('ecc_requests_total{') and 'route="detect"' in line
                   and 'status="200"' in line)


@pytest.fixture(scope='module')
def server(served_model, tmp_path_factory):
    with socket.socket() as s:  # a free port now; the restarts bind it again (SO_REUSEADDR)
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    srv = Restartable(served_model, tmp_path_factory.mktemp('restartable'), port)
    with srv.stack:
        srv.startup_s = srv.start()
        yield srv


@pytest.fixture(scope='module')
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('token') / 'token'
    path.write_text(TOKEN)
    return str(path)


@pytest.fixture(scope='module')
def reference(served_model, server, token_file, tmp_path_factory):
    """The COCO file of an uninterrupted run over the 8 train images."""
    import edge_client
    out = tmp_path_factory.mktemp('reference') / 'results.json'
    assert edge_client.main(client_args(served_model, server, token_file, out)) == 0
    return json.loads(out.read_text())


def client_args(served_model, server, token_file, out, *extra):
    return [served_model['config'], served_model['checkpoint'], '--server', server.url,
            '--source', osp.join(served_model['data_root'], 'train'), '--token-file',
            token_file, '--concurrency', '2', *(['--out', str(out)] if out else []),
            *map(str, extra)]


class Gated:
    """The edge runner, holding image ``GATE_AT`` until ``gate`` is set."""

    def __init__(self, runner, gate):
        self.runner, self.gate = runner, gate

    def process(self, image, img_id):
        if img_id == GATE_AT:
            assert self.gate.wait(60)
        return self.runner.process(image, img_id)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def run_killing_the_server(monkeypatch, server, journal, argv, then):
    """Run the client on a thread; once images 0..GATE_AT-1 are in ``journal``, SIGKILL the
    server, let the edge go on and call ``then()`` -> (exit status, seconds down)."""
    import edge_client
    gate, status = threading.Event(), []
    build = edge_client.build_runner
    monkeypatch.setattr(edge_client, 'build_runner', lambda args: Gated(build(args), gate))
    client = threading.Thread(target=lambda: status.append(edge_client.main(argv)))
    client.start()
    try:
        t_end = time.perf_counter() + 60
        while answered(journal) < GATE_AT and client.is_alive() and time.perf_counter() < t_end:
            time.sleep(0.02)
        assert answered(journal) == GATE_AT, 'the client did not answer the first images'
        server.kill()
        t_kill = time.perf_counter()
        gate.set()
        down = then(t_kill)
    finally:
        gate.set()
        client.join(120)
    assert not client.is_alive()
    return status[0], down


def answered(journal) -> int:
    if not osp.exists(journal):
        return 0
    with open(journal) as f:
        return sum('"img_id"' in line for line in f)


def journal_records(journal):
    with open(journal) as f:
        lines = [json.loads(line) for line in f]
    assert lines[0]['format'].startswith('ecc-edge-client-journal')
    return [r for r in lines[1:] if 'img_id' in r]


# -------------------------------------------------------------------------------- the tests
def test_server_killed_and_back_later_than_the_old_retries(served_model, server, reference,
                                                           token_file, tmp_path, monkeypatch):
    out = tmp_path / 'results.json'
    journal = str(tmp_path / 'results.jsonl')  # the default journal next to --out

    def restart(t_kill):
        # down for longer than the old client waited: the restart itself takes about as long
        # as the first start did
        time.sleep(max(0.5, OLD_GIVE_UP_S + 0.5 - 0.5 * server.startup_s))
        server.start()
        return time.perf_counter() - t_kill

    status, down = run_killing_the_server(monkeypatch, server, journal, client_args(
        served_model, server, token_file, out, '--retry-for', 60), restart)
    print(f'startup {server.startup_s:.1f} s, down {down:.1f} s')
    assert down > OLD_GIVE_UP_S
    assert status == 0
    records = journal_records(journal)
    assert sorted(r['img_id'] for r in records) == list(range(8))  # each image once
    assert json.loads(out.read_text()) == reference
    assert sum(r['answer']['retries'] for r in records) > 0  # the kill was felt
    assert not osp.exists(tmp_path / 'results.missing.json')


def test_give_up_then_resume_sends_only_the_rest(served_model, server, reference, token_file,
                                                 tmp_path, monkeypatch, capsys):
    import edge_client
    out, journal = tmp_path / 'results.json', str(tmp_path / 'run.jsonl')
    argv = client_args(served_model, server, token_file, out, '--journal', journal)
    t0 = time.perf_counter()
    status, _ = run_killing_the_server(monkeypatch, server, journal,
                                       argv + ['--retry-for', '2'], lambda t: None)
    assert status == edge_client.EXIT_GAVE_UP == 3 and time.perf_counter() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('error: ') and 'gave up after' in err and '--resume' in err
    assert f'{GATE_AT} images answered' in err and TOKEN not in err
    answered_ids = sorted(r['img_id'] for r in journal_records(journal))
    assert answered_ids == list(range(GATE_AT))
    assert json.loads(out.read_text()) == [r for r in reference
                                           if r['image_id'] in answered_ids]
    missing = json.loads((tmp_path / 'results.missing.json').read_text())
    assert [m['img_id'] for m in missing['missing']] == list(range(GATE_AT, 8))
    assert missing['complete'] and missing['answered'] == GATE_AT

    monkeypatch.undo()  # no gate any more
    server.start()
    before = server.detect_requests()
    assert edge_client.main(argv + ['--resume']) == 0
    assert server.detect_requests() - before == 8 - GATE_AT  # the answered ones not re-sent
    assert json.loads(out.read_text()) == reference
    assert sorted(r['img_id'] for r in journal_records(journal)) == list(range(8))
    assert not osp.exists(tmp_path / 'results.missing.json')
    assert '3 from the journal' in capsys.readouterr().out

    # a journal of another run is refused, in one line, before anything is sent
    other = tmp_path / 'other.py'
    other.write_text(open(served_model['config']).read() + '\n# edited\n')
    argv[0] = str(other)
    assert edge_client.main(argv + ['--resume']) == edge_client.EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err
    assert 'written for another run: its config is config.py' in err
    assert server.detect_requests() - before == 8 - GATE_AT
    # a run that writes no file keeps its answers in memory only
    files = set(os.listdir(tmp_path))
    assert edge_client.main(client_args(served_model, server, token_file, None,
                                        '--max-images', 2)) == 0
    assert '2 images, 2 offloaded' in capsys.readouterr().out
    assert set(os.listdir(tmp_path)) == files


# ------------------------------------------------------------------------- unit: the retries
def test_backoff_full_jitter_and_retry_after():
    from ecc_edge.client import backoff_delay
    assert [backoff_delay(k, None, 60, 0.2, 5.0, u=1.0) for k in range(7)] == \
        pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])  # capped exponential
    assert backoff_delay(3, None, 60, 0.2, 5.0, u=0.25) == pytest.approx(0.4)  # full jitter
    assert backoff_delay(10**6, None, 60, 0.2, 5.0, u=0.5) == 2.5  # no overflow
    # Retry-After: at least that long (plus jitter), past the cap, but never past the budget
    assert backoff_delay(0, 7.0, 60, 0.2, 5.0, u=0.5) == pytest.approx(7.1)
    assert backoff_delay(0, 7.0, 60, 0.2, 5.0, u=0.0) == 7.0
    assert backoff_delay(0, 7.0, 2.5, 0.2, 5.0, u=0.9) == 2.5
    assert backoff_delay(2, None, -1.0) == 0.0


class FakeTime:
    """A clock that only the injected sleep moves."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def scripted_client(script, retry_for=60.0, **kw):
    """A CloudClient on a mock transport answering from ``script`` (status, headers) or
    'refuse' (connection refused); returns (client, fake time, attempts seen)."""
    from ecc_edge.client import CloudClient
    clock, seen = FakeTime(), []

    def handler(request):
        seen.append(request.headers['idempotency-key'])
        step = script[min(len(seen), len(script)) - 1]
        if step == 'refuse':
            raise httpx.ConnectError('connection refused', request=request)
        status, headers = step
        body = dict(detections=[], image_size=[4, 4]) if status == 200 else \
            dict(error='Busy', detail='later')
        return httpx.Response(status, headers=headers, json=body)

    client = CloudClient('http://127.0.0.1:9', TOKEN, retry_for=retry_for, clock=lambda:
                         clock.now, sleep=clock.sleep, **kw)
    client._http = httpx.Client(base_url=client.base_url,
                                transport=httpx.MockTransport(handler))
    return client, clock, seen


def test_retry_after_is_waited_and_the_budget_caps_it():
    from ecc_edge.client import CloudUnavailableError
    busy = (503, {'Retry-After': '2'})
    client, clock, seen = scripted_client([busy, busy, (200, {})])
    assert client.send(b'x', 'img-1')['retries'] == 2
    assert len(clock.sleeps) == 2  # at least as asked, at most that + the back-off step
    assert all(2.0 <= s <= 2.0 + 0.2 * 2**k for k, s in enumerate(clock.sleeps))
    assert seen == ['img-1'] * 3
    # a 3 s budget: 2 s as asked, then only what is left (1 s), one last attempt, give up
    client, clock, seen = scripted_client([busy], retry_for=3.0)
    with pytest.raises(CloudUnavailableError, match='gave up after 3 attempts in 3.0 s') as e:
        client.send(b'x', 'img-2')
    assert e.value.status == 503 and len(seen) == 3
    assert clock.sleeps[0] >= 2.0 and sum(clock.sleeps) == pytest.approx(3.0)


@pytest.mark.parametrize('status', [408, 429, 502, 503, 504])
def test_transient_answers_are_retried_for_the_budget_not_a_count(status):
    client, clock, seen = scripted_client(['refuse'] * 20 + [(status, {})] * 20 + [(200, {})],
                                          max_delay_s=0.5)
    answer = client.send(b'x', 'img-3')
    assert answer['retries'] == 40 and len(seen) == 41  # far more than the old 6 attempts
    assert max(clock.sleeps) <= 0.5 and sum(clock.sleeps) < 60


@pytest.mark.parametrize('status', [400, 401, 403, 404, 409, 413, 422, 500])
def test_final_refusals_are_not_retried(status):
    from ecc_edge.client import CloudRequestError, CloudUnavailableError
    client, clock, seen = scripted_client([(status, {'Retry-After': '1'})])
    with pytest.raises(CloudRequestError) as e:
        client.send(b'x', 'img-4')
    assert not isinstance(e.value, CloudUnavailableError)
    assert e.value.status == status and len(seen) == 1 and not clock.sleeps


def test_abort_stops_the_other_retries():
    from ecc_edge.client import CloudUnavailableError
    client, clock, seen = scripted_client(['refuse'])
    client._sleep = lambda s: client.abort()  # another request gives up during the wait
    with pytest.raises(CloudUnavailableError, match='retries stopped'):
        client.send(b'x', 'img-5')
    assert len(seen) == 1


# ------------------------------------------------------------------------- unit: the journal
def test_journal_torn_lines_duplicates_and_another_run(tmp_path):
    from ecc_edge.journal import Journal, JournalError
    path = str(tmp_path / 'j.jsonl')
    run = dict(checkpoint='sha256:' + 'a' * 64, source='4 images')
    j = Journal(path, run, resume=True, names=dict(checkpoint='a.pth')).open()
    assert j.add(dict(pos=1, img_id=11, answer=1)) and j.add(dict(pos=0, img_id=10, answer=0))
    assert not j.add(dict(pos=1, img_id=11, answer=2))  # answered twice: kept once
    j.close()
    with open(path, 'a') as f:
        f.write('{"pos": 2, "img_id": 12, "ans')  # a kill in the middle of a line
    j = Journal(path, run, resume=True)
    assert [r['img_id'] for r in j.records()] == [10, 11] and j.resumed == 2
    j.open().add(dict(pos=2, img_id=12, answer=2))
    j.close(done=True)
    lines = open(path).read().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)  # torn line cut off
    assert [r['answer'] for r in Journal(path, run, resume=True).records()] == [0, 1, 2]

    with pytest.raises(JournalError, match=r'its checkpoint is a.pth \(sha256:aaaaaaaaaaaa'
                                           r'\.\.\.\), this run\'s is b.pth'):
        Journal(path, dict(run, checkpoint='sha256:' + 'b' * 64), resume=True,
                names=dict(checkpoint='b.pth'))
    assert Journal(path, run, resume=False).replaced is None  # finished: replaced silently
    (tmp_path / 'results.json').write_text('[]')
    for resume in (True, False):  # never overwrite what is not a journal
        with pytest.raises(JournalError, match='not an edge client journal'):
            Journal(str(tmp_path / 'results.json'), run, resume=resume)
    os.remove(path)
    assert Journal(path, run, resume=True).resumed == 0  # nothing to resume: a fresh start
    memory = Journal(None, {}, resume=False).open()  # a run that writes no file
    assert memory.add(dict(pos=0, img_id=1)) and not memory.add(dict(pos=0, img_id=1))
    memory.close(done=True)
    assert [r['img_id'] for r in memory.records()] == [1]
