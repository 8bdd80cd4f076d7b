// The shown branch of a conversation as DOM, updated in place: a message's element is kept
// while it streams, so an open reasoning section or a text selection survives new tokens.

import { renderMarkdown } from "./markdown.js";

const FINISHED = new Set(["completed", "failed"]);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, className, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

export function statusText(message) {
  if (message.from === "user") return "";
  if (message.status === "created") return "waiting";
  if (message.status === "streaming") return message.reasoning && !message.message ? "thinking" : "streaming";
  if (message.status === "failed") return `failed: ${message.error ?? "unknown error"}`;
  if (message.stopped || message.finishReason === "stopped") return "stopped";
  if (message.finishReason && message.finishReason !== "stop") return `ended: ${message.finishReason}`;
  return "";
}

function usageText(message) {
  const usage = message.usage;
  if (!usage) return "";
  const about = usage.estimated ? "≈ " : "";
  return `${about}${usage.promptTokens} in · ${usage.completionTokens} out · ${usage.totalTokens} tokens`;
}

export class MessageView {
  // actions: edit(message, text), regenerate(message), pick(message), canBranch(), refresh()
  constructor(container, actions) {
    this.container = container;
    this.actions = actions;
    this.cards = new Map();
  }

  clear() {
    this.cards.clear();
    this.container.replaceChildren();
  }

  render(path) {
    const nearBottom = this.container.scrollHeight - this.container.scrollTop - this.container.clientHeight < 80;
    const shown = new Set(path.map((entry) => entry.message.id));
    for (const [id, card] of this.cards) {
      if (!shown.has(id)) {
        card.root.remove();
        this.cards.delete(id);
      }
    }
    path.forEach((entry, position) => {
      const card = this.cards.get(entry.message.id) ?? this.create(entry.message);
      this.update(card, entry);
      if (this.container.children[position] !== card.root) {
        this.container.insertBefore(card.root, this.container.children[position] ?? null);
      }
    });
    if (nearBottom) this.container.scrollTop = this.container.scrollHeight;
  }

  create(message) {
    const root = element("article", `message ${message.from}`);
    root.dataset.id = message.id;
    const header = element("header", "meta");
    const who = element("span", "who", message.from === "user" ? "You" : "Assistant");
    const status = element("span", "status");
    const branches = element("nav", "branches");
    header.append(who, status, branches);
    const reasoning = element("details", "reasoning");
    reasoning.append(element("summary", "", "Reasoning"), element("div", "reasoning-text"));
    const body = element("div", "body");
    const footer = element("footer", "foot");
    const usage = element("span", "usage");
    const actions = element("span", "actions");
    footer.append(usage, actions);
    root.append(header, reasoning, body, footer);
    const card = { root, status, branches, reasoning, body, usage, actions, shown: {} };
    this.cards.set(message.id, card);
    return card;
  }

  update(card, { message, siblings, index }) {
    const shown = card.shown;
    if (card.editing) return;
    if (shown.text !== message.message) {
      renderMarkdown(card.body, message.message);
      shown.text = message.message;
    }
    const reasoning = message.reasoning ?? "";
    if (shown.reasoning !== reasoning) {
      card.reasoning.hidden = !reasoning;
      card.reasoning.querySelector(".reasoning-text").textContent = reasoning;
      shown.reasoning = reasoning;
    }
    const status = statusText(message);
    card.root.dataset.status = message.status;
    card.status.textContent = status;
    card.status.className = `status ${status.split(":")[0]}`;
    const model = message.model ? ` · ${message.model}` : "";
    card.usage.textContent = usageText(message) + (message.usage ? model : "");
    const key = `${message.status}|${siblings.map((m) => m.id).join(",")}|${index}|${this.actions.canBranch()}`;
    if (shown.key !== key) {
      this.renderBranches(card, siblings, index);
      this.renderActions(card, message);
      shown.key = key;
    }
  }

  renderBranches(card, siblings, index) {
    card.branches.replaceChildren();
    if (siblings.length < 2) return;
    const previous = button("‹", "previous", () => this.actions.pick(siblings[index - 1]));
    const next = button("›", "next", () => this.actions.pick(siblings[index + 1]));
    previous.disabled = index === 0;
    next.disabled = index === siblings.length - 1;
    previous.setAttribute("aria-label", "previous version");
    next.setAttribute("aria-label", "next version");
    card.branches.append(previous, element("span", "position", `${index + 1}/${siblings.length}`), next);
  }

  renderActions(card, message) {
    card.actions.replaceChildren();
    if (message.from === "user" && this.actions.canBranch()) {
      card.actions.append(button("Edit", "edit", () => this.startEdit(card, message)));
    }
    if (message.from === "assistant" && FINISHED.has(message.status) && this.actions.canBranch()) {
      card.actions.append(button("Regenerate", "regenerate", () => this.actions.regenerate(message)));
    }
  }

  startEdit(card, message) {
    card.editing = true;
    const box = element("textarea", "edit-box");
    box.value = message.message;
    const save = button("Send", "save", async () => {
      const text = box.value;
      if (!text.trim()) return;
      save.disabled = true;
      if (await this.actions.edit(message, text)) finish();
      else save.disabled = false;
    });
    const cancel = button("Cancel", "cancel", () => finish());
    const finish = () => {
      card.editing = false;
      card.shown = {};
      card.body.classList.remove("editing");
      this.actions.refresh();
    };
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        save.click();
      } else if (event.key === "Escape") {
        finish();
      }
    });
    card.body.classList.add("editing");
    card.body.replaceChildren(box, element("div", "edit-actions"));
    card.body.lastChild.append(save, cancel);
    box.focus();
  }
}
