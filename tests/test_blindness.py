"""The blind-listener rule, pure: a proposal a reconcile pass recorded first that the live listener never
logged once it processed a later block is a miss; a reconnect forgives; the listener recording a proposal
itself again ends the blindness."""

from __future__ import annotations

from listener.blindness import BlindWatch, ListenerProgress, after_scan, due, judge


def live(head: int, recorded: int = 0, epoch: int = 0) -> ListenerProgress:
    return ListenerProgress(live=True, epoch=epoch, head_block=head, proposals_recorded=recorded)


def test_a_proposal_the_listener_never_logged_is_missed_once_it_is_past_the_block() -> None:
    watch = after_scan(BlindWatch(), [4, 5], read_block=10, listener=live(10))
    assert due(watch, live(10)) == ()  # the listener may not have processed block 10's logs yet
    watch = judge(watch, live(10), logged=set())
    assert watch.pending and not watch.blind
    assert due(watch, live(11)) == (4, 5)
    watch = judge(watch, live(11), logged={4})
    assert watch.missed_total == 1 and watch.blind and "5" in (watch.blind_reason or "")
    assert not watch.pending


def test_proposals_the_listener_logged_itself_are_no_miss() -> None:
    watch = after_scan(BlindWatch(), [4], read_block=10, listener=live(10))
    watch = judge(watch, live(12), logged={4})
    assert watch == BlindWatch()


def test_nothing_is_judged_across_a_reconnect_or_while_the_listener_is_down() -> None:
    down = ListenerProgress(live=False, epoch=0, head_block=9, proposals_recorded=0)
    assert after_scan(BlindWatch(), [4], read_block=10, listener=down) == BlindWatch()
    watch = after_scan(BlindWatch(), [4], read_block=10, listener=live(10, epoch=1))
    assert judge(watch, live(20, epoch=2), logged=set()) == BlindWatch()  # its backfill covered block 10


def test_blindness_ends_when_the_listener_records_a_proposal_itself() -> None:
    watch = judge(after_scan(BlindWatch(), [4], 10, live(10, recorded=3)), live(11, recorded=3), logged=set())
    assert watch.blind
    assert judge(watch, live(30, recorded=3), logged=set()).blind
    seeing = judge(watch, live(31, recorded=4), logged=set())
    assert not seeing.blind and seeing.missed_total == 1
