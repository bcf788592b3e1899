// chat.v1 for the browser: framing, names, backoff and the text rules shared by the page.
// Mirrors shared/protocol.py and tui/connection.py so both clients agree on what is valid.

export const SUBPROTOCOL = "chat.v1";
export const CLOSE_POLICY = 1008;
// The room owner kicked us (4001) or closed the room (4002): reconnecting would be wrong.
export const FINAL_CLOSES = new Map([
  [4001, "kicked by the room owner"],
  [4002, "the room was closed by its owner"],
]);

/** A relay frame may carry several events, one JSON object per line: split every frame. */
export function splitFrame(data) {
  const events = [];
  for (const line of String(data).split("\n")) {
    if (!line.trim()) continue;
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      continue;
    }
    if (event !== null && typeof event === "object" && !Array.isArray(event)) events.push(event);
  }
  return events;
}

const NAME_CHARS = /^[\p{L}\p{N}_.-]+$/u;

export function roomError(room) {
  if (room.length < 1 || room.length > 64) return "room name must be 1-64 characters";
  if (!NAME_CHARS.test(room)) return "room name may contain only letters, digits, '-', '_' and '.'";
  return null;
}

export function nameError(name) {
  if (name.length < 1 || name.length > 32) return "name must be 1-32 characters";
  if (!NAME_CHARS.test(name)) return "name may contain only letters, digits, '-', '_' and '.'";
  return null;
}

/** Exponential backoff with jitter (0.5 s doubling up to the cap), like the TUI's `Backoff`. */
export class Backoff {
  constructor(base = 0.5, cap = 30, random = Math.random) {
    this.base = base;
    this.cap = cap;
    this.random = random;
  }

  delay(attempt) {
    const ceiling = Math.min(this.cap, this.base * 2 ** Math.min(attempt, 20));
    return ceiling * (0.5 + 0.5 * this.random());
  }
}

export function mentions(text, name) {
  if (!name) return false;
  // A "-" outside a class must stay unescaped in a `u` pattern.
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![\\p{L}\\p{N}_.-])${escaped}(?![\\p{L}\\p{N}_-])`, "iu").test(text);
}

// Control characters cannot do anything in a DOM text node, but invisible ones hide what a
// line really says: show C0/C1 controls (ESC included) as visible symbols. Tab and newline stay.
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

export function visible(text) {
  return String(text).replace(CONTROLS, (ch) => {
    const code = ch.codePointAt(0);
    if (code < 0x20) return String.fromCodePoint(0x2400 + code);
    if (code === 0x7f) return "\u2421";
    return `\\x${code.toString(16)}`;
  });
}

/** One line for names, labels and topics: line breaks shown as a mark. */
export function oneLine(text) {
  return visible(text).replace(/\r?\n/g, " \u23ce ");
}

let CRC_TABLE = null;

/** crc32, as the TUI uses for name colours, so a name has the same hue in both clients. */
export function crc32(text) {
  if (CRC_TABLE === null) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) {
    crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

export function colorIndex(name) {
  return crc32(name.toLowerCase()) % 10;
}
