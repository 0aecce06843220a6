"""A cell's link to its parent: the hello handshake, and reconnecting when it drops.

A child introduces itself with a hello frame naming its FQCN and carrying a
fresh nonce; the parent answers hello_ok (the name is now routed to this
link) or hello_rejected with the reason. A parent that wants the child to
prove a secret first answers with a challenge, and the child's proof comes
before hello_ok (see `fl_core.cell.proof`). When an established parent link closes and the cell is
not closing, a `ParentLink` with `reconnect=True` keeps trying, with
exponential backoff, on one thread of its own, until it is back: routing
through the parent then resumes by itself. That thread ends when the link
is back or the cell closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final

from fl_core.cell.message import Header
from fl_core.cell.proof import CHALLENGE, NONCE, PROOF, PROVE, new_nonce, proof_matches, prove
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.transport import Connection, Frame

if TYPE_CHECKING:
    from fl_core.cell.links import Links

log = logging.getLogger("fl_core.cell")

CONTROL: Final = "ctl"
HELLO: Final = "hello"
HELLO_OK: Final = "hello_ok"
HELLO_REJECTED: Final = "hello_rejected"
DIRECT: Final = "direct"
"""Set in a hello that opens a direct link rather than joining the tree."""

BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 2.0


class ParentLink:
    """Connects `links` to the parent at `url`, and reconnects after a loss if asked to.

    With a `key`, the parent must ask the child to prove it, and must prove
    it holds the same key itself: a parent that does not is refused.
    """

    def __init__(
        self, links: Links, url: str, timeout: float, reconnect: bool, key: bytes | None = None
    ) -> None:
        self._links = links
        self.url = url
        self._key = key
        self._timeout = timeout
        self._reconnect = reconnect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """One attempt: connect and say hello; raises as `Cell.connect_parent` documents."""
        links = self._links

        def accepted(conn: Connection, frame: Frame) -> Frame:
            # Before anything else arrives on this link: the parent may send a
            # request right after accepting us, and its reply must find the way up.
            links.set_parent(conn)
            return frame

        introduce(
            links,
            self.url,
            self._timeout,
            {CONTROL: HELLO, Header.ORIGIN: links.fqcn},
            accepted=accepted,
            deliver=links.from_parent,
            parent=True,
            refused=f"{self.url} refused cell {links.fqcn!r}",
            key=self._key,
        )

    def lost(self) -> None:
        """The established link closed: start reconnecting (if asked to and not closing)."""
        if not self._reconnect or self._stop.is_set():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"fl-reconnect-{self._links.fqcn}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        delay = BACKOFF_START
        log.warning("%s: lost its parent at %s; reconnecting", self._links.fqcn, self.url)
        while not self._stop.wait(delay):
            try:
                self.connect()
            except CellError as exc:
                log.info("%s: reconnecting to %s failed: %s", self._links.fqcn, self.url, exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            log.warning("%s: reconnected to its parent at %s", self._links.fqcn, self.url)
            return

    def close(self) -> None:
        """Stop reconnecting; waits for the reconnecting thread to end."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._timeout + 5.0)


def connect_direct(links: Links, url: str, timeout: float, key: bytes) -> str:
    """Open a direct link from `links` to the cell listening at `url`; returns its name.

    The two cells need not be parent and child: messages between them then
    take this link instead of the tree, and the cells on the tree's path
    never see them. Only the two ends use it: each end takes from it only
    what the other end sends to it (no relaying through a direct link, and
    no one speaks for anyone else over it). The far end admits it only if
    it accepts direct links and this cell proves it holds the `key` the far
    end expects for its name (the far end proves the same in turn), and
    neither end takes a name from its own subtree or one of its ancestors.
    If the link closes, routing falls back to the tree; it is not
    reconnected.
    """
    state: dict[str, str] = {}

    def accepted(conn: Connection, frame: Frame) -> Frame:
        name = frame.headers.get(Header.ORIGIN, "")
        if not links.add_direct(name, conn):
            return Frame({CONTROL: HELLO_REJECTED, Header.ERROR: f"bad peer {name!r}"})
        state["name"] = name
        return frame

    def deliver(conn: Connection, frame: Frame) -> None:
        peer = state.get("name")
        if peer is not None:  # nothing is taken before the far end introduced itself
            links.from_direct(conn, peer, frame)

    introduce(
        links,
        url,
        timeout,
        {CONTROL: HELLO, Header.ORIGIN: links.fqcn, DIRECT: "1"},
        accepted=accepted,
        deliver=deliver,
        parent=False,
        refused=f"{url} refused a direct link from {links.fqcn!r}",
        key=key,
    )
    return state["name"]


