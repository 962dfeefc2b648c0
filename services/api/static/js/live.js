// A job's WebSocket: reconnects with exponential backoff and resumes with ?after=<last event id>,
// so that no event is missed across a dropped connection.

import { withToken } from "./api.js";

const CLOSE_NORMAL = 1000;
const CLOSE_NOT_FOUND = 4404;
const PING_MS = 20_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

/**
 * Watches `/ws/training/{jobId}` (or `path` + jobId: `/ws/replay/` for a replay). `after`: the
 * event id the caller's data already reflects.
 * Callbacks: onMessage(msg), onState(state, detail) with state one of
 * "connecting" | "live" | "retrying" | "closed" | "error".
 */
export class LiveJob {
  constructor(jobId, { after = null, onMessage, onState, path = "/ws/training/" }) {
    this.jobId = jobId;
    this.path = path;
    this.after = after;
    this.onMessage = onMessage;
    this.onState = onState ?? (() => {});
    this.attempt = 0;
    this.stopped = false;
    this.socket = null;
    this.timer = null;
    this.ping = null;
    this.connect();
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = new URL(
      `${scheme}//${location.host}${this.path}${encodeURIComponent(this.jobId)}`,
    );
    if (this.after) url.searchParams.set("after", this.after);
    return withToken(url.toString());
  }

  connect() {
    this.timer = null;
    this.onState("connecting");
    const socket = new WebSocket(this.url());
    this.socket = socket;
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.event_id) this.after = message.event_id;
      if (message.event === "connected") this.onState("live");
      if (message.event === "training_status") this.attempt = 0;
      this.onMessage(message);
    };
    socket.onopen = () => {
      this.ping = setInterval(() => {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ event: "ping" }));
      }, PING_MS);
    };
    socket.onclose = (event) => {
      clearInterval(this.ping);
      if (this.socket !== socket || this.stopped) return;
      this.socket = null;
      if (event.code === CLOSE_NORMAL) {
        this.onState("closed", event.reason || "job finished");
      } else if (event.code === CLOSE_NOT_FOUND) {
        this.onState("error", event.reason || "no such job");
      } else {
        const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
        const jittered = delay / 2 + Math.random() * (delay / 2);
        this.attempt += 1;
        this.onState("retrying", jittered);
        this.timer = setTimeout(() => this.connect(), jittered);
      }
    };
  }

  /** Drop the current connection as if the network failed (the client reconnects). */
  drop() {
    this.socket?.close(4000, "dropped by client");
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.ping);
    this.socket?.close(CLOSE_NORMAL, "client left");
    this.socket = null;
  }
}
