// The HTTP API from the page: JSON requests and Server-Sent Events, both through fetch so a
// bearer token can be sent (EventSource cannot send headers). The token lives in
// sessionStorage only, goes out as an Authorization header only (never in a URL or a cookie),
// and a 401 asks for it again.
import { askToken } from "./dialogs.js";

const TOKEN_KEY = "resumeflow.token";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  // The server's error in words, e.g. "409 RunLocked: run "r1" is held by …".
  describe() {
    return `${this.status ? this.status + " " : ""}${this.type}: ${this.message}`;
  }
}

function headers(extra) {
  const out = { ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

// One prompt at a time however many requests were refused together.
let asking = null;
async function reauthenticate() {
  const hadToken = sessionStorage.getItem(TOKEN_KEY) !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (!asking) {
    asking = askToken(hadToken ? "The server refused that token. Enter the right one." : null)
      .then((token) => sessionStorage.setItem(TOKEN_KEY, token))
      .finally(() => { asking = null; });
  }
  await asking;
}

async function send(path, init) {
  for (;;) {
    const resp = await fetch(path, { ...init, headers: headers(init.headers), cache: "no-store" });
    if (resp.status !== 401) return resp;
    await resp.body?.cancel();
    await reauthenticate();
  }
}

async function refusal(resp) {
  const text = await resp.text();
  let error = null;
  try { error = JSON.parse(text).error; } catch { /* not the JSON error document */ }
  return new ApiError(resp.status, error?.type ?? "HTTPError", error?.message ?? (text.slice(0, 300) || resp.statusText));
}

// GET (or, with a body or a method, POST) a JSON document; a refusal throws ApiError.
export async function api(path, { method, body, signal } = {}) {
  const init = { method: method ?? (body === undefined ? "GET" : "POST"), signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await send(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "NetworkError", `the server cannot be reached (${err.message})`);
  }
  if (!resp.ok) throw await refusal(resp);
  return resp.status === 204 ? null : resp.json();
}

// The messages of an SSE stream as {event, data (parsed JSON), id}; ends when the server
// ends the stream. Comments (keep-alives) are skipped.
export async function* events(path, { signal } = {}) {
  const resp = await send(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!resp.ok) throw await refusal(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let msg = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (msg.data.length) {
            const text = msg.data.join("\n");
            let data;
            try { data = JSON.parse(text); } catch { data = text; }
            yield { event: msg.event, data, id: msg.id };
          }
          msg = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") msg.event = value;
        else if (field === "data") msg.data.push(value);
        else if (field === "id") msg.id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
