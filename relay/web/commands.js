// Slash commands: the TUI's set (its commands module), parsed the same way.

// name -> [argument synopsis, help text, needs an argument]
export const COMMANDS = new Map([
  ["join", ["ROOM", "open a tab for ROOM", true]],
  ["part", ["", "leave the current room and close its tab", false]],
  ["nick", ["NAME", "change your name in every room", true]],
  ["msg", ["NAME TEXT", "send a direct message (opens a DM tab)", true]],
  ["accept", ["[NAME]", "accept NAME's request to send you private messages", false]],
  ["decline", ["[NAME]", "decline NAME's request to send you private messages", false]],
  ["topic", ["TEXT", "set the room topic (room owner only)", true]],
  ["kick", ["NAME", "remove NAME from the room (room owner only)", true]],
  ["close", ["", "close the room for everyone in it (room owner only)", false]],
  ["who", ["", "list the members of the current room", false]],
  ["rooms", ["", "list the relay's active rooms", false]],
  ["clear", ["", "clear the current tab's log", false]],
  ["help", ["", "show keys and commands", false]],
  ["quit", ["", "leave every room (reload the page to come back)", false]],
]);

export class CommandError extends Error {}

/** `//text` sends `/text` literally, the IRC convention for a message starting with '/'. */
export function isCommand(line) {
  return line.startsWith("/") && !line.startsWith("//");
}

export function literal(line) {
  return line.startsWith("//") ? line.slice(1) : line;
}

/** First word and the rest, for `/msg NAME TEXT`. */
export function split(arg) {
  const space = arg.indexOf(" ");
  if (space < 0) return [arg, ""];
  return [arg.slice(0, space), arg.slice(space + 1).trim()];
}

export function parse(line) {
  const body = line.slice(1);
  const space = body.indexOf(" ");
  const name = (space < 0 ? body : body.slice(0, space)).toLowerCase();
  const arg = space < 0 ? "" : body.slice(space + 1).trim();
  const spec = COMMANDS.get(name);
  if (spec === undefined) throw new CommandError(`unknown command /${name} (try /help)`);
  const [synopsis, , needsArg] = spec;
  if (needsArg && !arg) throw new CommandError(`usage: /${name} ${synopsis}`);
  if (name === "msg" && !split(arg)[1]) throw new CommandError(`usage: /msg ${synopsis}`);
  return { name, arg };
}

export function helpLines() {
  return [...COMMANDS].map(([name, [synopsis, text]]) =>
    `/${name} ${synopsis}`.padEnd(16) + text,
  );
}
