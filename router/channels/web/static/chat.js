// The CloudBunch web chat page. No framework, no build step: the gateway serves this file.
//
// Protocol with the gateway (JSON frames on one WebSocket):
//   page -> gateway: {type:"hello", session, last, locale}, then
//                    {type:"message", id, text[, payload]} and {type:"end", id}
//   gateway -> page: {type:"welcome", session, debug, title, max_text}, {type:"entry", seq,
//                    entry}, {type:"gap", from, to}, {type:"typing", on}, {type:"stack", ...},
//                    {type:"error", code, message[, id]}
// Every entry has the session's next number (seq); the page remembers the last one shown
// and asks for what follows it when it reconnects, so nothing is shown twice or lost.
"use strict";
(function () {
  const KEY = "cloudbunch.web.session";
  const $ = (id) => document.getElementById(id);
  const log = $("log"), input = $("text"), form = $("composer"), conn = $("conn");
  const typing = $("typing"), errorLine = $("error"), banner = $("banner");

  let session = null;
  try { session = localStorage.getItem(KEY); } catch (e) { session = null; }
  let last = 0;               // the last entry number shown
  let ws = null;
  let ready = false;          // welcome received on the current socket
  let delay = 500;            // reconnect backoff (ms)
  let replaced = false;       // closed because another tab took the session
  const pending = new Map();  // message id -> {frame, li}
  const failed = new Map();   // message id -> {frame, li}: refused or not sent
  let errorTimer = null;
  let emptyShown = false;

  function newId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setConn(text, cls) {
    conn.textContent = text;
    conn.className = "conn " + (cls || "");
  }

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { errorLine.hidden = true; }, 8000);
  }

  function showBanner(text, action) {
    $("banner-text").textContent = text;
    const button = $("banner-action");
    button.hidden = !action;
    button.onclick = action || null;
    banner.hidden = false;
  }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function item(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    li.appendChild(bubble);
    return li;
  }

  function removeEmpty() {
    const empty = log.querySelector(".empty");
    if (empty) empty.remove();
  }

  function showEmpty() {
    if (emptyShown || log.children.length) return;
    emptyShown = true;
    const li = document.createElement("li");
    li.className = "empty";
    li.appendChild(document.createTextNode("Say hello to start the conversation."));
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    const hi = document.createElement("button");
    hi.type = "button";
    hi.textContent = "Hi!";
    hi.onclick = () => { send("hi"); input.focus(); };
    buttons.appendChild(hi);
    li.appendChild(buttons);
    log.appendChild(li);
  }

  function retireButtons() {
    log.querySelectorAll(".buttons:not(.used)").forEach((group) => {
      group.classList.add("used");
      group.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    });
  }

  // The person answered with one of the open quick replies (pressed or typed, also when the
  // conversation is shown again after a reload): that question is answered.
  function answerButtons(text) {
    const open = log.querySelectorAll(".buttons:not(.used)");
    if (!open.length) return;
    const group = open[open.length - 1];
    const match = Array.from(group.querySelectorAll("button"))
      .find((b) => b.textContent === text);
    if (!match) return;
    match.classList.add("chosen");
    retireButtons();
  }

  function addButtons(li, buttons) {
    const group = document.createElement("div");
    group.className = "buttons";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "Quick replies");
    buttons.forEach((b) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = b.title;
      button.onclick = () => {
        if (group.classList.contains("used")) return;
        button.classList.add("chosen");
        retireButtons();
        send(b.title, b.payload);
        input.focus();
      };
      group.appendChild(button);
    });
    li.appendChild(group);
  }

  function showEntry(seq, e) {
    removeEmpty();
    let li;
    if (e.from === "you") {
      const mine = pending.get(e.id) || failed.get(e.id);
      if (mine) {
        pending.delete(e.id);
        li = mine.li;
        li.classList.remove("pending");
        li.remove();  // re-appended below, in number order
      } else if (e.kind === "end") {
        li = item("notice you-end", "You started a new conversation.");
      } else {
        li = item("you", e.text);
      }
      if (e.kind === "end") retireButtons();
      else answerButtons(e.text);
    } else if (e.kind === "message") {
      li = item("bot", e.text);
      // Quick replies stay usable until newer ones come (a typed question in between, like
      // "help", does not take them away), or one is pressed, or the conversation ends.
      if (e.buttons && e.buttons.length) {
        retireButtons();
        addButtons(li, e.buttons);
      }
    } else if (e.kind === "unhandled") {
      li = item("bot unhandled", e.text);
    } else {
      li = item("notice " + e.kind, e.text);
      retireButtons();
    }
    li.dataset.seq = String(seq);
    li.dataset.kind = e.kind;
    log.appendChild(li);
    // Messages typed but not yet numbered stay below the numbered ones.
    pending.forEach((p) => log.appendChild(p.li));
    scrollDown();
  }

  function showStack(f) {
    const frames = $("frames");
    frames.textContent = "";
    const list = f.frames.slice().reverse();
    if (!list.length) {
      const li = document.createElement("li");
      li.textContent = "(empty: the next message opens the root)";
      frames.appendChild(li);
    }
    list.forEach((frame, i) => {
      const li = document.createElement("li");
      if (i === 0) li.className = "top";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = frame.service;
      const depth = document.createElement("span");
      depth.className = "depth";
      depth.textContent = "depth " + frame.depth + (i === 0 ? " (active)" : "");
      const state = document.createElement("pre");
      state.textContent = frame.state === null || frame.state === undefined
        ? "state: none" : JSON.stringify(frame.state, null, 1);
      li.append(name, depth, state);
      frames.appendChild(li);
    });
    $("turn").textContent = f.turn
      ? "Turn in flight: " + f.turn.event + " at depth " + f.turn.depth +
        " (attempt " + f.turn.attempt + ")" + (f.waiting ? ", " + f.waiting + " waiting" : "")
      : "No turn in flight.";
  }

  function onFrame(f) {
    switch (f.type) {
      case "welcome":
        ready = true;
        delay = 500;
        session = f.session;
        try { localStorage.setItem(KEY, session); } catch (e) { /* private mode */ }
        if (f.title) { $("title").textContent = f.title; document.title = f.title; }
        if (f.max_text) input.maxLength = f.max_text;
        $("debug").hidden = !f.debug;
        $("session-id").textContent = "web:" + session;
        setConn("Online", "online");
        banner.hidden = true;
        pending.forEach((p) => ws.send(JSON.stringify(p.frame)));
        setTimeout(showEmpty, 300);
        break;
      case "entry":
        if (f.seq > last) { last = f.seq; showEntry(f.seq, f.entry); }
        break;
      case "gap": {
        removeEmpty();
        const li = item("notice gap", "Earlier messages are no longer available.");
        log.appendChild(li);
        last = Math.max(last, f.to);
        break;
      }
      case "typing":
        typing.classList.toggle("on", !!f.on);
        typing.querySelector(".typing-text").textContent = f.on ? "The bot is typing…" : "";
        break;
      case "stack":
        showStack(f);
        break;
      case "error":
        if (f.id && pending.has(f.id)) {
          const p = pending.get(f.id);
          pending.delete(f.id);
          failed.set(f.id, p);
          if (!pending.size) typing.classList.remove("on");
          p.li.classList.remove("pending");
          p.li.classList.add("failed");
          if (f.code === "unavailable" || f.code === "rate_limited") {
            const again = document.createElement("button");
            again.type = "button";
            again.className = "ghost again";
            again.textContent = "Send again";
            again.onclick = () => {
              failed.delete(f.id);
              again.remove();
              p.li.classList.remove("failed");
              p.li.classList.add("pending");
              pending.set(f.id, p);
              if (ws && ready) ws.send(JSON.stringify(p.frame));
            };
            p.li.appendChild(again);
          }
        }
        showError(f.message);
        break;
      default:
        break;
    }
  }

  function connect() {
    replaced = false;
    ready = false;
    setConn("Connecting…", "");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws");
    ws = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "hello", session: session, last: last,
                                   locale: navigator.language || null }));
    };
    socket.onmessage = (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (socket === ws) onFrame(f);
    };
    socket.onclose = (ev) => {
      if (socket !== ws) return;
      ready = false;
      typing.classList.remove("on");
      if (ev.code === 4001) {
        replaced = true;
        setConn("Paused", "offline");
        showBanner("This conversation was opened in another tab or window.", () => connect());
        return;
      }
      setConn("Reconnecting…", "offline");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 5000);
    };
  }

  function send(text, payload) {
    const id = newId();
    const frame = { type: "message", id: id, text: text };
    if (payload !== undefined) frame.payload = payload;
    removeEmpty();
    const li = item("you pending", text);
    log.appendChild(li);
    scrollDown();
    pending.set(id, { frame: frame, li: li });
    typing.classList.add("on");
    if (ws && ready && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (replaced) { showError("This conversation is open in another tab. Continue here first."); return; }
    send(text);
    input.value = "";
  });

  $("new").addEventListener("click", () => {
    if (!ws || !ready) { showError("Not connected yet; try again in a moment."); return; }
    ws.send(JSON.stringify({ type: "end", id: newId() }));
    input.focus();
  });

  connect();
  input.focus();
})();
