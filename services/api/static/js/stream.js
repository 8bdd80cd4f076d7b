// One conversation's messages, rebuilt from its WebSocket: the snapshot, then the events.
//
// The API guarantees that the snapshot plus the events after it rebuild every message exactly
// (deltas continue from the snapshot's `seq`, rising by 1). So a reconnection needs no
// re-fetching: the fresh snapshot replaces everything (except a reply this page already shows
// further along, see `kept`), and the deltas carry on from it. A delta
// whose `seq` is already applied is skipped; one that skips ahead means something was missed,
// and the only sound repair is a new snapshot: the socket is reopened.

import { streamUrl } from "./api.js";

const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 4000;
const REFUSED_RETRY_MS = 5000;
const NORMAL = 1000;
const POLICY = 1008;
const UNAUTHORIZED = 4401;
const RESYNC = 4000;
const FINISHED = new Set(["completed", "failed"]);

export class ConversationStream {
  // handlers: onChange(stream, created?), onState(state, detail), onDeleted(), onRefused()
  constructor(conversationId, handlers) {
    this.conversationId = conversationId;
    this.handlers = handlers;
    this.messages = new Map();
    this.socket = null;
    this.retries = 0;
    this.timer = null;
    this.closed = false;
    this.open();
  }

  list() {
    return [...this.messages.values()];
  }

  inFlight() {
    return this.list().filter((m) => m.from === "assistant" && !FINISHED.has(m.status));
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket?.close(NORMAL);
  }

  open() {
    this.handlers.onState(this.retries ? "reconnecting" : "connecting");
    const socket = new WebSocket(streamUrl(this.conversationId));
    let opened = false;
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
    };
    socket.onmessage = (event) => {
      if (this.socket === socket) this.apply(JSON.parse(event.data));
    };
    socket.onclose = (event) => {
      if (this.socket !== socket || this.closed) return;
      if (event.code === UNAUTHORIZED) {
        this.handlers.onState("unauthorized");
        this.handlers.onRefused();
        return;
      }
      if (!opened) this.handlers.onRefused();
      this.retry(event.code === POLICY ? REFUSED_RETRY_MS : null, event.reason);
    };
  }

  retry(delay, reason) {
    const wait = delay ?? Math.min(RETRY_FIRST_MS * 2 ** this.retries, RETRY_MAX_MS);
    this.retries += 1;
    this.handlers.onState("reconnecting", reason);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), wait);
  }

  resync() {
    this.socket?.close(RESYNC, "missed an event");
  }

  apply(frame) {
    switch (frame.type) {
      case "snapshot":
        this.messages = new Map(frame.messages.map((m) => [m.id, this.kept(m)]));
        this.retries = 0;
        this.handlers.onState("live");
        this.handlers.onChange(this);
        return;
      case "message.delta":
        this.applyDelta(frame);
        return;
      case "message.created":
        this.messages.set(frame.message.id, frame.message);
        this.handlers.onChange(this, frame.message);
        return;
      case "message.updated":
      case "message.completed":
      case "message.failed":
        this.messages.set(frame.message.id, this.kept(frame.message));
        this.handlers.onChange(this);
        return;
      case "conversation.deleted":
        this.closed = true;
        this.handlers.onState("deleted");
        this.handlers.onDeleted();
        return;
      default:
        // An event type this page does not know yet: nothing to rebuild from it.
        return;
    }
  }

  // What to show of `incoming`: it, unless this page is further along the same attempt. An API
  // instance that started after a reply began knows it only as far as MongoDB has it (written
  // about once a second), so its snapshot can be behind what this page showed; the text would
  // shrink, then grow back. The deltas that follow carry on past it, and those already shown
  // are skipped by their `seq`.
  kept(incoming) {
    const current = this.messages.get(incoming.id);
    const behind =
      current &&
      incoming.status === "streaming" &&
      current.attempt === incoming.attempt &&
      current.seq > incoming.seq;
    return behind ? current : incoming;
  }

  applyDelta(frame) {
    const current = this.messages.get(frame.messageId);
    if (!current || frame.seq > current.seq + 1) {
      this.resync();
      return;
    }
    if (frame.seq <= current.seq) return;
    this.messages.set(current.id, {
      ...current,
      seq: frame.seq,
      message: current.message + (frame.delta ?? ""),
      reasoning: frame.reasoning ? (current.reasoning ?? "") + frame.reasoning : current.reasoning,
    });
    this.handlers.onChange(this);
  }
}
