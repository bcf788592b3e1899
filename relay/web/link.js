// One room's WebSocket: connect, resume after a drop, deliver what was typed offline.
// The browser twin of tui/connection.py's RoomLink; the page only sees events and states.
//
// States: "connecting" (first connect), "live", "resuming" (dropped; reconnecting with
// since/epoch after a backoff delay), "gap" (the relay could not replay everything we missed:
// the latest messages follow, then "live"), "offline" (given up: kicked, closed, refused, or
// waiting for an access key).

import { Backoff, CLOSE_POLICY, FINAL_CLOSES, SUBPROTOCOL, splitFrame } from "./protocol.js";

const SEEN_IDS = 4096;
const OPEN_TIMEOUT_MS = 10000;

/** The token and name every link shares, so all tabs of one page are one user.
 *
 * Without a token the first link connects alone and the others wait for its welcome;
 * connecting at once would give each room a different random name. The token is kept in
 * localStorage, so a reload (or a new tab) is the same user. */
export class Identity {
  constructor(storage) {
    this.storage = storage;
    this.token = storage.get("token");
    this.name = null;
    this.claimed = false;
    this.waiters = [];
  }

  async ticket() {
    while (this.token === null && this.claimed) {
      await new Promise((resolve) => this.waiters.push(resolve));
    }
    if (this.token === null) {
      this.claimed = true;
      return { token: null, first: true };
    }
    return { token: this.token, first: false };
  }

  release() {
    this.claimed = false;
    this.wake();
  }

  welcomed(token, name) {
    this.name = name;
    if (token && token !== this.token) {
      this.token = token;
      this.storage.set("token", token);
    }
    this.claimed = false;
    this.wake();
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }
}

let cidCounter = 0;

function newCid() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  cidCounter += 1;
  return `w-${random[0].toString(16)}${random[1].toString(16)}-${cidCounter}`;
}

export class RoomLink {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {Identity} options.identity
   * @param {(event: object) => void} options.sink every event, after resume bookkeeping
   * @param {(state: string, detail: object) => void} options.onState
   * @param {() => string | null} options.key the access key, or null
   */
  constructor({ room, identity, sink, onState, key, backlog = null, backoff = new Backoff() }) {
    this.room = room;
    this.identity = identity;
    this.sink = sink;
    this.onState = onState;
    this.key = key;
    this.backlog = backlog;
    this.backoff = backoff;
    this.state = "idle";
    this.epoch = null;
    this.lastSeq = null;
    this.welcomed = false;
    this.ready = false;
    this.stopped = true;
    this.ws = null;
    this.generation = 0;
    this.outbox = new Map();
    this.queued = [];
    this.read = null;
    this.replayLeft = 0;
    this.seen = new Set();
    this.seenOrder = [];
    this.wakeUp = null;
  }

  // -- what the page calls ----------------------------------------------------------------

  /** Queue a message; sent now if live, else after the next resume. Returns its cid. */
  say(text) {
    const cid = newCid();
    const request = { type: "say", text, cid };
    this.outbox.set(cid, { request, generation: -1 });
    this.flush();
    return cid;
  }

  /** Any other request (nick, dm, who, history, topic ...), sent once, in order. */
  send(request) {
    this.queued.push(request);
    this.flush();
  }

  /** Only the newest marker matters, so it is kept apart from the queue. */
  markRead(seq) {
    this.read = seq;
    this.flush();
  }

  get unsent() {
    return this.outbox.size;
  }

  url(token) {
    const query = new URLSearchParams();
    if (token) query.set("token", token);
    if (this.epoch !== null && this.lastSeq !== null) {
      query.set("since", String(this.lastSeq));
      query.set("epoch", this.epoch);
    } else if (this.backlog !== null) {
      query.set("backlog", String(this.backlog));
    }
    const key = this.key();
    if (key) query.set("key", key);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const suffix = query.size ? `?${query}` : "";
    return `${scheme}//${location.host}/chat/${encodeURIComponent(this.room)}${suffix}`;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    this.retryNow();
    if (this.ws !== null) this.ws.close(1000, "left");
  }

  /** Skip the rest of a backoff wait (the network came back, the tab became visible). */
  retryNow() {
    if (this.wakeUp !== null) this.wakeUp();
  }

  // -- the connection loop ----------------------------------------------------------------

