// The REST side of the API, and the user's token (kept in this tab's session storage).

const TOKEN_KEY = "chat.token";
const PAGE_SIZE = 20;

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// `#token=...` (as the dev-token command prints it) goes to session storage and out of the URL,
// so it is neither bookmarked nor left in the history.
export function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const value = params.get("token");
  if (!value) return;
  setToken(value);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

export function streamUrl(conversationId) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/conversations/${encodeURIComponent(conversationId)}/stream`);
  const value = token();
  if (value) url.searchParams.set("access_token", value);
  return url.toString();
}

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const value = token();
  if (value) headers.Authorization = `Bearer ${value}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new HttpError(0, "the API cannot be reached");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new HttpError(response.status, describe(response, data));
  return data;
}

// The API's error bodies: FastAPI's `detail` (a string, or a list of field errors) or `error`.
function describe(response, data) {
  const detail = data?.detail ?? data?.error;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc ?? []).slice(1).join(".")}: ${item.msg}`).join("; ");
  }
  if (detail && typeof detail.message === "string") return detail.message;
  return `${response.status} ${response.statusText}`;
}

const path = (...parts) => parts.map(encodeURIComponent).join("/");

export const api = {
  listConversations(before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", before);
    return call("GET", `/conversations?${query}`);
  },
  renameConversation: (id, title) => call("PATCH", `/conversations/${path(id)}`, { title }),
  deleteConversation: (id) => call("DELETE", `/conversations/${path(id)}`),
  messages: (id) => call("GET", `/conversations/${path(id)}/messages`),
  chat: (body) => call("POST", "/chat", body),
  stop: (id, messageId) => call("POST", `/conversations/${path(id, "messages", messageId, "stop")}`),
  regenerate: (id, messageId) =>
    call("POST", `/conversations/${path(id, "messages", messageId, "regenerate")}`),
};
