// gossipmed dashboard: polls /dashboard.json (same origin, read-only) and draws it.
// No external resources; every value from the server is written with textContent or as an
// SVG attribute, never parsed as HTML.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fb0", "#d9822b", "#3c9a5f", "#b23a3a", "#7a4fb3", "#8c6d3f",
                   "#d16ba5", "#5b6b7a", "#b5b83a", "#2aa5b8"];
  const MAX_SERIES = 24;
  let refreshMs = 2000;

  function $(id) { return document.getElementById(id); }
  function text(id, value) { const el = $(id); if (el) el.textContent = value; }
  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function fmt(x, digits) {
    if (!isNum(x)) return "–";
    if (Math.abs(x) >= 1e5 || (x !== 0 && Math.abs(x) < 1e-3)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits).replace(/\.?0+$/, "") || "0";
  }
  function bytes(x) {
    if (!isNum(x)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return x.toFixed(i ? 1 : 0) + " " + units[i];
  }
  // Rounds are 0-based in every format (/status, metrics.jsonl) and shown 1-based, as in the
  // daemon's logs, `status` and `inspect`: the record of round 0 is "round 1".
  function shown(r) { return isNum(r) ? r + 1 : r; }
  function ago(t, now) { return isNum(t) ? fmt(Math.max(0, now - t), 1) + " s ago" : "never"; }

  // ---- summary cards ----------------------------------------------------------------------
  function summary(doc) {
    const sites = doc.sites || [];
    const rounds = sites.map((s) => s.round).filter(isNum);
    text("round-label", doc.mode === "site" ? "round" : "furthest round");
    text("completed-label", doc.mode === "site" ? "rounds completed since start" : "sites");
    if (doc.mode === "site") {
      const s = sites[0] || {};
      text("round", isNum(s.round) ? String(shown(s.round)) : "–");
      text("phase", s.phase || "");
      text("completed", isNum(s.completed) ? String(s.completed) : "–");
      text("ready", s.ready ? "ready" : "starting");
      text("bytes", bytes(s.bytes_sent) + " / " + bytes(s.bytes_received));
      epsilon(s.epsilon_spent, s.epsilon_budget);
    } else {
      text("round", rounds.length ? String(shown(Math.max(...rounds))) : "–");
      text("phase", rounds.length ? "slowest site at round " + shown(Math.min(...rounds)) : "");
      const up = sites.filter((s) => s.up === true).length;
      text("completed", String(sites.length));
      text("ready", sites.some((s) => s.up !== null) ? up + " running" : "finished run");
      const spent = sites.map((s) => s.epsilon_spent).filter(isNum);
      const budgets = sites.map((s) => s.epsilon_budget).filter(isNum);
      epsilon(spent.length ? Math.max(...spent) : null, budgets.length ? Math.min(...budgets) : null);
      // running daemons count since their start, finished sites their metrics' rounds
      const sent = sites.map((s) => s.bytes_sent).filter(isNum);
      const got = sites.map((s) => s.bytes_received).filter(isNum);
      const sum = (xs) => xs.reduce((a, b) => a + b, 0);
      text("bytes", sent.length ? bytes(sum(sent)) + " / " + bytes(sum(got)) + " (all sites)" : "–");
    }
  }

  function epsilon(spent, budget) {
    const bar = $("epsilon-bar");
    if (!isNum(spent)) { text("epsilon-text", "–"); bar.style.width = "0"; return; }
    text("epsilon-text", fmt(spent, 3) + (isNum(budget) ? " / " + fmt(budget, 2) : " (no budget: DP off)"));
    const share = isNum(budget) && budget > 0 ? Math.min(1, spent / budget) : 0;
    bar.style.width = (100 * share).toFixed(1) + "%";
    bar.className = share >= 1 ? "full" : share >= 0.8 ? "high" : "";
  }

  // ---- topology ---------------------------------------------------------------------------
  function roundColour(r, lo, hi) {
    if (!isNum(r)) return "#e3e7ec";
    const t = hi > lo ? (r - lo) / (hi - lo) : 1;
    return "hsl(210, 55%, " + (82 - 45 * t).toFixed(0) + "%)";
  }
  function epsColour(spent, budget) {
    if (!isNum(spent) || !isNum(budget) || budget <= 0) return "#9aa5b1";
    const t = Math.min(1, spent / budget);
    return "hsl(" + (120 - 120 * t).toFixed(0) + ", 65%, 42%)";
  }

  function topology(doc) {
    const svg = $("topology");
    clear(svg);
    const graph = doc.graph || { nodes: [], edges: [] };
    const nodes = graph.nodes || [];
    const cards = Object.fromEntries((doc.sites || []).map((s) => [s.name, s]));
    const rounds = graph.rounds || {};
    const values = nodes.map((n) => rounds[n]).filter(isNum);
    const lo = values.length ? Math.min(...values) : 0;
    const hi = values.length ? Math.max(...values) : 0;
    const unreachable = new Set(graph.unreachable || []);
    const pos = {};
    const cx = 200, cy = 160, radius = nodes.length > 1 ? 125 : 0;
    nodes.forEach((n, i) => {
      if (doc.mode === "site" && i === 0) { pos[n] = [cx, cy]; return; }
      const k = doc.mode === "site" ? i - 1 : i;
      const count = doc.mode === "site" ? nodes.length - 1 : nodes.length;
      const a = -Math.PI / 2 + (2 * Math.PI * k) / Math.max(1, count);
      pos[n] = [cx + radius * Math.cos(a), cy + radius * Math.sin(a)];
    });
    for (const [a, b] of graph.edges || []) {
      if (!pos[a] || !pos[b]) continue;
      el("line", { class: "edge", x1: pos[a][0], y1: pos[a][1], x2: pos[b][0], y2: pos[b][1] }, svg);
    }
    const size = nodes.length > 24 ? 7 : 14;
    for (const n of nodes) {
      const card = cards[n] || {};
      const g = el("g", { class: "site", "data-site": n }, svg);
      const title = el("title", {}, g);
      title.textContent = n + ": round " + (isNum(rounds[n]) ? shown(rounds[n]) : "?") +
        (isNum(card.epsilon_spent) ? ", epsilon " + fmt(card.epsilon_spent, 3) : "");
      el("circle", {
        cx: pos[n][0], cy: pos[n][1], r: size,
        fill: roundColour(rounds[n], lo, hi),
        stroke: epsColour(card.epsilon_spent, card.epsilon_budget),
        "stroke-width": 4,
        "stroke-dasharray": unreachable.has(n) ? "4 3" : "none",
      }, g);
      if (nodes.length <= 24) {
        const label = el("text", { class: "node-label", x: pos[n][0], y: pos[n][1] + size + 12 }, g);
        label.textContent = n + (isNum(rounds[n]) ? " · round " + shown(rounds[n]) : "");
      }
    }
    text("graph-title", doc.mode === "site" ? "neighbourhood" : "topology (" + nodes.length + " sites)");
  }

  // ---- tables -----------------------------------------------------------------------------
  function table(head, rows) {
    const t = $("sites");
    const thead = t.tHead, tbody = t.tBodies[0];
    while (thead.rows.length) thead.deleteRow(0);
    while (tbody.rows.length) tbody.deleteRow(0);
    const hr = thead.insertRow();
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; hr.appendChild(th); }
    for (const r of rows) {
      const tr = tbody.insertRow();
      for (const cell of r) {
        const td = tr.insertCell();
        td.textContent = cell.text;
        if (cell.cls) td.className = cell.cls;
      }
    }
  }

  function neighbourTable(doc) {
    const now = doc.now;
    text("table-title", "neighbours");
    table(["neighbour", "connected", "who dials", "last heard", "last round", "accepted", "wait"],
      (doc.neighbours || []).map((p) => {
        const link = p.link || {};
        const dial = link.dial === "keep-open" ? "we dial" : link.dial === "never" ? "it dials" : "either";
        return [
          { text: String(p.name) },
          { text: p.connected ? "yes" + (link.direction ? " (" + link.direction + ")" : "") : "no",
            cls: p.connected ? "ok" : "bad" },
          { text: dial + (p.reachable === false ? " · unreachable" : "") },
          { text: ago(p.last_heard, now) },
          { text: isNum(p.last_round) ? String(shown(p.last_round)) : "–", cls: "num" },
          { text: String(p.accepted || 0), cls: "num" },
          { text: isNum(p.wait_s) ? fmt(p.wait_s, 1) + " s" : "–", cls: "num" },
        ];
      }));
  }

  function siteTable(doc) {
    text("table-title", "sites");
    const score = doc.score || { column: "accuracy", label: "accuracy" };
    table(["site", "state", "round", "epsilon", score.label, "consensus dist."],
      (doc.sites || []).map((s) => [
        { text: s.name },
        { text: s.up === null ? "–" : s.up ? (s.phase || "up") : "down", cls: s.up === false ? "bad" : s.up ? "ok" : "" },
        { text: isNum(s.round) ? String(shown(s.round)) : "–", cls: "num" },
        { text: fmt(s.epsilon_spent, 3) + (isNum(s.epsilon_budget) ? " / " + fmt(s.epsilon_budget, 2) : ""), cls: "num" },
        { text: fmt(s[score.column], 3), cls: "num" },
        { text: fmt(s.consensus_distance, 3), cls: "num" },
      ]));
  }

  // ---- charts -----------------------------------------------------------------------------
  function lineChart(id, series, opts) {
    const svg = $(id);
    clear(svg);
    legendFor(svg, series);
    const W = 480, H = 210, L = 52, R = 12, T = 10, B = 26;
    const log = !!opts.log;
    const pts = [];
    for (const s of series) for (const p of s.points) if (isNum(p[0]) && isNum(p[1]) && (!log || p[1] > 0)) pts.push(p);
    if (!pts.length) {
      const t = el("text", { class: "tick", x: W / 2, y: H / 2, "text-anchor": "middle" }, svg);
      t.textContent = "no data yet";
      return;
    }
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => (log ? Math.log10(p[1]) : p[1]));
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (opts.zero && !log) y0 = Math.min(0, y0);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    for (const y of log ? logTicks(y0, y1) : linearTicks(y0, y1)) {
      el("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }, svg);
      const t = el("text", { class: "tick", x: L - 4, y: sy(y) + 3, "text-anchor": "end" }, svg);
      t.textContent = log ? powerLabel(y) : opts.bytes ? bytes(y) : fmt(y, 3);
    }
    el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, svg);
    el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }, svg);
    [[x0, "start"], [Math.round((x0 + x1) / 2), "middle"], [x1, "end"]].forEach(([x, anchor]) => {
      const t = el("text", { class: "tick", x: sx(x), y: H - B + 14, "text-anchor": anchor }, svg);
      t.textContent = "round " + x;
    });
    series.forEach((s, i) => {
      const ok = s.points.filter((p) => isNum(p[0]) && isNum(p[1]) && (!log || p[1] > 0));
      if (!ok.length) return;
      const d = ok.map((p, k) => (k ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(log ? Math.log10(p[1]) : p[1]).toFixed(1)).join(" ");
      const path = el("path", { class: "series", d: d, stroke: s.colour || PALETTE[i % PALETTE.length] }, svg);
      if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
      const title = el("title", {}, path);
      title.textContent = s.name;
    });
  }

  function linearTicks(y0, y1) {
    const out = [];
    for (let i = 0; i <= 4; i++) out.push(y0 + ((y1 - y0) * i) / 4);
    return out;
  }

  // Ticks of a log10 axis: whole decades when the data spans one or more (at most 6 labels),
  // else 5 evenly spaced values; labelled as the numbers themselves (0.01, 2.5, 1e-6), never
  // as fractional exponents.
  function logTicks(y0, y1) {
    const lo = Math.ceil(y0 - 1e-9), hi = Math.floor(y1 + 1e-9);
    if (hi - lo < 1) return linearTicks(y0, y1);
    const step = Math.max(1, Math.ceil((hi - lo + 1) / 6));
    const out = [];
    for (let k = lo; k <= hi; k += step) out.push(k);
    return out;
  }
  function powerLabel(y) {
    const k = Math.round(y);
    if (Math.abs(y - k) < 1e-9) return k >= -3 && k <= 4 ? String(Math.pow(10, k)).replace(/^0\./, "0.") : "1e" + k;
    return fmt(Math.pow(10, y), 2);
  }

  // The legend as HTML under the chart: it wraps instead of being cut off, and names every
  // series in full.
  function legendFor(svg, series) {
    let box = svg.nextElementSibling;
    if (!box || !box.classList.contains("chart-legend")) {
      box = document.createElement("div");
      box.className = "chart-legend";
      svg.parentNode.insertBefore(box, svg.nextSibling);
    }
    while (box.firstChild) box.removeChild(box.firstChild);
    series.forEach((s, i) => {
      const item = document.createElement("span");
      item.className = "item";
      const swatch = document.createElement("span");
      swatch.className = "swatch" + (s.dash ? " dashed" : "");
      swatch.style.borderColor = s.colour || PALETTE[i % PALETTE.length];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    });
  }

  function charts(doc) {
    const cols = doc.columns || [];
    const at = (name) => cols.indexOf(name);
    const history = doc.history || {};
    const names = Object.keys(history).sort().slice(0, MAX_SERIES);
    const col = (name, c) => (history[name] || []).map((r) => [shown(r[at("round")]), r[at(c)]]);
    const score = doc.score || { column: "accuracy", label: "accuracy" };
    text("chart-accuracy-title", score.label + " per site");  // free text: the held-out loss
    const accuracy = names.map((n) => ({ name: n, points: col(n, score.column) }));
    const baselines = doc.baselines || {};
    const styles = { "local-only": ["#5b6b7a", "6 3"], "centralized": ["#1d2733", "2 3"] };
    for (const [name, points] of Object.entries(baselines)) {
      const [colour, dash] = styles[name] || ["#5b6b7a", "6 3"];
      accuracy.push({ name: name + " (mean)", points: points.map((p) => [shown(p[0]), p[1]]), colour: colour, dash: dash });
    }
    lineChart("chart-accuracy", accuracy, { zero: true });
    lineChart("chart-consensus", names.map((n) => ({ name: n, points: col(n, "consensus_distance") })), { log: true });
    const traffic = [];
    names.forEach((n, i) => {
      const colour = PALETTE[i % PALETTE.length];
      traffic.push({ name: n + " sent", points: col(n, "bytes_sent"), colour: colour });
      if (names.length <= 4) traffic.push({ name: n + " received", points: col(n, "bytes_received"), colour: colour, dash: "4 3" });
    });
    lineChart("chart-bytes", traffic, { zero: true, bytes: true });
    lineChart("chart-epsilon", names.map((n) => ({ name: n, points: col(n, "epsilon") })), { zero: true });
  }

  // ---- refresh loop -----------------------------------------------------------------------
  function render(doc) {
    document.title = doc.title || "gossipmed dashboard";
    text("title", doc.title || "gossipmed");
    summary(doc);
    topology(doc);
    if (doc.mode === "site") neighbourTable(doc); else siteTable(doc);
    charts(doc);
    document.body.setAttribute("data-mode", doc.mode || "");
    text("updated", "updated " + new Date((doc.now || Date.now() / 1000) * 1000).toLocaleTimeString());
    if (isNum(doc.refresh_s) && doc.refresh_s > 0) refreshMs = 1000 * doc.refresh_s;
  }

  // The token comes in the URL fragment (#token=..., never sent to the server). Keep it in
  // sessionStorage (this origin, this tab), take it out of the address bar, and send it as
  // a header on every fetch. No cookies.
  const TOKEN_KEY = "gossipmed-token";
  let token = "";
  function loadToken() {
    const match = /(?:^#|&)token=([A-Za-z0-9_-]+)/.exec(window.location.hash || "");
    try {
      if (match) window.sessionStorage.setItem(TOKEN_KEY, match[1]);
      token = window.sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      token = match ? match[1] : "";
    }
    if (match && window.history && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function refresh() {
    fetch("/dashboard.json", { cache: "no-store", headers: { Authorization: "Bearer " + token } })
      .then((r) => {
        if (r.status === 401) throw new Error("no valid token: open the address `gossipmed status --url` prints");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch((e) => text("updated", "not updated: " + e.message))
      .finally(() => setTimeout(refresh, refreshMs));
  }

  loadToken();
  refresh();
})();
