// The user's conversations, most recently active first, more loaded as the list scrolls.
// A server without `GET /conversations` gets a conversation-id field instead.

import { api, HttpError } from "./api.js";

const MISSING = new Set([404, 405]);

export class ConversationList {
  // actions: select(id), renamed(id, title), deleted(id), error(err)
  constructor(root, actions) {
    this.root = root;
    this.list = root.querySelector("#conversation-list");
    this.fallback = root.querySelector("#open-by-id");
    this.actions = actions;
    this.items = [];
    this.next = null;
    this.loading = false;
    this.reloads = 0;
    this.selected = null;
    this.list.addEventListener("scroll", () => this.maybeMore());
    this.fallback.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = this.fallback.elements.id.value.trim();
      if (id) this.actions.select(id);
    });
  }

  // The first page again; conversations already loaded below it stay, with their cursor
  // (a conversation that moved up is in the first page now, and is not listed twice).
  async reload() {
    const ticket = ++this.reloads;
    try {
      const page = await api.listConversations();
      if (ticket !== this.reloads) return; // a later reload is under way: its answer is newer
      const fresh = new Set(page.conversations.map((c) => c.conversationId));
      const below = this.items.filter((c) => !fresh.has(c.conversationId));
      const loadedMore = this.items.length > page.conversations.length && this.supported;
      this.items = page.conversations.concat(loadedMore ? below : []);
      if (!loadedMore) this.next = page.next;
      this.supported = true;
      this.fallback.hidden = true;
    } catch (error) {
      if (ticket !== this.reloads) return;
      if (!(error instanceof HttpError && MISSING.has(error.status))) return this.actions.error(error);
      this.supported = false;
      this.fallback.hidden = false;
      this.items = this.selected ? [{ conversationId: this.selected, title: this.selected }] : [];
    }
    this.render();
    this.maybeMore();
  }

  // Another user (a new token): nothing of the old list may stay.
  clear() {
    this.items = [];
    this.next = null;
    this.supported = undefined;
    this.render();
  }

  async maybeMore() {
    if (!this.next || this.loading) return;
    if (this.list.scrollTop + this.list.clientHeight < this.list.scrollHeight - 40) return;
    this.loading = true;
    try {
      const page = await api.listConversations(this.next);
      const known = new Set(this.items.map((c) => c.conversationId));
      this.items.push(...page.conversations.filter((c) => !known.has(c.conversationId)));
      this.next = page.next;
      this.render();
    } catch (error) {
      this.actions.error(error);
    } finally {
      this.loading = false;
    }
    this.maybeMore();
  }

  select(id) {
    this.selected = id;
    if (this.supported === false) {
      this.fallback.elements.id.value = id ?? "";
      this.items = id ? [{ conversationId: id, title: id }] : [];
    }
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.items.map((item) => this.renderItem(item)));
  }

  renderItem(item) {
    const row = document.createElement("li");
    row.className = "conversation";
    row.dataset.id = item.conversationId;
    if (item.conversationId === this.selected) row.classList.add("selected");
    const title = document.createElement("button");
    title.type = "button";
    title.className = "title";
    title.append(document.createTextNode(item.title || "New conversation"));
    if (item.updatedAt) {
      const when = document.createElement("small");
      when.textContent = new Date(item.updatedAt).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
      title.append(when);
    }
    title.title = item.title ?? "";
    title.addEventListener("click", () => this.actions.select(item.conversationId));
    row.append(title);
    if (this.supported) row.append(this.tool("✎", "rename", () => this.rename(row, item)), this.tool("✕", "delete", () => this.remove(item)));
    return row;
  }

  tool(label, name, onClick) {
    const node = document.createElement("button");
    node.type = "button";
    node.className = `tool ${name}`;
    node.textContent = label;
    node.setAttribute("aria-label", `${name} conversation`);
    node.title = `${name[0].toUpperCase()}${name.slice(1)} conversation`;
    node.addEventListener("click", onClick);
    return node;
  }

  rename(row, item) {
    const input = document.createElement("input");
    input.className = "rename-box";
    input.value = item.title ?? "";
    input.maxLength = 200;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== item.title) {
        try {
          const updated = await api.renameConversation(item.conversationId, title);
          item.title = updated?.title ?? title;
        } catch (error) {
          this.actions.error(error);
        }
      }
      this.render();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    row.replaceChildren(input);
    input.focus();
    input.select();
  }

  async remove(item) {
    if (!confirm(`Delete "${item.title || item.conversationId}"? This cannot be undone.`)) return;
    try {
      await api.deleteConversation(item.conversationId);
    } catch (error) {
      if (!(error instanceof HttpError && error.status === 404)) return this.actions.error(error);
    }
    this.forget(item.conversationId);
    this.actions.deleted(item.conversationId);
  }

  forget(id) {
    this.items = this.items.filter((c) => c.conversationId !== id);
    this.render();
  }
}
