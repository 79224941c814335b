// Modal dialogs: the token prompt and the confirmation of an action. Each exists in the
// document only while it waits for an answer, so `[data-action="confirm"]` is present
// exactly while a confirmation is pending.
import { el } from "./dom.js";

function open(dialog) {
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

// Resolves with the token the user entered (the prompt cannot be dismissed without one).
export function askToken(reason) {
  return new Promise((resolve) => {
    const input = el("input", { type: "password", name: "token", id: "token-input", autocomplete: "off",
      required: true, "aria-describedby": "token-help", "data-token-input": "" });
    const form = el("form", { method: "dialog" },
      el("h2", { id: "token-title" }, "Token needed"),
      el("p", { id: "token-help" }, reason ?? "This server needs a bearer token. It is kept in this tab only (sessionStorage)."),
      el("label", { for: "token-input" }, "Token "), input,
      el("div", { class: "buttons" }, el("button", { type: "submit" }, "Connect")));
    const dialog = open(el("dialog", { id: "token-dialog", "aria-labelledby": "token-title" }, form));
    dialog.addEventListener("cancel", (e) => e.preventDefault());
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      dialog.close();
      dialog.remove();
      resolve(token);
    });
    input.focus();
  });
}

// Resolves true when the user confirms `question`, false when they back out.
export function confirmAction(question, detail) {
  return new Promise((resolve) => {
    const yes = el("button", { type: "button", "data-action": "confirm" }, "Confirm");
    const no = el("button", { type: "button", "data-dismiss": "" }, "Back");
    const dialog = open(el("dialog", { id: "confirm-dialog", role: "alertdialog", "aria-labelledby": "confirm-q" },
      el("h2", { id: "confirm-q" }, question),
      detail ? el("p", { class: "muted" }, detail) : null,
      el("div", { class: "buttons" }, no, yes)));
    const finish = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    yes.addEventListener("click", () => finish(true));
    no.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(false); });
    yes.focus();
  });
}
