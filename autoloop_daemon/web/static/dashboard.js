// autoloopd dashboard: polls the control server's JSON and draws the fleet as a table and
// SVG plots. Served as /static/dashboard.js beside / (index.html); every URL is relative,
// so the page also works behind a path prefix. No libraries, no network beyond the routes
// below; the only writes are review verdicts, sent with the page's own authorisation:
//   GET api/status                     the fleet snapshot
//   GET api/targets/<name>/history     one target's iteration_log.jsonl entries
//   GET api/reviews                    the candidates awaiting review (in cluster mode
//                                      the whole cluster's, each queue with its host)
//   POST api/targets/<name>/review     {"id", "verdict": "approve"|"reject", "note"}
// Every data point is a <circle class="point|cost-point|spend-point" data-target=...>.
"use strict";

const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const histories = new Map(); // target -> {key, entries}

function text(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function money(amount, estimated) {
  if (amount === null || amount === undefined) return "-";
  return (estimated ? "~" : "") + "$" + Number(amount).toFixed(4);
}

function score(value) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(4);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return h + "h " + String(m).padStart(2, "0") + "m";
  if (m) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}

function localTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

// No run is due after a stop or the circuit breaker: their next_run_at is not shown.
function stopped(status) {
  return typeof status === "string" && (status.startsWith("stopped_") || status === "error");
}

function el(tag, attrs, content) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (content !== undefined) node.textContent = content;
  return node;
}

function svgEl(tag, attrs, content) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (content !== undefined) node.textContent = content;
  return node;
}

function span(values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (Math.abs(high - low) < 1e-12) {
    const pad = Math.abs(low) * 0.1 || 1;
    low -= pad;
    high += pad;
  }
  return [low, high];
}

