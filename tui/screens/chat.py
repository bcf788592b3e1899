"""The main screen: room tabs, member sidebar, status line and input.

Network events arrive as `RoomEvent`/`LinkChanged` messages posted by the link workers; this
screen turns them into log lines, sidebar updates and tab badges. It never touches a socket.
"""

from __future__ import annotations

import time
from itertools import count
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, TabbedContent
from textual.worker import Worker, WorkerState

from shared.protocol import Event, room_error, sender_label
from shared.sanitize import one_line
from tui.client.commands import (
    COMMANDS,
    Command,
    CommandError,
    is_command,
    literal,
    parse,
)
from tui.client.events import describe
from tui.client.link import Backoff, LinkFailed, RoomLink, State, Status
from tui.client.room import Effects, mentions
from tui.http_api import ApiError, list_rooms
from tui.lines import LineFormatter
from tui.messages import LinkChanged, RoomEvent
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.register import RegisterScreen, SendRefused
from tui.widgets.chat_input import ChatInput
from tui.widgets.chat_log import ChatLog
from tui.widgets.member_list import MemberList
from tui.widgets.room_pane import RoomPane
from tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from tui.app import ChatApp

HISTORY_PAGE = 100
UNREAD_TAG = "unread"
DM_PROMPT_TAG = "dm-prompt"
# A link worker that failed (a bug, not the network) is started again after this many seconds.
RESTART_DELAY = 2.0
# Events that are not the room's own and so do not end its replay.
_AFTER_REPLAY_WAITS = frozenset({"dm", "dm_request", "dm_accepted", "dm_declined", "read"})

# The status line shows the most pressing state; a room that gave up (kicked, refused) only
# counts as offline when no other room is connected.
_STATE_RANK = {State.OFFLINE: 0, State.CONNECTED: 1, State.CONNECTING: 2, State.RECONNECTING: 3}


def _ends_replay(event: Event) -> bool:
    """The room's own event, not a replayed message: the replay is over (or was cut short)."""
    kind = event.get("type")
    return kind not in _AFTER_REPLAY_WAITS and not (kind == "message" and event.get("replay"))


def _may_hold_password(line: str) -> bool:
    """`/register something`: the something may be a password typed in the wrong place, so the
    line is refused and never kept in the input history."""
    head, _, rest = line.strip().partition(" ")
    return head.lower() == "/register" and bool(rest.strip())


