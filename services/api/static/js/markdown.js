// Markdown to safe DOM: marked parses, raw HTML in the text is shown as text, and DOMPurify
// cleans the result (links with `javascript:` and the like) before it reaches the page.

import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // `<script>` or `<img onerror>` typed by a user or written by the model is text to read.
    html: ({ text }) => escapeHtml(text),
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// Replace `element`'s content with `text` rendered as Markdown, code blocks with a copy button.
export function renderMarkdown(element, text) {
  const html = DOMPurify.sanitize(marked.parse(text), { FORBID_TAGS: ["style", "form"] });
  element.innerHTML = html;
  for (const pre of element.querySelectorAll("pre")) addCopyButton(pre);
}

function addCopyButton(pre) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", async () => {
    const code = pre.querySelector("code")?.textContent ?? pre.textContent;
    button.textContent = (await copyText(code)) ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  pre.append(button);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