// A line plot of points [[x, y], ...]; the same shapes as autoloop_daemon/report/svg.py.
function linePlot(points, opts) {
  const width = 480, height = 200, left = 56, right = 12, top = 22, bottom = 26;
  const svg = svgEl("svg", {
    class: "plot", "data-target": opts.target, "data-kind": opts.pointClass,
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": opts.title,
  });
  svg.appendChild(svgEl("text", { class: "title", x: left, y: 14 }, opts.title));
  if (!points.length) {
    svg.appendChild(svgEl("text", { class: "empty", x: width / 2, y: height / 2,
      "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const fy = opts.yFormat || ((v) => Number(v).toPrecision(3));
  const fx = opts.xFormat || ((v) => String(v));
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const hasCap = opts.cap !== null && opts.cap !== undefined && isFinite(opts.cap);
  // A cap far above the data would flatten the line: then it is a note, not a line.
  const capped = hasCap && opts.cap <= 2 * Math.max(...ys);
  if (capped) ys.push(opts.cap, 0);
  const [xLow, xHigh] = span(xs);
  const [yLow, yHigh] = span(ys);
  const innerW = width - left - right, innerH = height - top - bottom;
  const sx = (x) => (left + ((x - xLow) / (xHigh - xLow)) * innerW).toFixed(2);
  const sy = (y) => (top + (1 - (y - yLow) / (yHigh - yLow)) * innerH).toFixed(2);
  const yBottom = height - bottom, xRight = width - right;
  svg.appendChild(svgEl("line", { class: "axis", x1: left, y1: yBottom, x2: xRight, y2: yBottom }));
  svg.appendChild(svgEl("line", { class: "axis", x1: left, y1: top, x2: left, y2: yBottom }));
  svg.appendChild(svgEl("text", { class: "tick", x: left - 4, y: top + 4, "text-anchor": "end" },
    fy(yHigh)));
  svg.appendChild(svgEl("text", { class: "tick", x: left - 4, y: yBottom, "text-anchor": "end" },
    fy(yLow)));
  for (const x of [...new Set([Math.min(...xs), Math.max(...xs)])]) {
    svg.appendChild(svgEl("text", { class: "tick", x: sx(x), y: height - 8,
      "text-anchor": "middle" }, fx(x)));
  }
  if (hasCap && !capped) {
    svg.appendChild(svgEl("text", { class: "cap-note", x: xRight, y: 14, "text-anchor": "end" },
      "cap " + fy(opts.cap) + " (off the chart)"));
  }
  if (capped) {
    const cap = svgEl("line", { class: "cap", x1: left, y1: sy(opts.cap), x2: xRight,
      y2: sy(opts.cap) });
    cap.appendChild(svgEl("title", {}, "cap " + fy(opts.cap)));
    svg.appendChild(cap);
  }
  svg.appendChild(svgEl("polyline", { class: "series",
    points: points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" ") }));
  for (const [x, y] of points) {
    const c = svgEl("circle", { class: opts.pointClass, "data-target": opts.target,
      "data-x": x, "data-y": y, cx: sx(x), cy: sy(y), r: 3 });
    c.appendChild(svgEl("title", {}, fx(x) + ": " + fy(y)));
    svg.appendChild(c);
  }
  return svg;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function renderDaemon(status) {
  const d = status.daemon || {};
  const state = !d.running ? "not running" : d.shutting_down ? "shutting down"
    : d.ready ? "running" : "starting";
  document.getElementById("daemon").textContent =
    `daemon ${state}, pid ${text(d.pid)}, up ${duration(d.uptime_s)} ` +
    `(since ${localTime(d.started_at)})`;
  const b = status.budget || {};
  const cap = b.cap_usd === null || b.cap_usd === undefined ? "no shared cap" : money(b.cap_usd);
  document.getElementById("budget").textContent =
    `budget: ${money(b.spent_usd)} spent of ${cap}` +
    (b.reserved_usd ? `, ${money(b.reserved_usd)} reserved` : "") +
    (b.remaining_usd !== null && b.remaining_usd !== undefined
      ? `, ${money(b.remaining_usd)} remaining` : "");
}

function renderTable(targets) {
  const body = document.querySelector("#fleet tbody");
  const rows = targets.map((t) => {
    const tr = el("tr", { "data-target": t.target, "data-status": t.status });
    tr.className = "status-" + t.status + (t.paused ? " paused" : "");
    const running = t.running_iteration
      ? `#${t.running_iteration} for ${duration(t.running_for_s)}` : "-";
    const cells = [
      [t.target, ""], [t.status, "status"], [t.phase, ""],
      [`${text(t.iterations_completed)}/${text(t.max_iterations)}`, "num"], [running, ""],
      [score(t.best_weighted_score), "num"], [score(t.last_weighted_score), "num"],
      [text(t.last_decision), ""],
      [`${money(t.total_cost_usd, t.estimated)} / ${money(t.max_cost_usd)}`, "num"],
      [stopped(t.status) ? "-" : localTime(t.next_run_at), ""], [t.reason || (t.last_error ? `last error: ${t.last_error}` : ""), "reason"],
    ];
    for (const [value, cls] of cells) tr.appendChild(el("td", cls ? { class: cls } : {}, value));
    return tr;
  });
  body.replaceChildren(...rows);
}

function historyKey(t) {
  return [t.iterations_completed, t.running_iteration, t.status, t.total_cost_usd,
    t.consecutive_errors].join("|");
}

async function refreshHistories(targets) {
  const wanted = new Set(targets.map((t) => t.target));
  for (const name of [...histories.keys()]) if (!wanted.has(name)) histories.delete(name);
  await Promise.all(targets.map(async (t) => {
    const key = historyKey(t);
    const known = histories.get(t.target);
    if (known && known.key === key) return;
    const url = "api/targets/" + encodeURIComponent(t.target) + "/history";
    const data = await getJSON(url);
    histories.set(t.target, { key, entries: Array.isArray(data.entries) ? data.entries : [] });
  }));
}

function renderTargets(targets) {
  const box = document.getElementById("targets");
  const sections = targets.map((t) => {
    const entries = (histories.get(t.target) || { entries: [] }).entries;
    const scored = entries.filter((e) => e.weighted_score !== null && e.weighted_score !== undefined)
      .map((e) => [e.iteration, e.weighted_score]);
    let total = 0;
    const costs = entries.map((e) => [e.iteration, (total += Number(e.cost_usd) || 0)]);
    const section = el("div", { class: "target", "data-target": t.target });
    section.appendChild(el("h3", {}, `${t.target}: ${t.status}` + (t.reason ? ` (${t.reason})` : "")));
    const plots = el("div", { class: "plots" });
    plots.appendChild(linePlot(scored, { target: t.target, pointClass: "point",
      title: "Weighted score by iteration", xFormat: (x) => "#" + x,
      yFormat: (y) => Number(y).toFixed(3) }));
    plots.appendChild(linePlot(costs, { target: t.target, pointClass: "cost-point",
      title: "Cumulative cost (USD)", cap: t.max_cost_usd, xFormat: (x) => "#" + x,
      yFormat: (y) => "$" + Number(y).toFixed(2) }));
    section.appendChild(plots);
    return section;
  });
  box.replaceChildren(...sections);
}

function renderSpend(status) {
  const all = [];
  for (const { entries } of histories.values()) {
    for (const e of entries) {
      const at = Date.parse(e.finished_at);
      if (!isNaN(at)) all.push([at, Number(e.cost_usd) || 0]);
    }
  }
  all.sort((a, b) => a[0] - b[0]);
  let total = 0;
  const points = all.map(([at, cost]) => [at, (total += cost)]);
  const cap = status.budget ? status.budget.cap_usd : null;
  const plot = linePlot(points, { target: "*", pointClass: "spend-point",
    title: "Spent by all targets", cap,
    xFormat: (x) => new Date(x).toLocaleTimeString(), yFormat: (y) => "$" + Number(y).toFixed(2) });
  document.getElementById("spend").replaceChildren(plot);
}

let reviewKey = null; // the pending ids drawn: a note being typed survives refreshes

function renderReviews(payload) {
  const queues = Array.isArray(payload.targets) ? payload.targets : [];
  // In cluster mode each queue names the host that holds it (or last published it).
  const pending = queues.flatMap((q) => (q.pending || []).map((e) => ({ target: q.target, e,
    where: q.host ? q.target + " (" + q.host + (q.held === false ? ", not held" : "") + ")" : q.target })));
  document.getElementById("review-count").textContent = String(pending.length);
  const key = pending.map(({ target, e, where }) => target + "/" + e.id + "@" + where).join("|");
  if (key === reviewKey) return;
  reviewKey = key;
  const rows = pending.map(({ target, e, where }) => {
    const tr = el("tr", { "data-target": target, "data-review-id": e.id });
    const cells = [where, e.candidate_id || e.id, text(e.category), text(e.risk_level),
      duration(e.age_s), e.title || ""];
    for (const value of cells) tr.appendChild(el("td", {}, value));
    const note = el("input", { type: "text", class: "note", placeholder: "note (optional)" });
    tr.appendChild(el("td")).appendChild(note);
    const actions = tr.appendChild(el("td"));
    for (const verdict of ["approve", "reject"]) {
      const button = el("button", { type: "button", class: verdict }, verdict);
      button.addEventListener("click", () => decide(target, e.id, verdict, note.value, tr));
      actions.appendChild(button);
    }
    return tr;
  });
  document.querySelector("#reviews tbody").replaceChildren(...rows);
}

async function decide(target, id, verdict, note, row) {
  const message = document.getElementById("review-message");
  for (const b of row.querySelectorAll("button")) b.disabled = true;
  const url = "api/targets/" + encodeURIComponent(target) + "/review";
  let text;
  try {
    const response = await fetch(url, {
      method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id, verdict, note: note || null, reviewer: "dashboard" }),
    });
    const body = await response.json().catch(() => ({}));
    text = response.ok ? `${verdict}d ${id} of ${target}`
      : `${verdict} refused (HTTP ${response.status}): ${body.error || ""}`;
    if (response.ok) { row.remove(); reviewKey = null; }
  } catch (exc) {
    text = `${verdict} failed: ${exc.message}`;
  }
  for (const b of row.querySelectorAll("button")) b.disabled = false;
  message.textContent = text;
  message.hidden = false;
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const status = await getJSON("api/status");
    const targets = Array.isArray(status.targets) ? status.targets : [];
    renderDaemon(status);
    renderTable(targets);
    await refreshHistories(targets);
    renderTargets(targets);
    renderSpend(status);
    renderReviews(await getJSON("api/reviews"));
    error.hidden = true;
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (exc) {
    error.textContent = "cannot reach the daemon: " + exc.message + " (showing the last data)";
    error.hidden = false;
  }
}

document.getElementById("interval").textContent = String(REFRESH_MS / 1000);
// One refresh at a time: the next starts REFRESH_MS after the previous one finished.
(async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
})();
