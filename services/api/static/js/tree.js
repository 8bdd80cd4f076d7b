// Which branch of the conversation's message tree is shown.
//
// Messages link to their parent through `parentId`; editing a question or regenerating an
// answer adds a sibling. The page shows one path from the first message down, taking at each
// message the child the user picked, or else the newest. A server without branches sends no
// `parentId`: then each message follows the one created before it.

const ROOT = "";

export function hasBranches(messages) {
  return messages.some((m) => "parentId" in m);
}

export class BranchChoice {
  constructor() {
    this.picked = new Map();
  }

  pick(parentId, childId) {
    this.picked.set(parentId ?? ROOT, childId);
  }

  // A new message shows up at once: its parent goes back to showing the newest child.
  forget(parentId) {
    this.picked.delete(parentId ?? ROOT);
  }

  // [{message, siblings, index}] from the first message to the end of the chosen branch.
  path(messages) {
    const children = new Map();
    let previous = null;
    for (const message of messages) {
      const parent = ("parentId" in message ? message.parentId : previous?.id) ?? ROOT;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(message);
      previous = message;
    }
    const path = [];
    let key = ROOT;
    while (children.has(key)) {
      const kids = children.get(key);
      const chosen = kids.find((m) => m.id === this.picked.get(key)) ?? kids[kids.length - 1];
      const siblings = kids.filter((m) => m.from === chosen.from);
      path.push({ message: chosen, siblings, index: siblings.indexOf(chosen) });
      key = chosen.id;
    }
    return path;
  }
}
