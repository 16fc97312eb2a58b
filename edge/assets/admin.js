// The operator's page: reads the admin API every few seconds and draws it. No library,
// no network but this edge. The admin token lives in this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "tandem-admin-token";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await reply.json().catch(() => ({}));
  if (reply.status === 401) { sessionStorage.removeItem(TOKEN_KEY); show(); throw new Error("the token was refused"); }
  if (!reply.ok) throw new Error(data.detail || `${reply.status}`);
  return data;
}

function text(id, value) { $(id).textContent = value === null || value === undefined ? "–" : String(value); }
const CLOCK = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
function time(iso) { return iso ? new Date(iso).toLocaleTimeString([], CLOCK) : "–"; }
/** An axis figure people read at a glance: 1.5k, 250, 4.7, 0.012. */
function human(v) { return v >= 1000 ? `${(v / 1000).toPrecision(2)}k` : v >= 10 ? String(Math.round(v)) : v.toPrecision(2); }
function mark(panel) { $(panel).dataset.hasData = "true"; }
function el(tag, cells) { const row = document.createElement(tag); for (const c of cells) { const td = document.createElement("td"); td.textContent = c; row.appendChild(td); } return row; }
/** Fills a table's body with `rows`, or one row saying `empty` when there are none. */
function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  if (rows.length === 0 && empty) {
    const td = document.createElement("td"); td.colSpan = $(tableId).querySelectorAll("th").length; td.className = "hint"; td.textContent = empty;
    const tr = document.createElement("tr"); tr.appendChild(td); body.replaceChildren(tr);
  } else body.replaceChildren(...rows.map((r) => el("tr", r)));
}

// === charts (plain SVG) ===

const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, parent) { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); parent.appendChild(n); return n; }

