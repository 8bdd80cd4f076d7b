// The chat page: wires the conversation list, the live conversation and the message box.

import { api, HttpError, setToken, takeTokenFromFragment, token } from "./api.js";
import { ConversationList } from "./sidebar.js";
import { ConversationStream } from "./stream.js";
import { BranchChoice, hasBranches } from "./tree.js";
import { MessageView } from "./view.js";

const $ = (selector) => document.querySelector(selector);
const LIST_REFRESH_MS = 300;

const state = {
  conversationId: null,
  stream: null,
  choice: new BranchChoice(),
  path: [],
};

const view = new MessageView($("#messages"), {
  edit: editQuestion,
  regenerate,
  pick: (message) => {
    state.choice.pick(message.parentId, message.id);
    render();
  },
  canBranch: () => hasBranches(state.stream?.list() ?? []),
  refresh: () => render(),
});

const sidebar = new ConversationList($("#sidebar"), {
  select: (id) => {
    select(id);
    document.body.classList.remove("menu-open");
  },
  deleted: (id) => {
    if (id === state.conversationId) select(null);
  },
  error: showError,
});

function newConversationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function select(id) {
  state.stream?.close();
  state.stream = null;
  state.conversationId = id;
  state.choice = new BranchChoice();
  view.clear();
  sidebar.select(id);
  history.replaceState(null, "", id ? `#c=${encodeURIComponent(id)}` : location.pathname);
  $("#empty").hidden = Boolean(id);
  if (id) {
    state.stream = new ConversationStream(id, {
      onChange: (stream, created) => {
        if (created) state.choice.forget(created.parentId);
        render();
        if (created || !stream.inFlight().length) refreshListSoon();
      },
      onState: showConnection,
      onDeleted: () => {
        sidebar.forget(id);
        select(null);
        showError(new Error("This conversation was deleted."));
      },
      onRefused: () => checkAccess(id),
    });
  } else {
    showConnection("idle");
    render();
  }
}

let renderPending = false;
function render() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    const messages = state.stream?.list() ?? [];
    state.path = state.choice.path(messages);
    view.render(state.path);
    const streaming = state.stream?.inFlight() ?? [];
    $("#stop").hidden = streaming.length === 0;
    $("#send-now").hidden = streaming.length === 0;
  });
}

let refreshTimer = null;
function refreshListSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => sidebar.reload(), LIST_REFRESH_MS);
}

function showConnection(connection, detail) {
  const labels = {
    idle: "",
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    unauthorized: "sign-in needed",
    deleted: "deleted",
  };
  const node = $("#connection");
  node.textContent = labels[connection] ?? connection;
  node.title = detail ?? "";
  node.dataset.state = connection;
}

function showError(error) {
  if (error instanceof HttpError && error.status === 401) {
    askForToken();
    return;
  }
  const node = $("#error");
  node.querySelector(".text").textContent = error.message;
  node.hidden = false;
}

// A socket refused before it opened may be a missing or expired token: REST says which.
async function checkAccess(id) {
  try {
    await api.messages(id);
  } catch (error) {
    if (error instanceof HttpError && error.status === 401) askForToken();
  }
}

function askForToken() {
  const dialog = $("#token-dialog");
  if (dialog.open) return;
  dialog.querySelector("input").value = "";
  dialog.querySelector(".had-token").hidden = !token();
  dialog.showModal();
}

$("#token-dialog form").addEventListener("submit", () => {
  setToken($("#token-dialog input").value.trim());
  sidebar.clear();
  sidebar.reload();
  select(state.conversationId);
});

// The branch the next message continues: the last message shown (none in a new conversation).
function parentForNewMessage() {
  const messages = state.stream?.list() ?? [];
  if (!hasBranches(messages) || !state.path.length) return undefined;
  return state.path[state.path.length - 1].message.id;
}

// `interrupt`: the reply being written stops (its text kept) and this message is answered next;
// otherwise it is answered after the replies before it (`ifBusy` left at its default).
async function send(text, interrupt) {
  if (!state.conversationId) select(newConversationId());
  const body = { message: text, conversationId: state.conversationId };
  if (interrupt) body.ifBusy = "interrupt";
  const parentId = parentForNewMessage();
  if (parentId) body.parentId = parentId;
  await api.chat(body);
}

async function editQuestion(message, text) {
  try {
    await api.chat({ message: text, conversationId: state.conversationId, parentId: message.parentId });
    return true;
  } catch (error) {
    showError(error);
    return false;
  }
}

async function regenerate(message) {
  try {
    await api.regenerate(state.conversationId, message.id);
  } catch (error) {
    showError(error);
  }
}

async function stopReply(message) {
  try {
    await api.stop(state.conversationId, message.id);
  } catch (error) {
    showError(error);
  }
}

const box = $("#message-box");
$("#composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = box.value;
  if (!text.trim()) return;
  const interrupt = event.submitter?.id === "send-now";
  const sendButton = $("#send");
  sendButton.disabled = true;
  try {
    await send(text, interrupt);
    $("#error").hidden = true;
    box.value = "";
    fitBox();
  } catch (error) {
    showError(error);
  } finally {
    sendButton.disabled = false;
    box.focus();
  }
});

box.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("#composer").requestSubmit();
  }
});

function fitBox() {
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
}
box.addEventListener("input", fitBox);

$("#stop").addEventListener("click", () => {
  for (const message of state.stream?.inFlight() ?? []) stopReply(message);
});
$("#new-chat").addEventListener("click", () => {
  select(null);
  document.body.classList.remove("menu-open");
  box.focus();
});
$("#menu").addEventListener("click", (event) => {
  event.stopPropagation();
  document.body.classList.toggle("menu-open");
});
// On a phone the list is a drawer over the conversation: a tap beside it closes it.
$("main").addEventListener("click", () => document.body.classList.remove("menu-open"));
$("#error .close").addEventListener("click", () => ($("#error").hidden = true));
// Conversations started or renamed in another tab or device show up when this tab is back.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") sidebar.reload();
});

takeTokenFromFragment();
const fragment = new URLSearchParams(location.hash.slice(1));
select(fragment.get("c"));
sidebar.reload();
