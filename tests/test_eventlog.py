"""The one event log (core/eventlog.py) the supervisor and the server client share."""

import asyncio
import logging

from loquilex_nb.core.eventlog import EventLog
from loquilex_nb.core.events import Event


def ev(seq, type_="status", **kw):
    return Event(type_, "s1", seq, 0.0, 0.0, **kw)


def test_bounded_log_keeps_finals_and_says_what_fell_out():
    log = EventLog(capacity=3)
    for seq, type_ in enumerate(["asr.partial", "asr.final", "asr.revision", "asr.partial", "status"], start=1):
        log.append(ev(seq, type_, segment_id=1, text=f"t{seq}"))
    assert [e.seq for e in log.events] == [3, 4, 5] and log.last_seq == 5
    assert [e.seq for e in log.finals] == [2] and [e.seq for e in log.revisions] == [3]
    assert log.partial.seq == 4
    assert log.after(0) == (list(log.events), True)  # 1 and 2 are gone
    assert log.after(2) == (list(log.events), False)
    assert log.after(4) == ([log.events[-1]], False) and log.after(5) == ([], False)


def test_seqs_may_skip_where_a_gap_lost_some():
    log = EventLog()
    for seq in (1, 2, 7, 8):  # a client resumed past 3..6
        log.append(ev(seq))
    assert [e.seq for e in log.after(2)[0]] == [7, 8] and log.after(2)[1] is True
    assert [e.seq for e in log.after(7)[0]] == [8] and log.after(7)[1] is False


def test_a_failing_subscriber_does_not_stop_the_others(caplog):
    log = EventLog()
    seen = []

    def broken(e):
        raise RuntimeError("boom")

    unsubscribe = log.subscribe(broken)
    log.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="loquilex_nb"):
        log.append(ev(1))
    assert [e.seq for e in seen] == [1] and "subscriber failed" in caplog.text
    unsubscribe()
    unsubscribe()  # idempotent
    log.append(ev(2))
    assert [e.seq for e in seen] == [1, 2] and log.events[-1].seq == 2


def test_a_reader_wakes_on_the_event_itself():
    """No timeout given: only the append can end the wait, and it does at once."""

    async def main():
        log = EventLog()
        loop = asyncio.get_running_loop()
        appended_at = []

        def publish():
            appended_at.append(loop.time())
            log.append(ev(1))

        loop.call_later(0.3, publish)
        events, gap = await asyncio.wait_for(log.next_after(0, None, lambda: False), 10)
        woke = loop.time()
        assert [e.seq for e in events] == [1] and not gap
        return woke - appended_at[0]

    assert asyncio.run(main()) < 0.1


def test_a_reader_of_an_ended_session_returns_at_once_and_a_deadline_holds():
    async def main():
        log = EventLog()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await log.next_after(0, None, lambda: True) == ([], False)
        assert loop.time() - t0 < 0.1
        t0 = loop.time()
        assert await log.next_after(0, 0.2, lambda: False) == ([], False)
        assert loop.time() - t0 >= 0.19
        ended = []
        loop.call_later(0.1, lambda: (ended.append(True), log.notify()))
        assert await asyncio.wait_for(log.next_after(0, None, lambda: bool(ended)), 10) == ([], False)

    asyncio.run(main())