/** Draws `series` ([{cls, points: [[ms, value|null]]}]) over [from, to], with `markers` ([{at, label, bad}]). */
function chart(id, series, from, to, options = {}) {
  const node = $(id);
  const [w, h] = node.getAttribute("viewBox").split(" ").slice(2).map(Number);
  const pad = { l: 34, r: 6, t: 8, b: 16 };
  node.replaceChildren();
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null));
  const max = options.max ?? Math.max(1e-9, ...values) * 1.1;
  const x = (t) => pad.l + ((t - from) / Math.max(1, to - from)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  svg("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, class: "axis" }, node);
  svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, class: "axis" }, node);
  svg("text", { x: 2, y: pad.t + 8 }, node).textContent = options.format ? options.format(max) : human(max);
  svg("text", { x: 2, y: h - pad.b }, node).textContent = "0";
  svg("text", { x: pad.l, y: h - 3 }, node).textContent = new Date(from).toLocaleTimeString([], CLOCK);
  svg("text", { x: w - pad.r, y: h - 3, "text-anchor": "end" }, node).textContent = new Date(to).toLocaleTimeString([], CLOCK);
  let named = 0;
  for (const m of options.markers || []) {
    const mx = x(m.at);
    svg("line", { x1: mx, y1: pad.t, x2: mx, y2: h - pad.b, class: m.bad ? "marker bad" : "marker" }, node);
    // Names alternate between two heights, so two close events stay readable.
    if (m.label) svg("text", { x: mx + 2, y: pad.t + 10 + 12 * (named++ % 2) }, node).textContent = m.label;
  }
  for (const s of series) {
    let run = [];
    // A lone point (a young edge, a gap on both sides) is a dot: a one-point line is invisible.
    const flush = () => {
      if (run.length === 1) { const [cx, cy] = run[0].split(","); svg("circle", { cx, cy, r: 2.5, class: `dot ${s.cls}` }, node); }
      if (run.length) svg("polyline", { points: run.join(" "), class: s.cls }, node);
      run = [];
    };
    for (const [t, v] of s.points) { if (v === null) flush(); else run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`); }
    flush();
  }
  node.dataset.points = String(values.length);
}

// === panels ===

function drawDial(routing, rollout) {
  text("p", routing.P); text("mode", routing.mode); text("dial-rollout", routing.rollout);
  text("replica", `${rollout.replica}${rollout.leader ? " (leader)" : ""}`);
  for (const name of ["v1", "v2", "orders"]) {
    const b = (routing.ejection || {})[name] || {};
    const left = b.reopensInSeconds == null ? "" : ` ${Math.ceil(b.reopensInSeconds)} s`;
    text(`eject-${name}`, `${b.state || "–"}${left}`);
    $(`eject-${name}`).classList.toggle("bad", b.state === "open" || b.state === "halfOpen");
  }
  if (document.activeElement !== $("p-input")) $("p-input").value = routing.P;
  mark("dial");
}

function drawStats(stats) {
  const points = stats.points.map((p) => ({ ...p, t: Date.parse(p.at) }));
  // The charts span the traffic kept: up to 15 minutes, less while the edge is young.
  const to = Date.now();
  const from = Math.max(to - 15 * 60 * 1000, (points.length ? points[0].t : to) - stats.stepSeconds * 1000);
  // P over time: the value set within a point, else the last one known.
  let p = points.length && points[0].P !== undefined ? points[0].P : stats.P;
  const pLine = points.map((pt) => { if (pt.P !== undefined) p = pt.P; return [pt.t, p]; });
  pLine.push([to, stats.P]);
  // Every event is a line; only those that change the rollout's course are named, so
  // the names of a quick run of steps do not write over each other.
  const named = new Set(["started", "rolledBack", "completed", "paused", "resumed", "aborted", "promoted"]);
  const markers = stats.events.map((e) => ({ at: Date.parse(e.at), label: named.has(e.event) ? e.event : "", bad: e.event === "rolledBack" || e.event === "failed" }));
  chart("p-chart", [{ cls: "p", points: pLine }], from, to, { max: 100, markers, format: () => "100" });
  const per = (key, flavor) => points.map((pt) => [pt.t, pt[flavor].requests ? pt[flavor][key] : (key === "rate" ? 0 : null)]);
  chart("rate-chart", [{ cls: "v1", points: per("rate", "v1") }, { cls: "v2", points: per("rate", "v2") }], from, to);
  chart("error-chart", [{ cls: "v1", points: per("errorRate", "v1") }, { cls: "v2", points: per("errorRate", "v2") }], from, to, { max: Math.max(0.05, ...points.flatMap((pt) => [pt.v1.errorRate, pt.v2.errorRate])) * 1.1 });
  chart("p50-chart", [{ cls: "v1", points: per("p50Ms", "v1") }, { cls: "v2", points: per("p50Ms", "v2") }], from, to);
  chart("p99-chart", [{ cls: "v1", points: per("p99Ms", "v1") }, { cls: "v2", points: per("p99Ms", "v2") }], from, to);
  if (points.some((pt) => pt.v1.requests + pt.v2.requests > 0)) { mark("flavors"); }
  if (pLine.length > 1) mark("p-history");
}

function drawRollout(r) {
  text("rollout-state", r.state);
  text("rollout-step", r.steps.length ? `${r.step + 1} of ${r.steps.length} (P ${r.steps[r.step]})` : "–");
  text("rollout-failed", r.failedChecks); text("rollout-inconclusive", r.inconclusiveChecks);
  text("rollout-next", time(r.nextCheckAt));
  const last = [...r.history].reverse().slice(0, 30);
  fill("history", last.map((e) => [time(e.at), e.P, e.event, e.v2 ? e.v2.requests : "", e.v2 ? e.v2.errorRate : "", e.v2 && e.v2.p99Ms !== null ? e.v2.p99Ms : "", e.shadow && e.shadow.mismatchRate !== null ? e.shadow.mismatchRate : "", e.reason]));
  if (r.history.length) mark("rollout");
  if (r.plan && !planEdited) showPlan(r.plan);
}

// The start form shows the last rollout's plan, to run again after a rollback, until
// the operator edits it.
let planEdited = false;
function showPlan(plan) {
  $("steps").value = plan.steps.join(","); $("interval").value = plan.intervalSeconds;
  $("max-error").value = plan.maxErrorRate; $("max-p99").value = plan.maxP99Ms;
  $("min-requests").value = plan.minRequests; $("threshold").value = plan.failureThreshold;
  $("max-shadow").value = plan.maxShadowMismatchRate ?? "";
}

function drawShadow(s) {
  text("shadow-compared", s.compared); text("shadow-matched", s.matched); text("shadow-mismatched", s.mismatched);
  text("shadow-noise", s.noise); text("shadow-dropped", s.dropped); text("shadow-failed", s.failed);
  if (document.activeElement !== $("fraction")) $("fraction").value = s.fraction;
  if (document.activeElement !== $("ignore")) $("ignore").value = s.ignore.join(", ");
  const fields = Object.entries(s.fields).sort((a, b) => b[1] - a[1]);
  const none = s.compared > 0 ? "no mismatch so far" : "nothing compared yet";
  fill("fields", fields.map(([f, n]) => [f, n]), none);
  fill("recent", s.recent.slice(0, 15).map((e) => [time(e.at), e.field, e.served, JSON.stringify(e.servedValue), JSON.stringify(e.otherValue), e.userId]), none);
  if (s.compared > 0) mark("shadow");
}

async function refresh() {
  if (!token()) return;
  try {
    const [routing, rollout, shadow, stats] = await Promise.all([
      api("GET", "/admin/routing"), api("GET", "/admin/rollout"), api("GET", "/admin/shadow"), api("GET", "/admin/stats?step=10"),
    ]);
    drawDial(routing, rollout); drawRollout(rollout); drawShadow(shadow); drawStats(stats);
    text("updated", `updated ${new Date().toLocaleTimeString()}`);
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) { text("updated", `not updated: ${e.message}`); }
}

// === controls ===

async function act(noticeId, work) {
  text(noticeId, "");
  try { const answer = await work(); if (answer && answer.notice) text(noticeId, answer.notice); await refresh(); }
  catch (e) { text(noticeId, e.message); }
}

function numberOr(id, fallback) { const v = $(id).value.trim(); return v === "" ? fallback : Number(v); }

function wire() {
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    try { await api("GET", "/admin/routing"); text("login-error", ""); show(); refresh(); }
    catch (e) { text("login-error", e.message); }
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); show(); });
  $("set-p").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("dial-notice", () => api("PUT", "/admin/routing", { P: Number($("p-input").value) }));
  });
  $("set-shadow").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const ignore = $("ignore").value.split(",").map((s) => s.trim()).filter(Boolean);
    act("rollout-notice", () => api("PUT", "/admin/shadow", { fraction: Number($("fraction").value), ignore }));
  });
  $("start").addEventListener("input", () => { planEdited = true; });
  $("start").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const plan = {
      steps: $("steps").value.split(",").map((s) => Number(s.trim())),
      intervalSeconds: numberOr("interval", 30), maxErrorRate: numberOr("max-error", 0.01),
      maxP99Ms: numberOr("max-p99", 250), minRequests: numberOr("min-requests", 20),
      failureThreshold: numberOr("threshold", 2), maxShadowMismatchRate: numberOr("max-shadow", null),
    };
    act("rollout-notice", () => api("PUT", "/admin/rollout", plan)).then(() => { planEdited = false; });
  });
  for (const button of document.querySelectorAll("[data-control]")) {
    button.addEventListener("click", () => act("rollout-notice", () => api("POST", `/admin/rollout/${button.dataset.control}`)));
  }
}

function show() {
  const in_ = Boolean(token());
  $("login").hidden = in_; $("console").hidden = !in_; $("logout").hidden = !in_;
}

wire(); show(); refresh(); setInterval(refresh, REFRESH_MS);