def introduce(
    links: Links,
    url: str,
    timeout: float,
    hello: dict[str, str],
    *,
    accepted: Callable[[Connection, Frame], Frame],
    deliver: Callable[[Connection, Frame], None],
    parent: bool,
    refused: str,
    key: bytes | None = None,
) -> None:
    """Connect to `url`, send `hello`, answer a challenge, and wait for the answer.

    If the far end challenges, this cell proves `key` (without a key it
    gives up: it was not given the credential asked for). With a `key`, the
    far end must challenge and then prove the key in its `hello_ok`, or it
    is refused. `accepted(conn, hello_ok)` runs on the transport's thread as
    the answer arrives, before any other frame of the link is delivered,
    and may turn it into a refusal; `deliver` gets every later frame.
    Raises `TargetUnreachableError` if there is no answer within `timeout`,
    and `CellError` (starting with `refused`) if the far end says no or
    does not prove itself.
    """
    conn = links.transport.connect(url, timeout)
    answer: Future[Frame] = Future()
    # The answer and the timeout race (the answer may arrive on the
    # transport's thread while this one gives up): whichever takes this lock
    # first decides. A hello_ok after giving up must not register the closed
    # link (a link left behind, and its close would start a reconnect thread
    # that outlives the failed call).
    decided = threading.Lock()
    hello = {**hello, NONCE: new_nonce()}
    direct = bool(hello.get(DIRECT))
    challenge: dict[str, str] = {}

    def refusal(problem: str) -> Frame:
        return Frame({CONTROL: HELLO_REJECTED, Header.ERROR: problem})

    def proven(frame: Frame) -> Frame:
        """`frame` (a hello_ok) if the far end proved what it had to, else a refusal."""
        if key is None:
            return frame
        if not challenge:
            return refusal("it did not ask for this cell's credential, so it cannot prove its own")
        expected = prove(
            key,
            "listening",
            joining=links.fqcn,
            listening=challenge["name"],
            direct=direct,
            nonces=(hello[NONCE], challenge["nonce"]),
        )
        if frame.headers.get(Header.ORIGIN) != challenge["name"] or not proof_matches(
            expected, frame.headers.get(PROOF, "")
        ):
            return refusal("it did not prove that it holds the credential")
        return frame

    def on_challenge(frame: Frame) -> Frame | None:
        """Answer a challenge; a frame to end the wait with if this cell cannot."""
        if challenge:
            return refusal("it sent a second challenge")
        if key is None:
            return refusal(f"it asks for a credential that {links.fqcn!r} was not given")
        name, nonce = frame.headers.get(Header.ORIGIN, ""), frame.headers.get(NONCE, "")
        if not name or not nonce:
            return refusal("its challenge names no cell or no nonce")
        challenge.update(name=name, nonce=nonce)
        joining = prove(
            key,
            "joining",
            joining=links.fqcn,
            listening=name,
            direct=direct,
            nonces=(hello[NONCE], nonce),
        )
        conn.send(Frame({CONTROL: PROVE, PROOF: joining}))
        return None

    def on_frame(frame: Frame) -> None:
        control = frame.headers.get(CONTROL)
        if control in (HELLO_OK, HELLO_REJECTED, CHALLENGE):
            with decided:
                if answer.done():
                    return  # too late, or a second answer
                if control == CHALLENGE:
                    try:
                        result = on_challenge(frame)
                    except CellError as exc:  # the link closed under the proof
                        result = refusal(str(exc))
                    if result is not None:
                        answer.set_result(result)
                    return
                if control == HELLO_OK:
                    frame = proven(frame)
                    if frame.headers.get(CONTROL) == HELLO_OK:
                        frame = accepted(conn, frame)
                answer.set_result(frame)
            return
        deliver(conn, frame)

    links.start(conn, on_frame, parent=parent)
    conn.send(Frame(hello))
    try:
        frame = answer.result(timeout)
    except TimeoutError:
        with decided:
            gave_up = answer.cancel()
        if gave_up:
            conn.close()
            raise TargetUnreachableError(url, f"no answer to hello within {timeout:g} s") from None
        frame = answer.result()  # it came as the wait ended
    if frame.headers.get(CONTROL) == HELLO_REJECTED:
        conn.close()
        raise CellError(f"{refused}: {frame.headers.get(Header.ERROR, '')}")
