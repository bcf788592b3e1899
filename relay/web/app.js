// The page: tabs, logs, members, input. Network details live in link.js.
//
// Everything that came over the wire is put on the page with textContent or as an attribute
// value, never parsed as HTML: a message is text, whatever it looks like.

import { CommandError, helpLines, isCommand, literal, parse, split } from "./commands.js";
import { Identity, RoomLink } from "./link.js";
import { colorIndex, mentions, nameError, oneLine, roomError, visible } from "./protocol.js";

const HISTORY_PAGE = 100;
// Lines a log keeps while you read at its bottom (like the TUI's max_lines); scrolling up
// brings the older ones back from the relay's history.
const MAX_LINES = 5000;
const TRIM_LINES = 1000;
const READ_INTERVAL_MS = 1000;
const DEFAULT_ROOM = "lobby";

const storage = {
  get(key) {
    try {
      return localStorage.getItem(`chat.${key}`);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(`chat.${key}`, value);
    } catch {
      // Private mode or a full quota: keep working for this page's life.
    }
  },
};

function $(id) {
  return document.getElementById(id);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(ts) {
  const date = typeof ts === "string" ? new Date(ts) : new Date();
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

function dayKey(date) {
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

function clock(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const DAY_FORMAT = { weekday: "long", day: "numeric", month: "long", year: "numeric" };

class Tab {
  constructor(key, kind) {
    this.key = key;
    this.kind = kind;
    this.peer = kind === "dm" ? key.slice(1) : null;
    this.pane = el("section", "pane");
    this.pane.dataset.key = key;
    this.log = el("div", "log");
    this.log.setAttribute("role", "log");
    this.log.tabIndex = 0;
    this.seen = el("div", "seen");
    this.pane.append(this.log, this.seen);
    this.button = el("button", "tab");
    this.button.type = "button";
    this.button.setAttribute("role", "tab");
    this.button.dataset.key = key;
    this.link = null;
    this.state = kind === "dm" ? "live" : "connecting";
    this.stateDetail = {};
    this.members = new Set();
    this.owner = null;
    this.topic = null;
    this.epoch = null;
    this.ids = new Set();
    this.unread = new Map(); // seq (or a DM id) -> mentions me
    this.marker = null; // the "new messages" line
    this.readMarker = 0;
    this.readSent = 0;
    this.readTimer = null;
    this.lastReadAt = 0;
    this.newestSeq = 0;
    this.oldestSeq = null;
    this.historyDone = false;
    this.historyPending = false;
    this.anchor = null; // older history goes before this node (after a gap: the new epoch)
    this.anchorNext = false;
    this.lastDay = null;
    this.atBottom = true;
    this.myLastSeq = null;
    this.seenBy = new Set();
    this.recovered = null; // the last welcome's answer to a resume
  }

  get label() {
    return this.kind === "dm" ? `@${oneLine(this.peer)}` : `#${oneLine(this.key)}`;
  }
}

class App {
  constructor() {
    this.identity = new Identity(storage);
    this.tabs = new Map();
    this.active = null;
    this.seenDms = new Set();
    this.seenNotices = new Map();
    this.sent = [];
    this.sentIndex = 0;
    this.completion = null;
    this.quit = false;
    this.maxLines = MAX_LINES;
    this.trimLines = TRIM_LINES;
  }

  get me() {
    return this.identity.name;
  }

  key() {
    return storage.get("key");
  }

  // -- tabs ---------------------------------------------------------------------------------

  openRoom(room, activate = true) {
    let tab = this.tabs.get(room);
    if (tab === undefined) {
      tab = this.addTab(new Tab(room, "room"));
      tab.link = new RoomLink({
        room,
        identity: this.identity,
        key: () => this.key(),
        sink: (event) => this.onEvent(tab, event),
        onState: (state, detail) => this.onState(tab, state, detail),
      });
      tab.link.start();
      this.saveHash();
    }
    if (activate) this.activate(room);
    return tab;
  }

  openDm(peer, activate = false) {
    const key = `@${peer}`;
    let tab = this.tabs.get(key);
    if (tab === undefined) tab = this.addTab(new Tab(key, "dm"));
    if (activate) this.activate(key);
    return tab;
  }

  addTab(tab) {
    this.tabs.set(tab.key, tab);
    $("panes").append(tab.pane);
    $("tabs").append(tab.button);
    tab.button.addEventListener("click", () => this.activate(tab.key));
    tab.log.addEventListener("scroll", () => this.onScroll(tab));
    this.renderTab(tab);
    return tab;
  }

  closeTab(tab) {
    if (tab.link !== null) tab.link.stop();
    this.tabs.delete(tab.key);
    tab.pane.remove();
    tab.button.remove();
    if (this.active === tab) {
      this.active = null;
      const next = this.tabs.keys().next();
      if (!next.done) this.activate(next.value);
    }
    this.saveHash();
    this.renderChrome();
  }

  activate(key) {
    const tab = this.tabs.get(key);
    if (tab === undefined) return;
    this.active = tab;
    for (const other of this.tabs.values()) {
      const on = other === tab;
      other.pane.classList.toggle("active", on);
      other.button.classList.toggle("active", on);
      other.button.setAttribute("aria-selected", String(on));
    }
    if (tab.atBottom) tab.log.scrollTop = tab.log.scrollHeight;
    const input = $("input");
    input.placeholder =
      tab.kind === "dm" ? `Message @${oneLine(tab.peer)}` : `Message #${oneLine(tab.key)}`;
    tab.button.scrollIntoView({ block: "nearest", inline: "nearest" });
    this.sawTab(tab);
    this.renderChrome();
    this.fillViewport(tab);
  }

  viewing(tab) {
    return this.active === tab && document.visibilityState === "visible" && tab.atBottom;
  }

  /** The user can see the bottom of this tab: what was unread is read now. */
  sawTab(tab) {
    if (!this.viewing(tab)) return;
    if (tab.unread.size) {
      tab.unread.clear();
      this.renderTab(tab);
    }
    this.reportRead(tab);
  }

  reportRead(tab) {
    if (tab.kind !== "room" || tab.link === null || tab.newestSeq <= tab.readSent) return;
    const wait = tab.lastReadAt + READ_INTERVAL_MS - Date.now();
    if (wait > 0) {
      if (tab.readTimer === null) {
        tab.readTimer = setTimeout(() => {
          tab.readTimer = null;
          if (this.viewing(tab)) this.reportRead(tab);
        }, wait);
      }
      return;
    }
    tab.lastReadAt = Date.now();
    tab.readSent = tab.newestSeq;
    tab.link.markRead(tab.newestSeq);
  }

  saveHash() {
    const rooms = [...this.tabs.values()].filter((t) => t.kind === "room").map((t) => t.key);
    const hash = `#${rooms.map(encodeURIComponent).join(",")}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  // -- rendering ----------------------------------------------------------------------------

  renderTab(tab) {
    const button = tab.button;
    button.replaceChildren(el("span", "dot"), el("span", "name", tab.label));
    button.dataset.state = tab.state;
    const mentioned = [...tab.unread.values()].filter(Boolean).length;
    if (tab.unread.size) button.append(el("span", "unread", String(tab.unread.size)));
    if (mentioned) button.append(el("span", "mention", `@${mentioned}`));
    button.title = `${tab.label}: ${tab.state}`;
    this.renderTitle();
  }

  renderTitle() {
    let total = 0;
    for (const tab of this.tabs.values()) total += tab.unread.size;
    const who = this.me ? ` · ${oneLine(this.me)}` : "";
    document.title = `${total ? `(${total}) ` : ""}chat${who}`;
  }

  renderChrome() {
    this.renderMembers();
    this.renderStatus();
    this.renderTopic();
    this.renderSeen();
    this.renderTitle();
  }

  renderMembers() {
    const tab = this.active;
    const list = $("member-list");
    list.replaceChildren();
    if (tab === null) return;
    const names =
      tab.kind === "dm" ? [tab.peer, this.me].filter(Boolean) : [...tab.members].sort();
    for (const name of names) {
      const item = el("li", `member c${colorIndex(name)}`);
      const button = el("button", "", oneLine(name));
      button.type = "button";
      button.title = `send @${oneLine(name)} a direct message`;
      button.addEventListener("click", () => {
        if (name !== this.me) this.openDm(name, true);
        document.body.classList.remove("show-members");
      });
      if (name === this.me) item.classList.add("me");
      if (name === tab.owner) {
        item.classList.add("owner");
        item.title = "room owner";
      }
      item.append(button);
      list.append(item);
    }
    $("members-title").textContent = `Members (${names.length})`;
    $("members-toggle").textContent = `Members ${names.length}`;
  }

  renderStatus() {
    const tab = this.active;
    const status = $("status");
    status.replaceChildren();
    if (tab === null) {
      status.append(el("span", "state", this.quit ? "left every room" : "no room open"));
      return;
    }
    const link = tab.link ?? this.anyLink();
    const state = link === null ? "offline" : tab.kind === "dm" ? link.state : tab.state;
    const detail = tab.kind === "dm" ? {} : tab.stateDetail;
    let text = state;
    if (state === "resuming" && detail.retryIn) {
      text = `resuming in ${detail.retryIn.toFixed(1)}s`;
    }
    if (state === "offline" && detail.detail) text = `offline: ${oneLine(detail.detail)}`;
    const stateNode = el("span", "state", text);
    stateNode.dataset.state = state;
    status.append(stateNode);
    if (this.me) {
      status.append(el("span", "sep", " · you are "), el("span", "you", oneLine(this.me)));
    }
    const unsent = tab.link?.unsent ?? 0;
    if (unsent) status.append(el("span", "unsent", ` · ${unsent} waiting to be sent`));
  }

  renderTopic() {
    const tab = this.active;
    const topic = $("topic");
    if (tab === null || tab.kind === "dm") {
      topic.textContent = tab === null ? "" : "direct messages";
      return;
    }
    topic.textContent = tab.topic ? oneLine(tab.topic) : "";
    topic.classList.toggle("empty", !tab.topic);
  }

  renderSeen() {
    for (const tab of this.tabs.values()) {
      const names = [...tab.seenBy].sort();
      if (!names.length) {
        tab.seen.textContent = "";
        continue;
      }
      const shown = names.slice(0, 5).map(oneLine).join(", ");
      const more = names.length > 5 ? ` +${names.length - 5}` : "";
      tab.seen.textContent = `✓ seen by ${shown}${more}`;
    }
  }

  // -- log lines ----------------------------------------------------------------------------

  stamp(date) {
    const time = el("time", "ts", clock(date));
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
    return time;
  }

  daySeparator(date) {
    const line = el("div", "day", date.toLocaleDateString(undefined, DAY_FORMAT));
    line.dataset.day = dayKey(date);
    line.setAttribute("role", "separator");
    return line;
  }

  /** Append a line; a dated line first gets a day separator when the day changed. */
  append(tab, node, date = null) {
    const log = tab.log;
    const follow = tab.atBottom;
    if (date !== null) {
      const day = dayKey(date);
      node.dataset.day = day;
      if (tab.lastDay !== day) {
        const separator = this.daySeparator(date);
        log.append(separator);
        if (tab.anchorNext) this.setAnchor(tab, separator);
        tab.lastDay = day;
      }
    }
    log.append(node);
    if (tab.anchorNext) this.setAnchor(tab, node);
    if (follow) {
      if (log.childElementCount > this.maxLines) this.trim(tab);
      log.scrollTop = log.scrollHeight;
    } else if (tab === this.active) {
      $("below").hidden = false;
    }
  }

  /** Drop the oldest lines; their messages can be paged in again from the relay. */
  trim(tab) {
    const log = tab.log;
    for (let n = 0; n < this.trimLines && log.firstElementChild !== null; n++) {
      const line = log.firstElementChild;
      if (line.dataset.id) tab.ids.delete(line.dataset.id);
      if (line === tab.anchor) tab.anchor = null;
      if (line === tab.marker) tab.marker = null;
      line.remove();
    }
    const first = log.querySelector(".msg[data-seq]");
    tab.oldestSeq = first === null ? null : Number(first.dataset.seq);
    tab.historyDone = tab.oldestSeq === null || tab.oldestSeq <= 1;
    const head = log.firstElementChild;
    if (head !== null && !head.classList.contains("day") && head.dataset.day) {
      log.insertBefore(this.daySeparator(new Date(head.querySelector("time").dateTime)), head);
    }
  }

  setAnchor(tab, node) {
    tab.anchor = node;
    tab.anchorNext = false;
  }

  notice(tab, text, className = "sys", date = null) {
    const line = el("div", `line ${className}`);
    if (date !== null) line.append(this.stamp(date));
    line.append(el("span", "text", visible(text)));
    this.append(tab, line, date);
    return line;
  }

  system(tab, event, text) {
    return this.notice(tab, text, "sys", when(event.ts));
  }

  messageNode(event, { own }) {
    const date = when(event.ts);
    const sender = String(event.from ?? "?");
    const line = el("div", "line msg");
    if (typeof event.id === "string") line.dataset.id = event.id;
    if (Number.isInteger(event.seq)) line.dataset.seq = String(event.seq);
    const who = el("span", `who c${colorIndex(sender)}`, oneLine(sender));
    if (own) {
      line.classList.add("own");
      who.classList.add("me");
    }
    line.append(this.stamp(date), who);
    if (event.via === "http") line.append(el("span", "via", "via http"));
    line.append(el("span", "text", visible(event.text ?? "")));
    if (!own && mentions(String(event.text ?? ""), this.me)) line.classList.add("mention");
    return line;
  }

  // -- events -------------------------------------------------------------------------------

  onState(tab, state, detail) {
    tab.state = state;
    tab.stateDetail = detail;
    this.renderTab(tab);
    if (state === "live") this.fillViewport(tab);
    if (detail.needKey) this.askKey(detail.detail);
    if (this.active === tab || this.active?.kind === "dm") this.renderStatus();
  }

  anyLink() {
    const links = [...this.tabs.values()].map((t) => t.link).filter((l) => l !== null);
    return links.find((l) => l.state === "live") ?? links[0] ?? null;
  }

  onEvent(tab, event) {
    switch (event.type) {
      case "welcome":
        return this.onWelcome(tab, event);
      case "message":
        return this.onMessage(tab, event);
      case "join":
      case "leave":
        return this.onPresence(tab, event);
      case "nick":
        return this.onNick(tab, event);
      case "members":
        tab.members = new Set(Array.isArray(event.members) ? event.members.map(String) : []);
        this.notice(tab, `members: ${[...tab.members].sort().map(oneLine).join(", ")}`);
        return this.renderMembers();
      case "history":
        return this.onHistory(tab, event);
      case "error":
        return this.onError(tab, event);
      case "topic":
        tab.topic = typeof event.topic === "string" ? event.topic : null;
        this.system(tab, event, `${oneLine(event.by)} set the topic: ${oneLine(event.topic)}`);
        return this.renderTopic();
      case "kick":
        return this.system(tab, event, `${oneLine(event.name)} was kicked by ${oneLine(event.by)}`);
      case "closed":
        return this.system(tab, event, `${oneLine(event.by)} closed the room`);
      case "read":
        return this.onRead(tab, event);
      case "announce":
        return this.onAnnounce(tab, event);
      case "dm":
        return this.onDm(event);
      case "dm_request":
      case "dm_accepted":
      case "dm_declined":
        return this.onConsent(event);
      default:
        return undefined;
    }
  }

  onWelcome(tab, event) {
    tab.members = new Set(Array.isArray(event.members) ? event.members.map(String) : []);
    tab.owner = typeof event.owner === "string" ? event.owner : null;
    tab.topic = typeof event.topic === "string" ? event.topic : null;
    const marker = Number.isInteger(event.read) ? event.read : 0;
    tab.recovered = typeof event.recovered === "boolean" ? event.recovered : null;
    if (event.epoch !== tab.epoch) {
      // Seqs of a new epoch say nothing about the old one: read state and paging start over.
      tab.epoch = event.epoch;
      tab.readMarker = marker;
      tab.readSent = marker;
      tab.newestSeq = 0;
      tab.oldestSeq = null;
      tab.historyDone = false;
      tab.unread.clear();
      tab.seenBy.clear();
      tab.myLastSeq = null;
    } else {
      tab.readMarker = Math.max(tab.readMarker, marker);
    }
    if (event.recovered === false) {
      this.notice(tab, "some messages could not be recovered here", "gap");
      tab.anchorNext = true;
    }
    this.renderTab(tab);
    this.renderChrome();
  }

  onMessage(tab, event) {
    if (typeof event.id === "string") {
      if (tab.ids.has(event.id)) return;
      tab.ids.add(event.id);
    }
    const own = event.from === this.me;
    const node = this.messageNode(event, { own });
    this.append(tab, node, when(event.ts));
    const seq = Number.isInteger(event.seq) ? event.seq : null;
    if (seq !== null) {
      tab.newestSeq = Math.max(tab.newestSeq, seq);
      if (tab.oldestSeq === null || seq < tab.oldestSeq) tab.oldestSeq = seq;
      if (seq === 1) tab.historyDone = true;
    }
    if (own) {
      if (seq !== null) tab.myLastSeq = seq;
      tab.seenBy.clear();
      this.renderSeen();
    } else if (seq !== null && seq > tab.readMarker && !this.viewing(tab)) {
      this.countUnread(tab, seq, node.classList.contains("mention"), node);
    }
    if (this.viewing(tab)) this.reportRead(tab);
  }

  countUnread(tab, key, mentioned, node) {
    if (!tab.unread.size) {
      tab.marker?.remove();
      tab.marker = el("div", "new-marker", "new messages");
      tab.log.insertBefore(tab.marker, node);
    }
    tab.unread.set(key, mentioned);
    this.renderTab(tab);
  }

  onPresence(tab, event) {
    const name = String(event.name ?? "");
    if (event.type === "join") {
      tab.members.add(name);
      this.system(tab, event, `${oneLine(name)} joined`);
    } else {
      tab.members.delete(name);
      this.system(tab, event, `${oneLine(name)} left`);
    }
    if (this.active === tab) this.renderMembers();
  }

  onNick(tab, event) {
    const old = String(event.old ?? "");
    const renamed = String(event.new ?? "");
    if (tab.members.delete(old)) tab.members.add(renamed);
    if (old === this.me) this.identity.name = renamed;
    if (tab.owner === old) tab.owner = renamed;
    this.system(tab, event, `${oneLine(old)} is now known as ${oneLine(renamed)}`);
    this.renderChrome();
  }

  onHistory(tab, event) {
    tab.historyPending = false;
    const messages = Array.isArray(event.messages) ? event.messages : [];
    if (messages.length < HISTORY_PAGE) tab.historyDone = true;
    const log = tab.log;
    const before = log.scrollHeight;
    const fragment = document.createDocumentFragment();
    if (tab.historyDone) {
      fragment.append(el("div", "line sys start", `beginning of #${oneLine(tab.key)}`));
    }
    let day = null;
    for (const message of messages) {
      if (typeof message !== "object" || message === null) continue;
      if (typeof message.id === "string") {
        if (tab.ids.has(message.id)) continue;
        tab.ids.add(message.id);
      }
      if (Number.isInteger(message.seq)) {
        if (tab.oldestSeq === null || message.seq < tab.oldestSeq) tab.oldestSeq = message.seq;
      }
      const date = when(message.ts);
      if (dayKey(date) !== day) {
        day = dayKey(date);
        fragment.append(this.daySeparator(date));
      }
      const node = this.messageNode(message, { own: message.from === this.me });
      node.dataset.day = day;
      fragment.append(node);
    }
    let next = tab.anchor ?? log.firstElementChild;
    if (next !== null && next.classList.contains("day") && next.dataset.day === day) {
      const after = next.nextElementSibling;
      next.remove();
      if (tab.anchor === next) tab.anchor = after;
      next = after;
    }
    log.insertBefore(fragment, next);
    log.scrollTop += log.scrollHeight - before;
    this.fillViewport(tab);
  }

  /** Older history is loaded on scrolling up; a log too short to scroll asks for it itself. */
  fillViewport(tab) {
    if (tab === this.active && tab.log.scrollHeight <= tab.log.clientHeight) this.loadOlder(tab);
  }

  loadOlder(tab) {
    if (tab.kind !== "room" || tab.historyDone || tab.historyPending) return;
    if (tab.oldestSeq === null || tab.link === null || tab.link.state !== "live") return;
    tab.historyPending = true;
    tab.link.send({ type: "history", before: tab.oldestSeq, limit: HISTORY_PAGE });
  }

  onScroll(tab) {
    const log = tab.log;
    tab.atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    if (tab === this.active && tab.atBottom) {
      $("below").hidden = true;
      this.sawTab(tab);
    }
    if (log.scrollTop < 48) this.loadOlder(tab);
  }

  onError(tab, event) {
    if (event.request === "history") tab.historyPending = false;
    const where = this.active?.kind === "dm" ? this.active : tab;
    const detail = String(event.detail ?? event.code ?? "error");
    if (event.refused !== undefined) {
      const text = String(event.refused.text ?? "");
      const shown = text.length > 80 ? `${text.slice(0, 80)}…` : text;
      this.notice(where, `(not sent: ${detail}) ${shown}`, "error");
    } else {
      this.notice(where, detail, "error");
    }
  }

  onRead(tab, event) {
    const seq = Number.isInteger(event.seq) ? event.seq : 0;
    if (event.name === this.me) {
      // Another device of ours read this room: what it read is no longer unread here.
      tab.readMarker = Math.max(tab.readMarker, seq);
      for (const key of [...tab.unread.keys()]) if (key <= seq) tab.unread.delete(key);
      this.renderTab(tab);
    } else if (tab.myLastSeq !== null && seq >= tab.myLastSeq) {
      tab.seenBy.add(String(event.name));
      this.renderSeen();
    }
  }

  onAnnounce(tab, event) {
    const line = el("div", "line announce");
    const date = when(event.ts);
    line.append(this.stamp(date), el("span", "badge", "announcement"));
    line.append(el("span", "text", visible(event.text ?? "")));
    this.append(tab, line, date);
    if (!this.viewing(tab)) this.countUnread(tab, `announce:${event.id}`, true, line);
  }

  /** DMs reach every connection of ours, one per room: show each once. */
  onDm(event) {
    if (typeof event.id === "string") {
      if (this.seenDms.has(event.id)) return;
      this.seenDms.add(event.id);
    }
    const own = event.from === this.me;
    const peer = String(own ? event.to : event.from);
    const tab = this.openDm(peer, false);
    const node = this.messageNode(event, { own });
    if (event.held) node.append(el("span", "flag", "waiting for them to accept"));
    if (event.queued) node.append(el("span", "flag", "delivered when they connect"));
    this.append(tab, node, when(event.ts));
    if (!own && !this.viewing(tab)) this.countUnread(tab, `dm:${event.id}`, true, node);
  }

  onConsent(event) {
    const who = String(event.type === "dm_request" ? event.from : event.by);
    const key = `${event.type}:${who}:${event.ts ?? ""}`;
    const now = Date.now();
    // One copy arrives per open room; the same answer twice within seconds is that copy.
    if (now - (this.seenNotices.get(key) ?? -Infinity) < 10000) return;
    this.seenNotices.set(key, now);
    const tab = this.openDm(who, false);
    if (event.type !== "dm_request") {
      const verb = event.type === "dm_accepted" ? "accepted" : "declined";
      this.notice(tab, `${oneLine(who)} ${verb} your private messages`, "sys", new Date());
      return;
    }
    const line = this.notice(
      tab,
      `${oneLine(who)} wants to send you private messages`,
      "sys request",
      when(event.ts),
    );
    const accept = el("button", "accept", "Accept");
    const decline = el("button", "decline", "Decline");
    for (const [button, answer] of [
      [accept, "accept"],
      [decline, "decline"],
    ]) {
      button.type = "button";
      button.addEventListener("click", () => {
        this.answer(who, answer);
        accept.disabled = true;
        decline.disabled = true;
      });
      line.append(button);
    }
    if (!this.viewing(tab)) this.countUnread(tab, `request:${key}`, true, line);
  }

  answer(who, answer) {
    const link = this.sendingLink();
    if (link === null) return;
    link.send({ type: `dm_${answer}`, from: who });
    const tab = this.openDm(who, false);
    const verb = answer === "accept" ? "accepted" : "declined";
    this.notice(tab, `you ${verb} ${oneLine(who)}'s private messages`, "sys", new Date());
  }

  /** DMs and account-wide requests go out through any room's socket; prefer a live one. */
  sendingLink() {
    const active = this.active?.link;
    if (active && active.state === "live") return active;
    return this.anyLink();
  }

  // -- input --------------------------------------------------------------------------------

  submit(line) {
    if (!line.trim()) return;
    this.sent.push(line);
    this.sentIndex = this.sent.length;
    const tab = this.active;
    if (!isCommand(line)) {
      if (tab === null) return;
      this.say(tab, literal(line));
      return;
    }
    let command;
    try {
      command = parse(line);
    } catch (error) {
      if (!(error instanceof CommandError)) throw error;
      if (tab !== null) this.notice(tab, error.message, "error");
      return;
    }
    this.run(tab, command);
  }

  say(tab, text) {
    if (tab.kind === "dm") {
      const link = this.sendingLink();
      if (link === null) return this.notice(tab, "not connected to any room", "error");
      link.send({ type: "dm", to: tab.peer, text });
      return undefined;
    }
    if (tab.link === null || tab.link.stopped) {
      return this.notice(tab, `not connected to #${oneLine(tab.key)}`, "error");
    }
    if (tab.link.state !== "live") this.notice(tab, `queued until reconnected: ${text}`);
    tab.link.say(text);
    this.renderStatus();
    return undefined;
  }

  run(tab, { name, arg }) {
    const note = (text, className = "sys") => {
      if (tab !== null) this.notice(tab, text, className);
    };
    const roomLink = tab?.kind === "room" ? tab.link : null;
    switch (name) {
      case "join": {
        const rooms = arg.replace(/^#/, "");
        const problem = roomError(rooms);
        if (problem) return note(problem, "error");
        const existing = this.tabs.get(rooms);
        if (existing?.link?.stopped) this.closeTab(existing);
        this.quit = false;
        return this.openRoom(rooms);
      }
      case "part":
        return tab === null ? undefined : this.closeTab(tab);
      case "nick": {
        const problem = nameError(arg);
        if (problem) return note(problem, "error");
        if (arg === this.me) return note(`you are already ${oneLine(arg)}`, "error");
        return this.sendingLink()?.send({ type: "nick", name: arg });
      }
      case "msg": {
        const [to, text] = split(arg);
        const dm = this.openDm(to, true);
        return this.say(dm, text);
      }
      case "accept":
      case "decline": {
        const who = arg || tab?.peer;
        if (!who) return note(`usage: /${name} NAME`, "error");
        return this.answer(who, name);
      }
      case "topic":
        if (roomLink === null) return note("/topic works in a room tab", "error");
        return roomLink.send({ type: "topic", text: arg });
      case "kick":
        if (roomLink === null) return note("/kick works in a room tab", "error");
        return roomLink.send({ type: "kick", name: arg });
      case "close":
      case "who":
        if (roomLink === null) return note(`/${name} works in a room tab`, "error");
        return roomLink.send({ type: name });
      case "rooms":
        return this.listRooms(note);
      case "clear":
        if (tab !== null) {
          tab.log.replaceChildren();
          tab.lastDay = null;
          tab.anchor = null;
          tab.historyDone = true;
        }
        return undefined;
      case "help":
        note("commands (//text sends /text):");
        for (const help of helpLines()) note(help);
        note("keys: Alt+1..9 tab, Up/Down input history, Tab completes names");
        return undefined;
      case "quit":
        for (const other of this.tabs.values()) other.link?.stop();
        this.quit = true;
        note("you left every room; reload the page to come back");
        return this.renderStatus();
      default:
        return undefined;
    }
  }

  async listRooms(note) {
    const key = this.key();
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    try {
      const response = await fetch("/rooms", { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      const rooms = Array.isArray(body.rooms) ? body.rooms : [];
      if (!rooms.length) note("no active rooms");
      for (const room of rooms) {
        const topic = room.topic ? ` — ${oneLine(room.topic)}` : "";
        note(`#${oneLine(room.room)} ${Number(room.members)} members${topic}`);
      }
    } catch (error) {
      note(`cannot list rooms: ${error.message}`, "error");
    }
  }

  complete(input) {
    const tab = this.active;
    if (tab === null) return;
    const value = input.value.slice(0, input.selectionStart ?? input.value.length);
    const start = value.search(/\S*$/);
    const prefix = value.slice(start);
    if (this.completion === null || this.completion.value !== input.value) {
      const names = tab.kind === "dm" ? [tab.peer] : [...tab.members].sort();
      const words = prefix.startsWith("/") && start === 0
        ? [...helpLines()].map((line) => line.split(" ")[0])
        : names.filter((n) => n !== this.me);
      const matches = words.filter((w) => w.toLowerCase().startsWith(prefix.toLowerCase()));
      if (!matches.length) return;
      this.completion = { start, head: value.slice(0, start), matches, index: -1, value: "" };
    }
    const completion = this.completion;
    completion.index = (completion.index + 1) % completion.matches.length;
    const word = completion.matches[completion.index];
    const suffix = word.startsWith("/") ? " " : completion.start === 0 ? ": " : " ";
    input.value = completion.head + word + suffix;
    completion.value = input.value;
  }

  // -- access key ---------------------------------------------------------------------------

  askKey(reason) {
    const form = $("key-form");
    $("key-reason").textContent = oneLine(reason || "this relay needs an access key");
    form.hidden = false;
    $("key-input").focus();
  }

  useKey(value) {
    storage.set("key", value);
    $("key-form").hidden = true;
    for (const tab of this.tabs.values()) {
      if (tab.link !== null && tab.link.stopped && tab.stateDetail.needKey) tab.link.start();
    }
  }

  // -- wiring -------------------------------------------------------------------------------

  start() {
    const params = new URLSearchParams(location.search);
    if (params.has("key")) {
      // A key in the address is stored, then taken out so it stays off screens and history.
      storage.set("key", params.get("key"));
      params.delete("key");
      const query = params.size ? `?${params}` : "";
      history.replaceState(null, "", `${location.pathname}${query}${location.hash}`);
    }
    const rooms = hashRooms();
    for (const room of rooms) this.openRoom(room, false);
    this.activate(rooms[0]);
    this.bind();
  }

  bind() {
    const input = $("input");
    $("compose").addEventListener("submit", (event) => {
      event.preventDefault();
      const line = input.value;
      input.value = "";
      this.completion = null;
      this.submit(line);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Tab" && !event.shiftKey && input.value) {
        event.preventDefault();
        this.complete(input);
      } else if (event.key === "ArrowUp" && this.sentIndex > 0) {
        event.preventDefault();
        this.sentIndex -= 1;
        input.value = this.sent[this.sentIndex];
      } else if (event.key === "ArrowDown" && this.sentIndex < this.sent.length) {
        event.preventDefault();
        this.sentIndex += 1;
        input.value = this.sent[this.sentIndex] ?? "";
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.altKey && /^[1-9]$/.test(event.key)) {
        const key = [...this.tabs.keys()][Number(event.key) - 1];
        if (key !== undefined) {
          event.preventDefault();
          this.activate(key);
        }
      }
    });
    $("below").addEventListener("click", () => {
      const tab = this.active;
      if (tab === null) return;
      tab.log.scrollTop = tab.log.scrollHeight;
    });
    $("members-toggle").addEventListener("click", () => {
      const shown = document.body.classList.toggle("show-members");
      $("members-toggle").setAttribute("aria-expanded", String(shown));
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("key-input").value.trim();
      if (value) this.useKey(value);
    });
    document.addEventListener("visibilitychange", () => {
      if (this.active !== null) this.sawTab(this.active);
    });
    window.addEventListener("online", () => {
      for (const tab of this.tabs.values()) tab.link?.retryNow();
    });
    window.addEventListener("hashchange", () => {
      const rooms = hashRooms();
      for (const room of rooms) this.openRoom(room, false);
      this.activate(rooms[0]);
    });
    window.addEventListener("resize", () => {
      if (this.active?.atBottom) this.active.log.scrollTop = this.active.log.scrollHeight;
    });
  }
}

/** `#room1,room2` opens those rooms; bad names are skipped; none means the lobby. */
function hashRooms() {
  const rooms = [];
  for (const part of location.hash.slice(1).split(",")) {
    let room;
    try {
      room = decodeURIComponent(part).replace(/^#/, "").trim();
    } catch {
      continue;
    }
    if (room && roomError(room) === null && !rooms.includes(room)) rooms.push(room);
  }
  return rooms.length ? rooms : [DEFAULT_ROOM];
}

const app = new App();
window.chatApp = app;
app.start();
