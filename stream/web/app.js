// vidnarrate viewer: one websocket to the gateway (same origin, /ws), live captions, thumbnails,
// status and questions per stream; search, history and summaries from the caption store. Plain
// JavaScript, no build step, no external requests.
//
// Rules this file keeps:
// - message data only ever reaches the page through textContent / attributes set from
//   whitelists, never innerHTML;
// - memory is bounded: per stream at most TIMELINE_MAX captions (HISTORY_MAX once the user loads
//   earlier ones), ANSWERS_MAX asks, SUMMARIES_MAX summaries, EVENTS_MAX events (each with at most
//   its start's thumbnail), one live thumbnail; at most STREAMS_MAX
//   streams; one page of search results;
// - a caption with "unchanged": true extends the time range of the caption before it (the scene did
//   not change, the model was not asked), and one replayed from an earlier run is marked as such;
// - the token is never read into the page: the first request's ?token= is removed from the address
//   bar, and the HttpOnly cookie the server set on that answer (one per port) authorises the page's
//   files, its websocket and later reloads, so the token is in no URL, storage or console line;
// - while the connection is down every stream's state shows "?" (unknown), and a stream that the
//   (possibly restarted) gateway stops reporting is marked "gone", its history kept;
// - browsers cannot see websocket protocol pings, so the page sends application pings and treats a
//   connection that stays silent for pongTimeoutMs as dead; every drop reconnects with capped,
//   jittered exponential backoff and says so on screen.
"use strict";