class ChatScreen(Screen[None]):
    BINDINGS = [  # noqa: RUF012
        Binding("ctrl+n", "cycle_tab(1)", "Next tab", id="next_tab"),
        Binding("ctrl+p", "cycle_tab(-1)", "Prev tab", id="prev_tab"),
        # Ctrl+G arrives intact in every terminal; Alt needs one that sends ESC for Alt (tmux,
        # screen, GNOME, xterm with metaSendsEscape, macOS with Option as Meta). Alt keys are
        # priority: otherwise the input takes Alt+A's character and types an `a`.
        Binding("ctrl+g,alt+a", "next_mention", "Next mention", id="next_mention", priority=True),
        Binding("pageup", "page(-1)", "Older", show=False, id="page_up"),
        Binding("pagedown", "page(1)", "Newer", show=False, id="page_down"),
        *[
            Binding(
                f"alt+{n}", f"goto_tab({n})", f"Tab {n}", show=False, id=f"tab_{n}", priority=True
            )
            for n in range(1, 10)
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.panes: dict[str, RoomPane] = {}
        self.links: dict[str, RoomLink] = {}
        self.link_workers: dict[str, Worker[None]] = {}
        self.statuses: dict[str, Status] = {}
        self.seen_dms: set[object] = set()
        self._retry_at: dict[str, float] = {}
        self._down: set[str] = set()
        self._dm_opens: set[str] = set()
        self._register: RegisterScreen | None = None
        self._register_room: str | None = None
        self._read_timers: dict[str, Timer] = {}
        self._ids = count(1)

    @property
    def chat(self) -> ChatApp:
        return cast("ChatApp", self.app)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="main"):
            yield TabbedContent(id="tabs")
            yield MemberList(id="members")
        yield ChatInput(
            self.chat.input_history,
            self._completion_names,
            [*COMMANDS],
            id="input",
        )
        yield Footer()

    def on_mount(self) -> None:
        self._show_status()
        for room in self.chat.rooms:
            self.open_room(room)
        self.set_interval(1.0, self._tick_status)
        self.query_one(ChatInput).focus()

    # -- panes ------------------------------------------------------------------------------------

    @property
    def formatter(self) -> LineFormatter:
        return LineFormatter(self.chat.config.timestamp_format, self.app.current_theme.dark)

    @property
    def me(self) -> str | None:
        return self.chat.identity.name

    def active_pane(self) -> RoomPane | None:
        pane = self.query_one(TabbedContent).active_pane
        return pane if isinstance(pane, RoomPane) else None

    def _add_pane(self, key: str, activate: bool) -> RoomPane:
        pane = self.panes.get(key)
        if pane is None:
            pane = RoomPane(key, f"pane-{next(self._ids)}", self.chat.config.max_lines)
            self.panes[key] = pane
            self.query_one(TabbedContent).add_pane(pane)
        if activate or len(self.panes) == 1:
            self.query_one(TabbedContent).active = pane.id or ""
        return pane

    def open_room(self, room: str, activate: bool = False) -> None:
        pane = self._add_pane(room, activate)
        if room in self.links:
            return
        link = RoomLink(
            self.chat.config.server,
            room,
            self.chat.identity,
            lambda event, request: self.post_message(RoomEvent(room, event, request)),
            lambda status: self.post_message(LinkChanged(status)),
            backlog=self.chat.config.backlog,
            backoff=Backoff(cap=self.chat.config.reconnect_max_seconds),
        )
        if not self.links and self.chat.wanted_name:
            # Queued before anything can be typed, so no line goes out under the old name.
            link.send({"type": "nick", "name": self.chat.wanted_name})
        self.links[room] = link
        self.link_workers[room] = self._run_link(link, pane)

    @work(group="links", exit_on_error=False)
    async def _run_link(self, link: RoomLink, pane: RoomPane) -> None:
        """Runs until cancelled or refused; any other exception is a bug, handled by
        `on_worker_state_changed` so the tab does not go silently dead."""
        try:
            await link.run()
        except LinkFailed as failed:
            pane.chat_log.write(self.formatter.error(str(failed)))
            if self.links.get(link.room) is link:
                # Kicked, closed or refused: nothing sent to this link would ever go out.
                del self.links[link.room]
                self.link_workers.pop(link.room, None)
                self.statuses[link.room] = Status(link.room, State.OFFLINE, detail=str(failed))
                self._show_status()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A link worker that raised: say so in its tab and start it again after a pause."""
        if event.state != WorkerState.ERROR:
            return
        room = next((r for r, w in self.link_workers.items() if w is event.worker), None)
        if room is None:
            return
        error = event.worker.error
        pane, link = self.panes.get(room), self.links.get(room)
        if pane is not None:
            what = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
            pane.chat_log.write(self.formatter.error(f"connection failed ({what}); restarting"))
        if link is not None:
            self.statuses[room] = Status(room, State.RECONNECTING, RESTART_DELAY, "client error")
            self._retry_at[room] = time.monotonic() + RESTART_DELAY
            self._show_status()
            self.set_timer(RESTART_DELAY, lambda: self._restart_link(room, link))

    def _restart_link(self, room: str, link: RoomLink) -> None:
        pane = self.panes.get(room)
        if self.links.get(room) is link and pane is not None:
            self.link_workers[room] = self._run_link(link, pane)

    def close_pane(self, pane: RoomPane) -> None:
        key = pane.key
        worker = self.link_workers.pop(key, None)
        if worker is not None:
            worker.cancel()
        self.links.pop(key, None)
        self.statuses.pop(key, None)
        timer = self._read_timers.pop(key, None)
        if timer is not None:
            timer.stop()
        del self.panes[key]
        self.query_one(TabbedContent).remove_pane(pane.id or "")
        self._show_status()

    def _relabel(self, pane: RoomPane) -> None:
        tabs = self.query_one(TabbedContent)
        if pane.id is not None and pane.parent is not None:
            tabs.get_tab(pane.id).label = pane.title_text()

    def _show_members(self) -> None:
        pane = self.active_pane()
        members = self.query_one(MemberList)
        dark = self.app.current_theme.dark
        if pane is None:
            members.show([], self.me, dark)
        elif pane.is_dm:
            members.show([name for name in (self.me, pane.peer) if name], self.me, dark, "Direct")
        else:
            members.show(sorted(pane.state.members), self.me, dark)

    def _completion_names(self) -> list[str]:
        pane = self.active_pane()
        if pane is None:
            return []
        return [pane.peer] if pane.is_dm else [n for n in pane.state.members if n != self.me]

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = self.active_pane()
        if pane is not None:
            pane.state.looked_at()
            self._relabel(pane)
            self._report_read(pane)
        self._show_members()
        self._show_status()

    # -- network events -------------------------------------------------------------------------

    def on_room_event(self, message: RoomEvent) -> None:
        event = message.event
        kind = event.get("type")
        pane = self.panes.get(message.room)
        if pane is not None and pane.after_replay and _ends_replay(event):
            self._after_replay(pane)
        if kind == "dm":
            self._dm(event, message.request)
        elif kind in ("dm_request", "dm_accepted", "dm_declined"):
            self._dm_consent(event)
        elif kind == "registered":
            self._registered(event, message.request)
        elif pane is None:
            return
        elif kind == "welcome":
            self._welcome(pane, event)
        elif kind == "message":
            self._message(pane, event)
        elif kind in ("join", "leave"):
            self._presence(pane, event)
        elif kind == "nick":
            self._nick(pane, event)
        elif kind == "members":
            self._members(pane, event)
        elif kind == "history":
            self._history(pane, event)
        elif kind == "error":
            self._error(pane, event, message.request)

        elif kind in ("topic", "kick", "closed", "private", "invited", "removed", "owner"):
            self._owner_event(pane, event)
        elif kind == "read":
            self._read(pane, event)
        elif kind == "announce":
            moment = self.chat.clock.local(event.get("ts"))
            pane.chat_log.write(self.formatter.announce(moment, str(event.get("text", ""))))

    def _welcome(self, pane: RoomPane, event: Event) -> None:
        fmt, clock = self.formatter, self.chat.clock
        effects = pane.state.apply(event, self.me)
        self._redraw(pane, effects)
        if effects.gap:
            pane.chat_log.write(fmt.gap())
        elif effects.joined:
            you = str(event.get("you", ""))
            pane.after_replay = [fmt.system(clock.now(), f"you joined #{pane.key} as {you}")]
            if isinstance(event.get("topic"), str):
                pane.after_replay.append(fmt.system(clock.now(), f"topic: {event['topic']}"))
            if event.get("private") is True:
                pane.after_replay.append(fmt.system(clock.now(), "this room is invite-only"))
            replay = event.get("replay")
            pane.replay_left = replay if isinstance(replay, int) and replay > 0 else 0
            if not pane.replay_left:
                self._after_replay(pane)
        self._show_members()
        self._show_status()

    def _after_replay(self, pane: RoomPane) -> None:
        """The replay is in (or something else came first): now say who joined."""
        for line in pane.after_replay:
            pane.chat_log.write(line)
        pane.after_replay, pane.replay_left = [], 0

    def _redraw(self, pane: RoomPane, effects: Effects) -> None:
        """What an event changed besides its own line: the tab label, the "seen by" line."""
        if effects.unread:
            self._relabel(pane)
        if effects.seen:
            pane.show_seen(pane.state.receipts.seen_by())

    def _day_line(self, pane: RoomPane, event: Event) -> None:
        moment = self.chat.clock.local(event.get("ts"))
        if pane.last_day is not None and moment.date() != pane.last_day:
            pane.chat_log.write(self.formatter.day(moment.date()))
        pane.last_day = moment.date()

    def _message(self, pane: RoomPane, event: Event) -> None:
        sender, text = sender_label(event), str(event.get("text", ""))
        effects = pane.state.apply(event, self.me)
        own, mention, live = effects.own, effects.mention, effects.live
        seq = event.get("seq")
        self._day_line(pane, event)
        if effects.count:
            self._count_unread(pane, mention, seq if isinstance(seq, int) else None)
        moment = self.chat.clock.local(event.get("ts"))
        pane.chat_log.write(self.formatter.message(moment, sender, text, own=own, mention=mention))
        self._redraw(pane, effects)
        if not live and pane.replay_left:
            pane.replay_left -= 1
            if not pane.replay_left:
                self._after_replay(pane)
        if live and mention:
            self._alert(f"{one_line(sender)} in #{one_line(pane.key)}", text, pane)
        if live:
            self._report_read(pane)

    def _count_unread(self, pane: RoomPane, mention: bool, seq: int | None = None) -> None:
        if pane is self.active_pane():
            return
        if pane.state.count_unread(mention, seq):
            pane.chat_log.remove_tag(UNREAD_TAG)
            pane.chat_log.write(self.formatter.unread_marker(), tag=UNREAD_TAG)
        self._relabel(pane)

    # -- read markers ---------------------------------------------------------------------------

    def _read(self, pane: RoomPane, event: Event) -> None:
        self._redraw(pane, pane.state.apply(event, self.me))

    def _report_read(self, pane: RoomPane) -> None:
        """Tell the relay what the user has seen: the active room's newest message, in view.

        At most one report per room per `READ_INTERVAL`; a report held back is sent by a timer,
        with whatever is newest by then.
        """
        link = self.links.get(pane.key)
        if (
            pane.is_dm
            or link is None
            or not link.connected
            or pane is not self.active_pane()
            or not pane.chat_log.at_bottom
            or pane.key in self._read_timers
        ):
            return
        receipts = pane.state.receipts
        seq = receipts.wanted()
        if seq is None:
            return
        now = time.monotonic()
        wait = receipts.wait(now)
        if wait > 0:
            self._read_timers[pane.key] = self.set_timer(wait, lambda: self._read_due(pane))
            return
        link.mark_read(seq)
        receipts.sent(seq, now)

    def _read_due(self, pane: RoomPane) -> None:
        self._read_timers.pop(pane.key, None)
        if self.panes.get(pane.key) is pane:
            self._report_read(pane)

    def on_chat_log_unseen(self, message: ChatLog.Unseen) -> None:
        pane = message.chat_log.parent
        if message.count == 0 and isinstance(pane, RoomPane):
            self._report_read(pane)

    def _alert(self, title: str, text: str, pane: RoomPane) -> None:
        if self.chat.config.bell:
            self.app.bell()
        if self.chat.config.notify and pane is not self.active_pane():
            self.app.notify(one_line(text)[:200], title=title, markup=False)

    def _dm(self, event: Event, request: Event | None) -> None:
        dm_id = event.get("id")
        if not isinstance(dm_id, str) or dm_id in self.seen_dms:
            return
        self.seen_dms.add(dm_id)
        sender, recipient = str(event.get("from", "?")), str(event.get("to", "?"))
        own = sender == self.me
        # A /msg opens its tab once the relay took it: a user that does not exist gets no tab.
        opened = request is not None and request.get("cid") in self._dm_opens
        if opened and request is not None:
            self._dm_opens.discard(str(request.get("cid")))
        pane = self._add_pane("@" + (recipient if own else sender), activate=opened)
        self._day_line(pane, event)
        if not own:
            self._count_unread(pane, True)
        moment = self.chat.clock.local(event.get("ts"))
        text = str(event.get("text", ""))
        pane.chat_log.write(self.formatter.message(moment, sender, text, own=own, mention=False))
        if own and event.get("held"):
            pane.chat_log.write(self.formatter.info(f"held until {recipient} accepts your request"))
        elif own and event.get("queued"):
            pane.chat_log.write(self.formatter.info(f"{recipient} is offline; delivered later"))
        if not own:
            self._alert(f"DM from {one_line(sender)}", text, pane)

    def _dm_consent(self, event: Event) -> None:
        kind = event["type"]
        other = str(event.get("from") if kind == "dm_request" else event.get("by"))
        key = (kind, other, str(event.get("ts", "")))
        if key in self.seen_dms:
            return
        self.seen_dms.add(key)
        pane = self._add_pane("@" + other, activate=False)
        text = describe(event) or kind
        moment = self.chat.clock.local(event.get("ts"))
        if kind == "dm_request":
            self._count_unread(pane, True)
            self._alert(f"DM request from {one_line(other)}", text, pane)
            pane.chat_log.write(self.formatter.system(moment, text), tag=DM_PROMPT_TAG)
        else:
            pane.chat_log.write(self.formatter.system(moment, text))

    def _owner_event(self, pane: RoomPane, event: Event) -> None:
        text = describe(event) or str(event["type"])
        pane.chat_log.write(self.formatter.system(self.chat.clock.local(event.get("ts")), text))

    def _presence(self, pane: RoomPane, event: Event) -> None:
        if not pane.state.apply(event, self.me).show:
            return
        moment = self.chat.clock.local(event.get("ts"))
        pane.chat_log.write(self.formatter.system(moment, describe(event) or "?"))
        if pane is self.active_pane():
            self._show_members()

    def _nick(self, pane: RoomPane, event: Event) -> None:
        old, new = str(event.get("old", "?")), str(event.get("new", "?"))
        self._redraw(pane, pane.state.apply(event, self.me))
        moment = self.chat.clock.local(event.get("ts"))
        pane.chat_log.write(self.formatter.system(moment, describe(event) or new))
        dm = self.panes.get("@" + old)
        if dm is not None and "@" + new not in self.panes:
            del self.panes[dm.key]
            dm.state.key = "@" + new
            self.panes[dm.key] = dm
            self._relabel(dm)
        self._show_members()
        self._show_status()

    def _members(self, pane: RoomPane, event: Event) -> None:
        pane.state.apply(event, self.me)
        pane.chat_log.write(self.formatter.info(describe(event) or "members"))
        self._show_members()

    def _history(self, pane: RoomPane, event: Event) -> None:
        fmt, clock = self.formatter, self.chat.clock
        older = pane.state.older(event)
        texts: list[Text] = []
        for message in older:
            sender, text = sender_label(message), str(message.get("text", ""))
            own = sender == self.me
            mention = not own and mentions(text, self.me)
            moment = clock.local(message.get("ts"))
            texts.append(fmt.message(moment, sender, text, own=own, mention=mention))
        if pane.state.paged(older, pane.chat_log.prepend(texts)):
            pane.chat_log.prepend([fmt.info("── beginning of history ──")])

    def _error(self, pane: RoomPane, event: Event, request: Event | None) -> None:
        """Shown where the user is looking, naming the request it refused (matched by cid)."""
        if request is not None:
            self._dm_opens.discard(str(request.get("cid")))
            dialog = self._register
            if dialog is not None and request.get("cid") == dialog.pending:
                dialog.refused(describe(event) or "refused")
                return
        target = self.active_pane() or pane
        target.chat_log.write(self.formatter.error(describe(event, request) or "error"))

    # -- status ---------------------------------------------------------------------------------

    def on_link_changed(self, message: LinkChanged) -> None:
        """The status line follows every attempt; a room's log gets one line per outage."""
        status = message.status
        if status.room not in self.links:
            return
        self.statuses[status.room] = status
        self._retry_at[status.room] = time.monotonic() + status.retry_in
        self._show_status()
        pane = self.panes.get(status.room)
        dialog = self._register
        dropped = status.state in (State.RECONNECTING, State.OFFLINE)
        if dialog is not None and dialog.pending and dropped and status.room == self._register_room:
            dialog.refused("the connection dropped before the relay answered: try again")
        if status.state == State.CONNECTED:
            self._down.discard(status.room)
            if pane is not None:
                self._report_read(pane)
        elif status.state == State.RECONNECTING and status.room not in self._down:
            self._down.add(status.room)
            if pane is not None:
                where = f"{status.url}: {status.detail}" if status.detail else status.url
                pane.chat_log.write(self.formatter.info(f"cannot reach {where}; retrying"))

    def _overall(self) -> tuple[State, float, str]:
        """The most pressing state, the seconds to its next try and what failed, where."""
        if not self.statuses:
            return (State.OFFLINE if not self.links else State.CONNECTING), 0.0, ""
        worst = max(self.statuses.values(), key=lambda s: _STATE_RANK[s.state])
        retry_at = self._retry_at.get(worst.room, 0.0)
        problem = ""
        if worst.state != State.CONNECTED and worst.detail:
            problem = f"{worst.detail} ({worst.url})" if worst.url else worst.detail
        return worst.state, max(0.0, retry_at - time.monotonic()), problem

    def _show_status(self) -> None:
        state, retry_in, problem = self._overall()
        bar = self.query_one(StatusBar)
        bar.show(state.value, self.me, retry_in, problem)

    def _tick_status(self) -> None:
        if self._overall()[0] == State.RECONNECTING:
            self._show_status()

    # -- input --------------------------------------------------------------------------------

    @on(ChatInput.Submitted)
    def _submitted(self, event: ChatInput.Submitted) -> None:
        line = event.value
        chat_input = self.query_one(ChatInput)
        chat_input.value = ""
        if not line.strip():
            return
        if not _may_hold_password(line):
            chat_input.history.add(line)
        self.submit(line)

    def submit(self, line: str) -> None:
        pane = self.active_pane()
        if is_command(line):
            try:
                self.run_command(parse(line), pane)
            except CommandError as error:
                self._local(pane, self.formatter.error(str(error)))
            return
        if pane is None:
            return
        self.say(pane, literal(line))

    def say(self, pane: RoomPane, text: str) -> None:
        link = self._link_for(pane) if pane.is_dm else self.links.get(pane.key)
        if link is None:
            self._local(pane, self.formatter.error(self._not_connected(pane)))
            return
        limit = link.max_message_bytes
        if limit is not None and len(text.encode()) > limit:
            self._local(pane, self.formatter.error(f"message is longer than {limit} bytes"))
            return
        if pane.is_dm:
            link.send({"type": "dm", "to": pane.peer, "text": text})
        else:
            link.say(text)
        if not link.connected:
            self._local(pane, self.formatter.info(f"queued until reconnected: {text}"))

    def _link_for(self, pane: RoomPane | None) -> RoomLink | None:
        """For requests any room can carry (DMs, nick): this tab's link, else a connected one."""
        if pane is not None and pane.key in self.links:
            return self.links[pane.key]
        connected = [link for link in self.links.values() if link.connected]
        return next(iter(connected or self.links.values()), None)

    def _room_link(self, pane: RoomPane | None, command: str) -> RoomLink:
        if pane is None or pane.is_dm:
            raise CommandError(f"/{command} works in a room tab")
        link = self.links.get(pane.key)
        if link is None:
            raise CommandError(self._not_connected(pane))
        return link

    @staticmethod
    def _not_connected(pane: RoomPane | None) -> str:
        if pane is None or pane.is_dm:
            return "not connected to any room"
        return f"not connected to #{pane.key} (/join it to reconnect)"

    def _local(self, pane: RoomPane | None, text: Text) -> None:
        if pane is not None:
            pane.chat_log.write(text)
        else:
            self.app.notify(text.plain, severity="error", markup=False)

    def run_command(self, command: Command, pane: RoomPane | None) -> None:
        fmt = self.formatter
        name, arg = command.name, command.arg
        if name == "join":
            problem = room_error(arg)
            if problem:
                raise CommandError(problem)
            self.open_room(arg, activate=True)
        elif name == "part":
            if pane is None:
                raise CommandError("no tab to close")
            self.close_pane(pane)
        elif name in ("nick", "msg", "accept", "decline", "logout-everywhere"):
            self._user_request(command, pane)
        elif name in ("topic", "who", "kick", "close", "private", "invite", "remove", "owner"):
            request = command.request()
            if request is not None:
                self._room_link(pane, name).send(request)
        elif name == "register":
            if command.arg:
                raise CommandError("/register takes no argument: type the password in its dialog")
            self._open_register(pane)
        elif name == "rooms":
            self._list_rooms(pane)
        elif name == "clear":
            if pane is not None:
                pane.chat_log.clear()
        elif name == "help":
            self.app.push_screen(HelpScreen())
        elif name == "quit":
            self.confirm_quit()
        else:
            self._local(pane, fmt.error(f"/{name} is not available here"))

    def _open_register(self, pane: RoomPane | None) -> None:
        def send(password: str) -> str:
            # Only on a live link: a password should not wait in a queue for a reconnect.
            link = self._link_for(pane)
            if link is None or not link.connected:
                raise SendRefused("not connected to the relay: try again once reconnected")
            self._register_room = link.room
            return link.send({"type": "register", "password": password})

        self._register = RegisterScreen(self.me, send)
        self.app.push_screen(self._register, lambda _: self._forget_register())

    def _forget_register(self) -> None:
        self._register = None

    def _registered(self, event: Event, request: Event | None) -> None:
        """Every connection of ours hears it: store the new token once, tell the dialog."""
        token, name = str(event.get("token", "")), str(event.get("name", ""))
        if token and token != self.chat.identity.token:
            self.chat.identity.welcomed(token, name or self.me or "")
        dialog = self._register
        if dialog is not None and request is not None and request.get("cid") == dialog.pending:
            dialog.registered(one_line(name))

    def _user_request(self, command: Command, pane: RoomPane | None) -> None:
        """Requests about users rather than a room, carried by any connected link."""
        peer = pane.peer if pane is not None and pane.is_dm else None
        request = command.request(peer=peer, me=self.me)
        link = self._link_for(pane)
        if request is None:
            return
        if link is None:
            raise CommandError("not connected to any room")
        if command.name == "msg":
            limit = link.max_message_bytes
            if limit is not None and len(str(request["text"]).encode()) > limit:
                raise CommandError(f"message is longer than {limit} bytes")
            existing = self.panes.get("@" + str(request["to"]))
            if existing is not None:
                self._activate(existing)
            cid = link.send(request)
            if existing is None:
                self._dm_opens.add(cid)
            if not link.connected:
                self._local(existing or pane, self.formatter.info("queued until reconnected"))
            return
        link.send(request)
        if command.name in ("accept", "decline"):
            dm = self.panes.get("@" + str(request["from"]))
            if dm is not None:
                dm.chat_log.remove_tag(DM_PROMPT_TAG)
                verb = "accepted" if command.name == "accept" else "declined"
                dm.chat_log.write(self.formatter.info(f"you {verb} {request['from']}'s request"))

    def confirm_quit(self) -> None:
        """Lines not yet taken by the relay are lost on quit: ask first, saying how many."""
        unsent = sum(link.unsent for link in self.links.values())
        if not unsent:
            self.app.exit()
            return
        noun = "line is" if unsent == 1 else "lines are"
        question = Text(f"{unsent} {noun} not sent yet and will be lost.\n\nQuit anyway?")

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.exit()

        self.app.push_screen(ConfirmScreen(question, yes="Quit"), answered)

    @work(group="http", exit_on_error=False)
    async def _list_rooms(self, pane: RoomPane | None) -> None:
        fmt = self.formatter
        try:
            rooms = await list_rooms(self.chat.config.http_base, self.chat.identity.token)
        except ApiError as error:
            self._local(pane, fmt.error(str(error)))
            return
        if not rooms:
            self._local(pane, fmt.info("no active rooms"))
        for room in rooms:
            line = f"#{room.get('room')}  {room.get('members')} member(s)"
            line += "  invite-only" if room.get("private") else ""
            self._local(pane, fmt.info(line))

    @on(ChatInput.PastedLines)
    def _pasted(self, message: ChatInput.PastedLines) -> None:
        lines, pane = message.lines, self.active_pane()
        if pane is None:
            return
        question = Text(f"Send {len(lines)} lines as {len(lines)} messages?\n\n")
        question.append("\n".join(one_line(line) for line in lines[:5]), style="dim")
        if len(lines) > 5:
            question.append(f"\n… and {len(lines) - 5} more", style="dim")

        def answered(yes: bool | None) -> None:
            if yes:
                for line in lines:
                    self.say(pane, line)

        self.app.push_screen(ConfirmScreen(question), answered)

    @on(MemberList.Picked)
    def _picked(self, message: MemberList.Picked) -> None:
        if message.name != self.me:
            self._add_pane("@" + message.name, activate=True)
        self.query_one(ChatInput).focus()

    # -- keys -----------------------------------------------------------------------------------

    def _pane_list(self) -> list[RoomPane]:
        return list(self.query(RoomPane))

    def _activate(self, pane: RoomPane) -> None:
        self.query_one(TabbedContent).active = pane.id or ""

    def action_goto_tab(self, number: int) -> None:
        panes = self._pane_list()
        if 0 < number <= len(panes):
            self._activate(panes[number - 1])

    def action_cycle_tab(self, step: int) -> None:
        panes, current = self._pane_list(), self.active_pane()
        if panes and current in panes:
            self._activate(panes[(panes.index(current) + step) % len(panes)])

    def action_next_mention(self) -> None:
        panes, current = self._pane_list(), self.active_pane()
        start = panes.index(current) if current in panes else -1
        for offset in range(1, len(panes) + 1):
            pane = panes[(start + offset) % len(panes)]
            if pane.state.mentioned:
                self._activate(pane)
                return

    def action_page(self, direction: int) -> None:
        pane = self.active_pane()
        if pane is None:
            return
        if direction < 0 and pane.chat_log.at_top:
            link = self.links.get(pane.key)
            request = pane.state.history_request(HISTORY_PAGE)
            if link is not None and request is not None:
                link.send(request)
        elif direction < 0:
            pane.chat_log.scroll_page_up(animate=False)
        else:
            pane.chat_log.scroll_page_down(animate=False)
