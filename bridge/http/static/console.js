// The operator console: talks to /api/v1 with the token kept in sessionStorage (gone when
// the tab closes). Every text from a conversation is set with textContent, never as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const PAGE = 50;
  const MODE_LABELS = { assistant: "Assistant", paused: "Paused", opted_out: "Opted out" };

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };

  const session = {
    get token() { return sessionStorage.getItem("bridge.token"); },
    get operator() { return sessionStorage.getItem("bridge.operator") || "console"; },
    save(token, operator) {
      sessionStorage.setItem("bridge.token", token);
      sessionStorage.setItem("bridge.operator", operator || "console");
    },
    clear() {
      sessionStorage.removeItem("bridge.token");
      sessionStorage.removeItem("bridge.operator");
    },
  };

  const view = {
    profile: null,
    selected: null,
    shown: PAGE,
    version: null,
    timer: null,
    busy: false,
  };

  class Unauthorized extends Error {}

  async function api(path, options) {
    const opts = options || {};
    const headers = { Authorization: "Bearer " + (opts.token || session.token) };
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    const response = await fetch("api/v1/" + path, {
      method: opts.method || "GET",
      headers,
      body,
      cache: "no-store",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (response.status === 401) throw new Unauthorized("The token was refused.");
    if (!response.ok) {
      throw new Error((data && data.error) || "HTTP " + response.status);
    }
    return data;
  }

  const enc = encodeURIComponent;
  const convPath = (key) => "profiles/" + enc(view.profile) + "/conversations/" + enc(key);

  // -- time -------------------------------------------------------------------------------

  function when(ms) {
    if (!ms) return "";
    const date = new Date(ms);
    const now = new Date();
    if (date.toDateString() === now.toDateString()) {
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return date.toLocaleDateString([], { day: "numeric", month: "short" }) + " " +
      date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function span(ms) {
    const minutes = Math.max(0, Math.round(ms / 60000));
    if (minutes < 60) return minutes + " min";
    const hours = Math.floor(minutes / 60);
    return hours + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
  }

  function windowText(win) {
    if (!win || !win.closes_at) return "The user never wrote: no window";
    const left = win.closes_at - Date.now();
    return left > 0 ? "24-hour window: " + span(left) + " left" : "24-hour window closed";
  }

  function modeText(conv) {
    let text = MODE_LABELS[conv.mode] || conv.mode;
    const set = conv.set;
    if (conv.mode === "paused" && set) {
      text += set.until ? " until " + when(set.until) : " until resumed";
    }
    return text;
  }

  // -- unread: per browser, since this operator last opened the conversation ----------------

  const lookedKey = (key) => "bridge.looked." + view.profile + "." + key;
  const looked = (key) => Number(localStorage.getItem(lookedKey(key)) || 0);
  function markLooked(conv) {
    if (conv.last_user_message) localStorage.setItem(lookedKey(conv.key), conv.last_user_message);
  }

  // -- list -------------------------------------------------------------------------------

  async function refreshList() {
    const filter = $("filter").value;
    const query = "?limit=" + Math.min(view.shown, 200) + (filter ? "&mode=" + enc(filter) : "");
    const page = await api("profiles/" + enc(view.profile) + "/conversations" + query);
    renderList(page.conversations, page.next_cursor !== null && view.shown < 200);
  }

  function renderList(conversations, more) {
    const list = $("list");
    const items = conversations.map((conv) => {
      const item = el("li");
      const button = el("button", "conv");
      button.type = "button";
      button.dataset.key = conv.key;
      if (conv.key === view.selected) button.classList.add("selected");
      const unread = conv.last_user_message && conv.last_user_message > looked(conv.key);
      if (unread && conv.key !== view.selected) button.classList.add("unread");
      button.append(el("span", "name", conv.name || conv.phone || conv.key));
      button.append(el("span", "when", when(conv.last_activity)));
      const last = conv.last_message;
      let preview = "";
      if (last) {
        const by = last.operator ? last.operator + ": " : last.role === "user" ? "" : "\u21a9 ";
        preview = by + last.content;
      }
      button.append(el("span", "preview", (conv.phone ? conv.phone + " \u00b7 " : "") + preview));
      const tags = el("span", "tags");
      if (unread && conv.key !== view.selected) tags.append(el("span", "badge new", "new"));
      if (conv.mode !== "assistant") tags.append(el("span", "badge " + conv.mode, MODE_LABELS[conv.mode]));
      if (!conv.window.open) tags.append(el("span", "badge closed", "window closed"));
      button.append(tags);
      button.addEventListener("click", () => openConversation(conv.key));
      item.append(button);
      return item;
    });
    list.replaceChildren(...items);
    $("list-empty").hidden = conversations.length > 0;
    $("more").hidden = !more;
  }

  // -- one conversation --------------------------------------------------------------------

  async function openConversation(key) {
    view.selected = key;
    view.version = null;
    $("app").classList.add("show-chat");
    $("placeholder").hidden = true;
    $("chat").hidden = false;
    $("chat-error").textContent = "";
    $("messages").replaceChildren();
    await refresh();
  }

  async function refreshConversation() {
    if (!view.selected) return;
    let conv;
    try {
      conv = await api(convPath(view.selected));
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      $("chat-error").textContent = error.message;
      return;
    }
    renderConversation(conv);
    markLooked(conv);
  }

  function renderConversation(conv) {
    $("chat-name").textContent = conv.name || conv.phone || conv.key;
    $("chat-phone").textContent = conv.phone || conv.key;
    const badge = $("chat-mode");
    badge.textContent = modeText(conv);
    badge.className = "badge " + conv.mode;
    $("chat-window").textContent = windowText(conv.window);
    $("pause").disabled = conv.mode === "opted_out";
    $("resume").disabled = conv.mode === "assistant";
    if (conv.version === view.version) return;
    view.version = conv.version;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.replaceChildren(...conv.messages.map(renderMessage));
    if (atBottom || box.dataset.key !== conv.key) box.scrollTop = box.scrollHeight;
    box.dataset.key = conv.key;
  }

  function renderMessage(message) {
    const extra = message.extra || {};
    const operator = message.role === "assistant" ? extra.operator : undefined;
    const kind = operator ? "operator" : message.role;
    const item = el("li", "msg " + kind);
    item.append(el("div", "text", message.content));
    const meta = el("div", "meta");
    const who = operator
      ? operator
      : message.role === "assistant"
        ? (extra.auto ? "automatic reply" : "assistant")
        : "";
    meta.append(document.createTextNode([when(message.timestamp), who].filter(Boolean).join(" \u00b7 ")));
    if (message.status) {
      const status = el("span", message.status, " \u00b7 " + message.status + (message.error ? ": " + message.error : ""));
      meta.append(status);
    }
    item.append(meta);
    return item;
  }

  // -- actions ------------------------------------------------------------------------------

  async function act(button, request) {
    $("chat-error").textContent = "";
    button.disabled = true;
    try {
      await request();
      view.version = null;
      await refresh();
    } catch (error) {
      if (error instanceof Unauthorized) return signOut(error.message);
      $("chat-error").textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  function pause() {
    const minutes = $("pause-for").value;
    const body = { operator: session.operator };
    if (minutes) body.minutes = Number(minutes);
    return act($("pause"), () => api(convPath(view.selected) + "/pause", { method: "POST", json: body }));
  }

  function resume() {
    return act($("resume"), () =>
      api(convPath(view.selected) + "/resume", { method: "POST", json: { operator: session.operator } }));
  }

  function send(event) {
    event.preventDefault();
    const box = $("reply");
    const text = box.value;
    if (!text.trim()) return undefined;
    const button = $("reply-form").querySelector("button");
    return act(button, async () => {
      await api(convPath(view.selected) + "/messages", {
        method: "POST",
        json: { text, operator: session.operator },
      });
      box.value = "";
    });
  }

  // -- polling ------------------------------------------------------------------------------

  async function refresh() {
    if (view.busy) return;
    view.busy = true;
    try {
      await refreshList();
      await refreshConversation();
    } catch (error) {
      if (error instanceof Unauthorized) signOut(error.message);
    } finally {
      view.busy = false;
    }
  }

  function poll() {
    clearTimeout(view.timer);
    view.timer = setTimeout(async () => {
      if (!session.token) return;
      if (!document.hidden) await refresh();
      poll();
    }, POLL_MS);
  }

  // -- sign in and out ---------------------------------------------------------------------

  function signOut(message) {
    clearTimeout(view.timer);
    session.clear();
    view.selected = null;
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  async function start(profiles) {
    const select = $("profile");
    select.replaceChildren(...profiles.map((p) => {
      const option = el("option", null, p.slug);
      option.value = p.slug;
      return option;
    }));
    select.hidden = profiles.length < 2;
    view.profile = profiles.length ? profiles[0].slug : null;
    $("who").textContent = session.operator;
    $("login").hidden = true;
    $("app").hidden = false;
    if (view.profile) await refresh();
    poll();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    const operator = $("operator").value.trim();
    $("login-error").textContent = "";
    try {
      const data = await api("profiles", { token });
      session.save(token, operator);
      await start(data.profiles);
    } catch (error) {
      $("login-error").textContent = error instanceof Unauthorized ? "That token is not right." : error.message;
    }
  }

  function init() {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut(""));
    $("pause").addEventListener("click", pause);
    $("resume").addEventListener("click", resume);
    $("reply-form").addEventListener("submit", send);
    $("reply").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send(event);
    });
    $("back").addEventListener("click", () => {
      view.selected = null;
      $("app").classList.remove("show-chat");
      $("chat").hidden = true;
      $("placeholder").hidden = false;
      refresh();
    });
    $("more").addEventListener("click", () => {
      view.shown += PAGE;
      refresh();
    });
    $("filter").addEventListener("change", refresh);
    $("profile").addEventListener("change", () => {
      view.profile = $("profile").value;
      view.selected = null;
      $("chat").hidden = true;
      $("placeholder").hidden = false;
      refresh();
    });
    if (session.token) {
      api("profiles").then((data) => start(data.profiles)).catch((error) => signOut(error.message));
    } else {
      signOut("");
    }
  }

  init();
})();