(() => {
  const CONFIG = Object.assign({
    pingIntervalMs: 5000,
    pongTimeoutMs: 15000,
    connectTimeoutMs: 10000,
    reconnectBaseMs: 500,
    reconnectMaxMs: 15000,
    replay: 20,
    askTimeoutMs: 60000,
    goneAfterMs: 10000,      // connected, yet no status has named the stream for this long: gone
    historySpanS: 900,       // the first window "load earlier" asks the store for; widened while empty
    historyPage: 100,        // captions per history request
    searchLimit: 50,
  }, window.VIDNARRATE_CONFIG || {});  // tests shorten the timings through an init script
  const TIMELINE_MAX = 200;
  const HISTORY_MAX = 2000;
  const HISTORY_SPAN_MAX_S = 30 * 86400;   // an empty window this wide: nothing earlier is stored
  const ANSWERS_MAX = 20;
  const SUMMARIES_MAX = 50;
  const EVENTS_MAX = 100;      // per stream; the oldest ended ones go first
  const STREAMS_MAX = 64;
  const STATES = new Set(["connecting", "live", "lost", "ended"]);
  const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

  // ---- token: out of the address bar (replaced, not pushed: Back does not bring it back) ----
  (() => {
    const url = new URL(window.location.href);
    if (!url.searchParams.has("token")) return;
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  })();

  // ---- state ----
  const streams = new Map();   // name -> stream record (see streamRecord)
  let selected = null;
  let userPicked = false;      // once the user picks a stream, arriving streams never steal the view
  const wantedAtLoad = streamFromHash();
  let ws = null;
  let attempt = 0;             // consecutive failed connection attempts
  let everConnected = false;
  let connectedAt = 0;         // performance.now() of the current connection's open
  let overflowNoticed = false;
  let reconnectTimer = null;
  let countdownTimer = null;
  let connectTimer = null;
  let heartbeatTimer = null;
  let lastHeard = 0;
  let pingCounter = 0;
  let askCounter = 0;
  const askTimers = new Map(); // ask id -> timeout handle
  let eventsOnly = false;      // the "events only" view: subscribed to events (and status) alone
  let requestCounter = 0;
  const requests = new Map();  // search/history id -> {kind, ...}: what its results are for

  const $ = (id) => document.getElementById(id);
  let el = {};

  function streamRecord(name) {
    let s = streams.get(name);
    if (s) return s;
    if (streams.size >= STREAMS_MAX) {
      if (!overflowNoticed) {
        overflowNoticed = true;
        showNotice(`This viewer shows the first ${STREAMS_MAX} streams; "${name}" and any later ones are not shown.`);
      }
      return null;
    }
    s = {
      name,
      status: {},
      captions: [],          // sorted oldest -> newest, at most TIMELINE_MAX
      keys: new Set(),       // dedupe replayed captions after a reconnect
      partial: null,         // {seq, text, at}
      thumb: null,           // {src, t, wall}
      answers: [],           // {id, question, minutes, text, state, span}, newest last
      limit: TIMELINE_MAX,   // captions kept; loading earlier ones raises it up to HISTORY_MAX
      history: { loading: false, cursor: null, span: CONFIG.historySpanS, done: false, note: "" },
      summaries: [],         // newest last, at most SUMMARIES_MAX
      summaryKeys: new Set(),
      events: new Map(),     // event_id -> the event's latest state (also its marker in captions)
      tab: null,             // picker button and its fields
      seenAt: performance.now(),  // when a status last named it
      stale: false,          // the connection dropped since its last status
      gone: false,           // the gateway stopped reporting it (a new run without it)
    };
    streams.set(name, s);
    addTab(s);
    if (selected === null || (!userPicked && name === wantedAtLoad)) select(name);
    return s;
  }

  function streamFromHash() {
    try { return decodeURIComponent(window.location.hash.slice(1)); } catch (e) { return ""; }
  }

  // ---- formatting ----
  const wallFormat = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });

  function num(x) { return typeof x === "number" && Number.isFinite(x) ? x : null; }

  function fmtStreamTime(t) {
    t = num(t);
    if (t === null) return "–";
    const tenths = Math.round(Math.abs(t) * 10);
    const h = Math.floor(tenths / 36000);
    const m = Math.floor((tenths % 36000) / 600);
    const s = (tenths % 600) / 10;
    const ss = s.toFixed(1).padStart(4, "0");
    const mm = String(m).padStart(2, "0");
    return (t < 0 ? "-" : "") + (h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`);
  }

  function fmtWall(w) {
    w = num(w);
    return w === null ? "–" : wallFormat.format(new Date(w * 1000));
  }

  function fmtRange(a, b, fmt) { return `${fmt(a)}–${fmt(b)}`; }

  const dateFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });

  // Wall time with the date when it is not today (search results and spans reach back days).
  function fmtDateTime(w) {
    w = num(w);
    if (w === null) return "–";
    const d = new Date(w * 1000);
    return d.toDateString() === new Date().toDateString() ? wallFormat.format(d) : dateFormat.format(d);
  }

  function fmtMs(ms) {
    ms = num(ms);
    if (ms === null) return "–";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  function fmtFixed(x, digits, unit) {
    x = num(x);
    return x === null ? "–" : x.toFixed(digits) + (unit || "");
  }

  function fmtInt(x) {
    x = num(x);
    return x === null ? "–" : String(Math.round(x));
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // ---- connection ----
  function wsUrl() {
    const url = new URL("ws", window.location.href);   // /ws next to the page (works behind a prefix)
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";                                    // the token travels in the cookie
    url.hash = "";
    return url.href;
  }

  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.connText.textContent = text;
    document.body.dataset.conn = state;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    reconnectTimer = countdownTimer = null;
    setConn(everConnected ? "reconnecting" : "connecting",
            everConnected ? `reconnecting… (attempt ${attempt})` : "connecting…");
    let sock;
    try {
      sock = new WebSocket(wsUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    // A hung server accepts the TCP connection but never answers the handshake: give up and retry.
    connectTimer = setTimeout(() => { if (ws === sock) dropped(); }, CONFIG.connectTimeoutMs);
    sock.onopen = () => {
      clearTimeout(connectTimer);
      lastHeard = connectedAt = performance.now();
      send(subscription());
      startHeartbeat();
    };
    sock.onmessage = (event) => {
      lastHeard = performance.now();
      if (attempt !== 0 || el.conn.dataset.state !== "live") {
        attempt = 0;
        everConnected = true;
        setConn("live", "live");
      }
      let msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg && typeof msg === "object" && !Array.isArray(msg)) handle(msg);
    };
    sock.onclose = () => { if (ws === sock) dropped(); };
    sock.onerror = () => { /* onclose follows */ };
  }

  function dropped() {
    const old = ws;
    ws = null;
    clearTimeout(connectTimer);
    stopHeartbeat();
    if (old) {
      old.onopen = old.onmessage = old.onclose = old.onerror = null;
      try { old.close(); } catch (e) { /* already closed */ }
    }
    failPendingAsks("the connection to the gateway was lost");
    failPendingRequests("the connection to the gateway was lost");
    for (const s of streams.values()) {
      if (!s.stale) { s.stale = true; renderTab(s); }
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const ceiling = Math.min(CONFIG.reconnectMaxMs, CONFIG.reconnectBaseMs * 2 ** Math.min(attempt, 16));
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    attempt += 1;
    const due = performance.now() + delay;
    const show = () => {
      const left = Math.max(0, Math.ceil((due - performance.now()) / 1000));
      setConn("reconnecting", `reconnecting in ${left} s (attempt ${attempt})`);
    };
    show();
    countdownTimer = setInterval(show, 1000);
    reconnectTimer = setTimeout(connect, delay);
  }

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  function startHeartbeat() {
    stopHeartbeat();
    heartbeatTimer = setInterval(() => {
      if (performance.now() - lastHeard > CONFIG.pongTimeoutMs) {
        dropped();            // silent for too long: half-open TCP or a stuck gateway
        return;
      }
      pingCounter += 1;
      send({ type: "ping", id: `p${pingCounter}`, t: Date.now() / 1000 });
    }, CONFIG.pingIntervalMs);
  }

  function stopHeartbeat() {
    clearInterval(heartbeatTimer);
    heartbeatTimer = null;
  }

  // Come back at once when the network returns or the tab is shown again after a long sleep.
  function reconnectNow() {
    if (reconnectTimer !== null) connect();
  }

  // ---- messages ----
  function handle(msg) {
    switch (msg.type) {
      case "caption": return onCaption(msg);
      case "partial": return onPartial(msg);
      case "event": return onEvent(msg);
      case "status": return onStatus(msg);
      case "thumbnail": return onThumbnail(msg);
      case "answer": return onAnswer(msg);
      case "summary": return onSummary(msg);
      case "results": return onResults(msg);
      case "error": return onError(msg);
      case "subscribed": return undefined;
      case "dropped": return showNotice(`This viewer fell behind: the gateway dropped ${fmtInt(msg.count)} messages.`);
      default: return undefined;  // pong and anything newer: the heartbeat already counted it
    }
  }

  function named(msg) {
    return typeof msg.stream === "string" && msg.stream ? streamRecord(msg.stream) : null;
  }

  function onStatus(msg) {
    const about = [msg.model, msg.device].filter((x) => typeof x === "string" && x).join(" · ");
    if (el.model.textContent !== about) el.model.textContent = about;
    const all = msg.streams;
    if (!all || typeof all !== "object") return;
    const now = performance.now();
    for (const [name, figures] of Object.entries(all)) {
      const s = streamRecord(name);
      if (!s || !figures || typeof figures !== "object") continue;
      s.status = figures;
      s.seenAt = now;
      s.stale = s.gone = false;
      renderTab(s);
    }
    for (const s of streams.values()) {
      if (s.gone || Object.prototype.hasOwnProperty.call(all, s.name)) continue;
      if (now - Math.max(s.seenAt, connectedAt) > CONFIG.goneAfterMs) {
        s.gone = true;
        s.stale = false;
        renderTab(s);
      }
    }
  }

  function captionKey(c) { return `${c.seq}|${c.t_start}|${c.t_end}|${c.wall_end}`; }

  // An event's marker sits where it started; everything else where it ended.
  function sortTime(c) {
    return (c._event ? num(c.wall_start) : null) ?? num(c.wall_end) ?? num(c._received) ?? 0;
  }

  function insertEntry(s, entry) {
    const key = captionKey(entry);
    if (s.keys.has(key)) return false;
    let i = s.captions.length;
    while (i > 0 && sortTime(s.captions[i - 1]) > sortTime(entry)) i -= 1;
    if (entry.unchanged === true && !entry._event) {
      let j = i - 1;
      while (j >= 0 && s.captions[j]._event) j -= 1;
      const prev = j >= 0 ? s.captions[j] : null;
      if (prev && !!prev.earlier_run === !!entry.earlier_run) {
        // The same scene, still: the caption before it covers this window too.
        s.keys.add(key);
        prev._merged = (prev._merged || []).concat([key]);
        if (num(entry.t_end) !== null && !(num(prev.t_end) >= entry.t_end)) prev.t_end = entry.t_end;
        if (num(entry.wall_end) !== null && !(num(prev.wall_end) >= entry.wall_end)) prev.wall_end = entry.wall_end;
        prev._unchanged = (prev._unchanged || 0) + 1;
        return true;
      }
    }
    s.keys.add(key);
    entry._key = key;
    s.captions.splice(i, 0, entry);
    while (s.captions.length > s.limit) forget(s, s.captions.shift());
    return true;
  }

  function forget(s, c) {
    s.keys.delete(c._key);
    for (const key of c._merged || []) s.keys.delete(key);
  }

  function onCaption(msg) {
    const s = named(msg);
    if (!s || typeof msg.text !== "string") return;
    const entry = Object.assign({}, msg, { _received: Date.now() / 1000 });
    if (!insertEntry(s, entry)) return;
    const p = s.partial;
    if (p && (num(msg.seq) === null || msg.seq >= p.seq || performance.now() - p.at > 30000)) s.partial = null;
    if (s.name === selected) {
      renderCurrent(s);
      renderTimeline(s);
      if (newestCaption(s) === entry) el.announce.textContent = entry.text;
    }
  }

  // One event (one event_id) goes start -> update... -> end: it is one marker on the timeline and one
  // line in the events list, updated in place; its thumbnail comes with its start.
  function onEvent(msg) {
    const s = named(msg);
    if (!s || typeof msg.text !== "string" || typeof msg.event_id !== "string" || !msg.event_id) return;
    let e = s.events.get(msg.event_id);
    if (!e) {
      e = {
        _event: true, _key: `event|${msg.event_id}`, _received: Date.now() / 1000, event_id: msg.event_id,
        stream: s.name, rule: typeof msg.rule === "string" ? msg.rule : "event", state: "start",
        t_start: msg.t_start, t_end: msg.t_end, wall_start: msg.wall_start, wall_end: msg.wall_end,
        score: null, text: "", thumb: null,
      };
      s.events.set(e.event_id, e);
      s.keys.add(e._key);
      let i = s.captions.length;
      while (i > 0 && sortTime(s.captions[i - 1]) > sortTime(e)) i -= 1;
      s.captions.splice(i, 0, e);
      while (s.captions.length > s.limit) forget(s, s.captions.shift());
      trimEvents(s);
    }
    if (e.state !== "end") e.state = msg.state === "end" ? "end" : msg.state === "update" ? "update" : e.state;
    if (num(msg.t_end) !== null && !(num(e.t_end) >= msg.t_end)) e.t_end = msg.t_end;
    if (num(msg.wall_end) !== null && !(num(e.wall_end) >= msg.wall_end)) e.wall_end = msg.wall_end;
    if (num(msg.score) !== null) e.score = msg.score;
    if (msg.text) e.text = msg.text;
    if (!e.thumb && typeof msg.thumbnail === "string" && BASE64.test(msg.thumbnail)) {
      e.thumb = `data:image/jpeg;base64,${msg.thumbnail}`;
    }
    renderTab(s);
    if (eventsOnly) renderEvents();
    else if (s.name === selected) { renderTimeline(s); renderEvents(); }
  }

  function trimEvents(s) {
    while (s.events.size > EVENTS_MAX) {
      let victim = null;
      for (const e of s.events.values()) { if (e.state === "end") { victim = e; break; } }
      if (!victim) victim = s.events.values().next().value;
      s.events.delete(victim.event_id);
    }
  }

  function openEvents(s) {
    let n = 0;
    for (const e of s.events.values()) if (e.state !== "end") n += 1;
    return n;
  }

  function onPartial(msg) {
    const s = named(msg);
    if (!s || typeof msg.text !== "string") return;
    s.partial = { seq: num(msg.seq) ?? 0, text: msg.text, at: performance.now() };
    if (s.name === selected) { renderCurrent(s); renderTimeline(s); }
  }

  function onThumbnail(msg) {
    const s = named(msg);
    if (!s || typeof msg.jpeg !== "string" || !BASE64.test(msg.jpeg)) return;
    s.thumb = { src: `data:image/jpeg;base64,${msg.jpeg}`, t: msg.t, wall: msg.wall };
    if (s.name === selected) renderThumb(s);
  }

  function findAsk(id) {
    for (const s of streams.values()) {
      const a = s.answers.find((x) => x.id === id);
      if (a) return [s, a];
    }
    return [null, null];
  }

  function onAnswer(msg) {
    const [s, a] = findAsk(msg.id);
    if (!a) return;
    if (num(msg.from) !== null && num(msg.to) !== null) {
      a.span = { from: msg.from, to: msg.to, captions: num(msg.captions) };
    }
    settleAsk(s, a, "answered", typeof msg.text === "string" ? msg.text : "");
  }

  function onError(msg) {
    const text = typeof msg.message === "string" ? msg.message : String(msg.error || "error");
    const [s, a] = msg.id !== undefined ? findAsk(msg.id) : [null, null];
    const req = msg.id !== undefined ? requests.get(msg.id) : undefined;
    if (a) settleAsk(s, a, "failed", text);
    else if (req) failRequest(msg.id, req, text);
    else showNotice(`Gateway: ${text}`);
  }

  function showNotice(text) {
    el.notice.textContent = text;
    el.notice.hidden = false;
    clearTimeout(showNotice.timer);
    showNotice.timer = setTimeout(() => { el.notice.hidden = true; }, 10000);
  }

  // ---- asks ----
  function submitAsk(event) {
    event.preventDefault();
    const s = streams.get(selected);
    const question = el.question.value.trim();
    if (!s || !question) return;
    const minutes = el.askMinutes.value === "" ? null : Number(el.askMinutes.value);
    if (minutes !== null && !(Number.isFinite(minutes) && minutes > 0)) {
      el.askMinutes.setCustomValidity("a number of minutes, or empty for the live window");
      el.askMinutes.reportValidity();
      return;
    }
    askCounter += 1;
    const id = `a${askCounter}-${Math.random().toString(36).slice(2, 8)}`;
    const a = { id, question, minutes, text: "", state: "waiting", span: null };
    s.answers.push(a);
    while (s.answers.length > ANSWERS_MAX) s.answers.shift();
    const ask = { type: "ask", id, stream: s.name, question };
    if (minutes !== null) ask.since = Math.round(minutes * 60);   // answered from the stored captions
    if (send(ask)) {
      askTimers.set(id, setTimeout(() => settleAsk(s, a, "failed", "No answer in time."), CONFIG.askTimeoutMs));
      el.question.value = "";
    } else {
      a.state = "failed";
      a.text = "Not connected to the gateway; ask again when the viewer is live.";
    }
    renderAnswers(s);
  }

  function settleAsk(s, a, state, text) {
    if (a.state !== "waiting") return;
    a.state = state;
    a.text = text;
    clearTimeout(askTimers.get(a.id));
    askTimers.delete(a.id);
    if (s.name === selected) renderAnswers(s);
  }

  function failPendingAsks(reason) {
    for (const s of streams.values()) {
      for (const a of s.answers) if (a.state === "waiting") settleAsk(s, a, "failed", `No answer: ${reason}.`);
    }
  }

  // ---- the store: search, history, summaries ----
  function request(msg, what) {
    requestCounter += 1;
    const id = `${msg.type[0]}${requestCounter}-${Math.random().toString(36).slice(2, 8)}`;
    if (!send(Object.assign({ id }, msg))) return null;
    requests.set(id, what);
    // The gateway answers every request; this only bounds memory if one never came back.
    while (requests.size > 64) requests.delete(requests.keys().next().value);
    return id;
  }

  function onResults(msg) {
    const req = requests.get(msg.id);
    if (!req) return;
    requests.delete(msg.id);
    const items = Array.isArray(msg.items) ? msg.items.filter((x) => x && typeof x === "object") : [];
    if (req.kind === "search") showResults(req, items, msg.truncated === true);
    else if (req.kind === "history") historyArrived(req, items, msg.truncated === true);
  }

  function failRequest(id, req, text) {
    requests.delete(id);
    if (req.kind === "search") {
      if (req.id === latestSearch) setFound(`Search failed: ${text}`);
    } else if (req.kind === "history") {
      const s = streams.get(req.stream);
      if (!s) return;
      s.history.loading = false;
      s.history.note = `Could not load earlier captions: ${text}`;
      if (s.name === selected) renderHistoryState(s);
    }
  }

  function failPendingRequests(reason) {
    for (const [id, req] of [...requests]) failRequest(id, req, reason);
  }

  let latestSearch = null;

  function submitSearch(event) {
    event.preventDefault();
    const query = el.searchQuery.value.trim();
    if (!query) return;
    el.found.hidden = false;
    el.results.replaceChildren();
    el.foundCount.textContent = "";
    el.moment.hidden = true;
    const req = { kind: "search", query };
    req.id = latestSearch = request({ type: "search", query, limit: CONFIG.searchLimit }, req);
    setFound(req.id ? "Searching…" : "Not connected to the gateway; search again when the viewer is live.");
  }

  function setFound(text) {
    el.foundState.textContent = text;
    el.foundState.hidden = !text;
  }

  function showResults(req, items, truncated) {
    if (req.id !== latestSearch) return;          // an older search answered late
    const frag = document.createDocumentFragment();
    for (const item of items) {
      if (typeof item.text !== "string") continue;
      const li = node("li", "result");
      const b = node("button", "result-button");
      b.type = "button";
      b.dataset.kind = typeof item.type === "string" ? item.type : "";
      if (num(item.store_id) !== null) b.dataset.storeId = String(item.store_id);
      const meta = node("span", "meta");
      meta.append(node("span", "wall", fmtDateTime(item.wall_end ?? item.wall_start)),
                  node("span", "r-stream", typeof item.stream === "string" ? item.stream : ""));
      if (item.type && item.type !== "caption") meta.append(node("span", "rule", String(item.type)));
      if (item.earlier_run === true) meta.append(node("span", "earlier-tag", "earlier run"));
      b.append(meta, node("span", "text", item.text));
      b.addEventListener("click", () => showMoment(item, b));
      li.append(b);
      frag.append(li);
    }
    el.results.replaceChildren(frag);
    const n = el.results.childElementCount;
    el.foundCount.textContent = `(${n}${truncated ? "+" : ""})`;
    setFound(n ? "" : `Nothing stored matches “${req.query}”.`);
  }

  function showMoment(item, button) {
    for (const other of el.results.querySelectorAll("[aria-pressed]")) other.removeAttribute("aria-pressed");
    button.setAttribute("aria-pressed", "true");
    el.moment.hidden = false;
    el.momentStream.textContent = typeof item.stream === "string" ? item.stream : "";
    el.momentRange.textContent = num(item.t_start) === null ? "" : fmtRange(item.t_start, item.t_end, fmtStreamTime);
    el.momentWall.textContent = num(item.wall_start) === null
      ? fmtDateTime(item.wall_end) : fmtRange(item.wall_start, item.wall_end, fmtDateTime);
    el.momentText.textContent = item.text;
    const id = num(item.store_id);
    el.momentThumb.hidden = true;
    el.momentNone.hidden = false;
    el.momentNone.textContent = id === null ? "no frame kept" : "loading the frame…";
    if (id === null) { el.momentThumb.removeAttribute("src"); return; }
    // Same origin, so the session cookie authorises it; the store keeps one JPEG per captioned window.
    const src = new URL(`thumbnail/${Math.trunc(id)}`, window.location.href).pathname;
    if (el.momentThumb.getAttribute("src") === src && el.momentThumb.complete && el.momentThumb.naturalWidth) {
      el.momentThumb.hidden = false;     // already loaded: no new load event comes
      el.momentNone.hidden = true;
    } else {
      el.momentThumb.src = src;
    }
  }

  function loadEarlier(s) {
    const h = s.history;
    if (h.loading || h.done || !streams.has(s.name)) return;
    if (s.captions.length >= HISTORY_MAX) {
      h.note = `The timeline holds ${HISTORY_MAX} captions; search to find earlier ones.`;
      renderHistoryState(s);
      return;
    }
    let to = h.cursor;
    if (to === null) {
      const oldest = s.captions.find((c) => !c._event && num(c.wall_end) !== null);
      to = oldest ? oldest.wall_end : Date.now() / 1000;
    }
    askHistory(s, Math.max(0, to - h.span), to);
  }

  function askHistory(s, from, to) {
    const h = s.history;
    const req = { kind: "history", stream: s.name, from, to, added: 0 };
    if (!request({ type: "history", stream: s.name, from, to, limit: CONFIG.historyPage }, req)) {
      h.note = "Not connected to the gateway.";
    } else {
      h.loading = true;
      h.note = "loading…";
    }
    if (s.name === selected) renderHistoryState(s);
  }

  function historyArrived(req, items, truncated) {
    const s = streams.get(req.stream);
    if (!s) return;
    const h = s.history;
    let added = 0;
    s.limit = Math.min(HISTORY_MAX, Math.max(s.limit, s.captions.length + items.length));
    for (const item of items) {   // in time order: an unchanged caption extends the one just before
      if (item.type !== "caption" || item.stream !== s.name || typeof item.text !== "string") continue;
      if (insertEntry(s, Object.assign({}, item, { _received: Date.now() / 1000 }))) added += 1;
    }
    req.added += added;
    const last = items.length ? num(items[items.length - 1].wall_end) : null;
    h.loading = false;
    if ((items.length >= CONFIG.historyPage || truncated) && last !== null && last > req.from
        && last < req.to && s.captions.length < HISTORY_MAX) {
      // The window held more than a page: these are its earliest; fetch the rest of it first.
      askHistory(s, last, req.to);
      h.pendingAdded = (h.pendingAdded || 0) + added;
    } else {
      const total = added + (h.pendingAdded || 0);
      h.pendingAdded = 0;
      h.cursor = req.from;
      if (total === 0) {
        if (h.span >= HISTORY_SPAN_MAX_S || req.from <= 0) {
          h.done = true;
          h.note = "Nothing earlier is stored.";
        } else {
          h.span = Math.min(HISTORY_SPAN_MAX_S, h.span * 4);   // a quiet stretch: look further back
          loadEarlier(s);
        }
      } else {
        h.note = `${total} earlier caption${total === 1 ? "" : "s"} loaded.`;
      }
    }
    if (s.name === selected) {
      renderTimeline(s);
      renderCurrent(s);
      renderHistoryState(s);
    }
  }

  function renderHistoryState(s) {
    el.historyMore.disabled = s.history.loading || s.history.done;
    el.historyState.textContent = s.history.note;
  }

  function onSummary(msg) {
    const s = named(msg);
    if (!s || typeof msg.text !== "string") return;
    const key = `${msg.t_start}|${msg.t_end}|${msg.wall_end}`;
    if (s.summaryKeys.has(key)) return;
    s.summaryKeys.add(key);
    s.summaries.push(Object.assign({}, msg, { _key: key }));
    s.summaries.sort((a, b) => (num(a.wall_end) ?? 0) - (num(b.wall_end) ?? 0));
    while (s.summaries.length > SUMMARIES_MAX) s.summaryKeys.delete(s.summaries.shift()._key);
    if (s.name === selected) renderSummaries(s);
  }

  function renderSummaries(s) {
    const frag = document.createDocumentFragment();
    for (let i = s.summaries.length - 1; i >= 0; i -= 1) {
      const m = s.summaries[i];
      const li = node("li", "summary");
      const meta = node("div", "meta");
      meta.append(node("span", "wall", fmtRange(m.wall_start, m.wall_end, fmtDateTime)),
                  node("span", "range", fmtRange(m.t_start, m.t_end, fmtStreamTime)));
      if (num(m.captions) !== null) meta.append(node("span", "n", `${fmtInt(m.captions)} captions`));
      li.append(meta, node("p", "text", m.text));
      frag.append(li);
    }
    el.summaries.replaceChildren(frag);
    el.summariesBox.hidden = s.summaries.length === 0;
  }

  // ---- events list and the events-only view ----
  function subscription() {
    return eventsOnly
      ? { type: "subscribe", streams: "*", replay: 0, thumbnails: false, types: ["event", "status"] }
      : { type: "subscribe", streams: "*", replay: CONFIG.replay, thumbnails: true };
  }

  function setEventsOnly(on) {
    eventsOnly = on;
    document.body.dataset.view = on ? "events" : "all";
    send(subscription());
    renderEvents();
    const s = streams.get(selected);
    if (!on && s) select(s.name);
  }

  // The selected stream's events, or every stream's in the events-only view: open ones first, then
  // ended ones, newest first within each.
  function renderEvents() {
    const pool = [];
    for (const s of streams.values()) {
      if (eventsOnly || s.name === selected) pool.push(...s.events.values());
    }
    pool.sort((a, b) => ((a.state === "end") - (b.state === "end"))
      || ((num(b.wall_start) ?? 0) - (num(a.wall_start) ?? 0)));
    const frag = document.createDocumentFragment();
    for (const e of pool) {
      const li = node("li", "event-item");
      li.dataset.eventId = e.event_id;
      li.dataset.stream = e.stream;
      li.dataset.state = e.state === "end" ? "ended" : "open";
      if (e.thumb) {
        const img = node("img", "event-thumb");
        img.alt = `Frame at the start of ${e.rule}`;
        img.src = e.thumb;
        li.append(img);
      }
      const body = node("div", "event-body");
      const meta = node("div", "meta");
      meta.append(node("span", "rule", e.rule));
      if (eventsOnly) meta.append(node("span", "r-stream", e.stream));
      meta.append(node("span", "event-state", e.state === "end" ? "ended" : "open"),
                  node("span", "wall", e.state === "end" ? fmtRange(e.wall_start, e.wall_end, fmtWall)
                    : `since ${fmtWall(e.wall_start)}`));
      if (num(e.score) !== null) meta.append(node("span", "score", `score ${e.score.toFixed(2)}`));
      body.append(meta, node("p", "text", e.text));
      li.append(body);
      frag.append(li);
    }
    el.events.replaceChildren(frag);
    el.eventsBox.hidden = pool.length === 0 && !eventsOnly;
    el.eventsCount.textContent = pool.length ? `(${pool.filter((e) => e.state !== "end").length} open)` : "";
  }

  // ---- rendering ----
  function addTab(s) {
    const b = node("button", "tab");
    b.type = "button";
    b.setAttribute("role", "tab");
    b.setAttribute("aria-controls", "stream");
    b.setAttribute("aria-selected", "false");
    b.tabIndex = -1;                                // select() gives the chosen tab 0
    b.dataset.stream = s.name;
    const head = node("span", "tab-head");
    const name = node("span", "tab-name", s.name);
    const state = node("span", "state", "…");
    head.append(name, state);
    const strip = node("span", "strip");
    const fields = {};
    for (const [key, label] of [["fps", "fps"], ["drops", "drops"], ["reconnects", "reconnects"],
                                ["lag", "lag"], ["latency", "latency"]]) {
      const item = node("span", "fig");
      item.dataset.field = key;
      const value = node("b", "", "–");
      item.append(node("span", "fig-label", `${label} `), value);
      strip.append(item);
      fields[key] = value;
    }
    const error = node("span", "tab-error");
    error.hidden = true;
    const events = node("span", "tab-events");
    events.hidden = true;
    head.append(events);
    b.append(head, strip, error);
    b.addEventListener("click", () => { userPicked = true; select(s.name); });
    s.tab = { button: b, state, fields, error, events };
    el.picker.append(b);
    el.empty.hidden = true;
    renderTab(s);
  }

  function renderTab(s) {
    const st = s.status;
    const known = STATES.has(st.state);
    let state = known ? st.state : "unknown";
    let label = known ? st.state : "…";
    if (s.gone) { state = "gone"; label = "gone"; } else if (s.stale) { state = "unknown"; label = "?"; }
    s.tab.button.dataset.state = state;
    s.tab.button.dataset.stale = String(s.stale || s.gone);
    s.tab.state.textContent = label;
    const latency = st.caption_latency_ms ?? (st.inference && st.inference.caption_latency_ms);
    const lag = st.lag_s ?? (st.inference && st.inference.lag_s);
    s.tab.fields.fps.textContent = fmtFixed(st.fps, 1);
    s.tab.fields.drops.textContent = fmtInt(st.drops);
    s.tab.fields.reconnects.textContent = fmtInt(st.reconnects);
    s.tab.fields.lag.textContent = fmtFixed(lag, 1, " s");
    s.tab.fields.latency.textContent = fmtMs(latency);
    const error = typeof st.error === "string" && st.state !== "live" && !s.gone ? st.error : "";
    s.tab.error.textContent = error;
    s.tab.error.hidden = !error;
    const open = openEvents(s);
    s.tab.events.textContent = open ? `● ${open} open` : "";
    s.tab.events.hidden = !open;
    const why = s.gone ? "the gateway no longer reports this stream; its history is kept"
      : s.stale ? "not connected to the gateway; the figures are the last ones received" : error;
    s.tab.button.title = why ? `${s.name}: ${why}` : s.name;
  }

  function select(name) {
    if (!streams.has(name)) return;
    selected = name;
    for (const s of streams.values()) {
      s.tab.button.setAttribute("aria-selected", String(s.name === name));
      s.tab.button.tabIndex = s.name === name ? 0 : -1;
    }
    const hash = `#${encodeURIComponent(name)}`;
    if (window.location.hash !== hash) history.replaceState(history.state, "", hash);
    const s = streams.get(name);
    el.stream.hidden = false;
    el.stream.dataset.stream = name;
    el.question.placeholder = `Ask about the last window of ${name}…`;
    el.announce.textContent = "";
    renderThumb(s);
    renderCurrent(s);
    renderTimeline(s);
    renderAnswers(s);
    renderSummaries(s);
    renderHistoryState(s);
    renderEvents();
  }

  function renderThumb(s) {
    if (!s.thumb) {
      el.thumb.hidden = true;
      el.thumb.removeAttribute("src");
      el.thumbNone.hidden = false;
      el.thumbTime.textContent = "";
      return;
    }
    if (el.thumb.getAttribute("src") !== s.thumb.src) el.thumb.src = s.thumb.src;
    el.thumb.hidden = false;
    el.thumbNone.hidden = true;
    el.thumbTime.textContent = `frame at ${fmtStreamTime(s.thumb.t)} · ${fmtWall(s.thumb.wall)}`;
  }

  function newestCaption(s) {
    for (let i = s.captions.length - 1; i >= 0; i -= 1) if (!s.captions[i]._event) return s.captions[i];
    return null;
  }

  function renderCurrent(s) {
    const c = newestCaption(s);
    if (s.partial) {
      el.current.dataset.kind = "partial";
      el.currentLabel.textContent = "writing…";
      el.currentRange.textContent = "";
      el.currentWall.textContent = "";
      el.currentText.textContent = s.partial.text;
    } else if (c) {
      el.current.dataset.kind = c.earlier_run ? "earlier" : "caption";
      el.current.dataset.seq = String(c.seq);
      el.currentLabel.textContent = c.earlier_run ? "earlier run" : "now";
      el.currentRange.textContent = fmtRange(c.t_start, c.t_end, fmtStreamTime);
      el.currentWall.textContent = fmtRange(c.wall_start, c.wall_end, fmtWall);
      el.currentText.textContent = c.text;
    } else {
      el.current.dataset.kind = "none";
      delete el.current.dataset.seq;
      el.currentLabel.textContent = "now";
      el.currentRange.textContent = el.currentWall.textContent = "";
      el.currentText.textContent = "No caption yet.";
    }
  }

  // The timeline holds the past: every caption and event except the caption shown as current.
  function renderTimeline(s) {
    const current = s.partial ? null : newestCaption(s);
    const frag = document.createDocumentFragment();
    let count = 0;
    for (let i = s.captions.length - 1; i >= 0; i -= 1) {
      const c = s.captions[i];
      if (c === current) continue;
      const li = node("li", c._event ? "entry event" : "entry");
      li.dataset.seq = String(c.seq);
      if (c.earlier_run) li.classList.add("earlier");
      const meta = node("div", "meta");
      meta.append(node("span", "range", fmtRange(c.t_start, c.t_end, fmtStreamTime)),
                  node("span", "wall", num(c.wall_start) === null
                    ? fmtWall(c.wall_end ?? c._received) : fmtRange(c.wall_start, c.wall_end, fmtWall)));
      if (c._event) {
        li.classList.add("marker");
        li.dataset.eventId = c.event_id;
        li.dataset.state = c.state === "end" ? "ended" : "open";
        meta.prepend(node("span", "rule", c.rule),
                     node("span", "event-state", c.state === "end" ? "ended" : "open"));
      }
      if (num(c.skipped)) meta.append(node("span", "skipped", `${fmtInt(c.skipped)} skipped`));
      if (c._unchanged) meta.append(node("span", "unchanged", `unchanged ×${c._unchanged + 1}`));
      else if (c.unchanged === true) meta.append(node("span", "unchanged", "unchanged"));
      if (c.earlier_run) meta.prepend(node("span", "earlier-tag", "earlier run"));
      li.append(meta, node("p", "text", c.text));
      frag.append(li);
      count += 1;
    }
    el.timeline.replaceChildren(frag);
    el.timelineCount.textContent = count ? `(${count})` : "";
  }

  function renderAnswers(s) {
    const frag = document.createDocumentFragment();
    for (let i = s.answers.length - 1; i >= 0; i -= 1) {
      const a = s.answers[i];
      const li = node("li", "answer");
      li.dataset.id = a.id;
      li.dataset.state = a.state;
      const q = node("p", "question", a.question);
      if (a.minutes !== null && a.minutes !== undefined) q.prepend(node("span", "about", `last ${a.minutes} min · `));
      li.append(q, node("p", "reply", a.state === "waiting" ? "thinking…" : a.text));
      if (a.span) {
        const n = a.span.captions === null ? "" : ` · ${fmtInt(a.span.captions)} captions`;
        li.append(node("p", "span", `covers ${fmtRange(a.span.from, a.span.to, fmtDateTime)}${n}`));
      }
      frag.append(li);
    }
    el.answers.replaceChildren(frag);
  }

  // ---- start ----
  function start() {
    el = {
      conn: $("conn"), connText: $("conn-text"), model: $("model"), picker: $("picker"), empty: $("empty"),
      notice: $("notice"), stream: $("stream"), thumb: $("thumb"), thumbNone: $("thumb-none"),
      thumbTime: $("thumb-time"), current: $("current"), currentLabel: $("current-label"),
      currentRange: $("current-range"), currentWall: $("current-wall"), currentText: $("current-text"),
      announce: $("announce"), ask: $("ask"), question: $("question"), answers: $("answers"),
      timeline: $("timeline"), timelineCount: $("timeline-count"), askMinutes: $("ask-minutes"),
      search: $("search"), searchQuery: $("search-query"), found: $("found"), foundCount: $("found-count"),
      foundState: $("found-state"), foundClose: $("found-close"), results: $("results"), moment: $("moment"),
      momentThumb: $("moment-thumb"), momentNone: $("moment-none"), momentStream: $("moment-stream"),
      momentRange: $("moment-range"), momentWall: $("moment-wall"), momentText: $("moment-text"),
      summariesBox: $("summaries-box"), summaries: $("summaries"), historyMore: $("history-more"),
      historyState: $("history-state"), eventsBox: $("events-box"), events: $("events"),
      eventsCount: $("events-count"), eventsOnly: $("events-only"),
    };
    el.eventsOnly.addEventListener("change", () => setEventsOnly(el.eventsOnly.checked));
    el.ask.addEventListener("submit", submitAsk);
    el.askMinutes.addEventListener("input", () => el.askMinutes.setCustomValidity(""));
    el.search.addEventListener("submit", submitSearch);
    el.foundClose.addEventListener("click", () => { el.found.hidden = true; latestSearch = null; });
    el.momentThumb.addEventListener("load", () => { el.momentThumb.hidden = false; el.momentNone.hidden = true; });
    el.momentThumb.addEventListener("error", () => {
      el.momentThumb.hidden = true;
      el.momentNone.hidden = false;
      el.momentNone.textContent = "no frame kept";
    });
    el.historyMore.addEventListener("click", () => { const s = streams.get(selected); if (s) loadEarlier(s); });
    // Scrolling to the end of the timeline (its oldest captions) loads earlier ones from the store.
    el.timeline.addEventListener("scroll", () => {
      const t = el.timeline;
      const s = streams.get(selected);
      if (s && t.scrollHeight > t.clientHeight && t.scrollTop + t.clientHeight >= t.scrollHeight - 40) loadEarlier(s);
    }, { passive: true });
    el.picker.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const names = [...streams.keys()];
      const step = event.key === "ArrowRight" ? 1 : -1;
      const next = names[(names.indexOf(selected) + step + names.length) % names.length];
      userPicked = true;
      select(next);
      streams.get(next).tab.button.focus();
    });
    window.addEventListener("hashchange", () => {
      const name = streamFromHash();
      if (streams.has(name) && name !== selected) { userPicked = true; select(name); }
    });
    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