  async run() {
    let attempt = 0;
    while (!this.stopped) {
      const { token, first } = await this.identity.ticket();
      if (this.stopped) {
        if (first) this.identity.release();
        break;
      }
      this.setState(this.epoch === null ? "connecting" : "resuming", {});
      const { code, reason } = await this.session(token);
      this.ready = false;
      if (first && !this.welcomed) this.identity.release();
      if (this.stopped) break;
      if (FINAL_CLOSES.has(code)) {
        this.finish(FINAL_CLOSES.get(code));
        return;
      }
      if (code === CLOSE_POLICY && /\bkey/i.test(reason)) {
        this.finish(reason, { needKey: true });
        return;
      }
      if (code === CLOSE_POLICY && !this.welcomed) {
        this.finish(reason || "refused by the relay");
        return;
      }
      attempt = this.welcomed ? 0 : attempt + 1;
      const delay = this.backoff.delay(attempt);
      const detail = code ? `closed (${code}${reason ? ` ${reason}` : ""})` : "";
      this.setState("resuming", { retryIn: delay, detail });
      await this.sleep(delay * 1000);
    }
    this.setState("offline", { detail: "left" });
  }

  finish(detail, extra = {}) {
    this.stopped = true;
    this.setState("offline", { detail, ...extra });
  }

  session(token) {
    return new Promise((resolve) => {
      this.generation += 1;
      this.welcomed = false;
      let ws;
      try {
        ws = new WebSocket(this.url(token), SUBPROTOCOL);
      } catch (error) {
        resolve({ code: 0, reason: String(error) });
        return;
      }
      this.ws = ws;
      const timer = setTimeout(() => ws.close(), OPEN_TIMEOUT_MS);
      ws.onopen = () => clearTimeout(timer);
      ws.onmessage = (message) => {
        if (typeof message.data !== "string") return;
        for (const event of splitFrame(message.data)) this.receive(event);
      };
      ws.onclose = (close) => {
        clearTimeout(timer);
        if (this.ws === ws) this.ws = null;
        resolve({ code: close.code, reason: close.reason || "" });
      };
    });
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wakeUp = null;
        resolve();
      }
      this.wakeUp = done;
    });
  }

  flush() {
    const ws = this.ws;
    if (!this.ready || ws === null || ws.readyState !== WebSocket.OPEN) return;
    for (const pending of this.outbox.values()) {
      if (pending.generation !== this.generation) {
        pending.generation = this.generation;
        ws.send(JSON.stringify(pending.request));
      }
    }
    while (this.queued.length) ws.send(JSON.stringify(this.queued.shift()));
    if (this.read !== null) {
      ws.send(JSON.stringify({ type: "read", seq: this.read }));
      this.read = null;
    }
  }

  // -- events from the relay --------------------------------------------------------------

  receive(event) {
    const kind = event.type;
    if (kind === "welcome") {
      this.welcome(event);
    } else if (kind === "message") {
      // A replayed message we already showed still counts towards the replay's end.
      if (!this.track(event)) {
        this.replayed();
        return;
      }
    } else if (kind === "error" && typeof event.cid === "string") {
      // The relay names the request an error answers: a refused say is not retried.
      const pending = this.outbox.get(event.cid);
      if (pending !== undefined) {
        this.outbox.delete(event.cid);
        event = { ...event, refused: pending.request };
      }
    }
    this.sink(event);
    if (kind === "message") this.replayed();
  }

  replayed() {
    if (this.replayLeft > 0) {
      this.replayLeft -= 1;
      if (this.replayLeft === 0) this.goLive();
    }
  }

  welcome(event) {
    if (event.epoch !== this.epoch) {
      this.epoch = typeof event.epoch === "string" ? event.epoch : null;
      this.lastSeq = null;
    }
    this.welcomed = true;
    this.identity.welcomed(String(event.token ?? ""), String(event.you ?? ""));
    this.replayLeft = Number.isInteger(event.replay) && event.replay > 0 ? event.replay : 0;
    if (event.recovered === false) this.setState("gap", {});
    if (this.replayLeft === 0) {
      if (Number.isInteger(event.seq)) this.lastSeq = Math.max(this.lastSeq ?? 0, event.seq);
      this.goLive();
    }
  }

  /** Replay is in: says it held are no longer pending, so the rest can go. */
  goLive() {
    this.ready = true;
    this.setState("live", {});
    this.flush();
  }

  /** Remember a message; false when it was already delivered (a resume overlapping). */
  track(event) {
    if (typeof event.id === "string") {
      if (this.seen.has(event.id)) return false;
      this.seen.add(event.id);
      this.seenOrder.push(event.id);
      if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift());
    }
    if (Number.isInteger(event.seq)) this.lastSeq = Math.max(this.lastSeq ?? 0, event.seq);
    if (typeof event.cid === "string") this.outbox.delete(event.cid);
    return true;
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }
}
