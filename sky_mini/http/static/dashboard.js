// sky-mini dashboard: polls the read-only JSON API and redraws. Every value from the API is
// put in the page with textContent (never as HTML): job names, reasons and logs are user text.
"use strict";

const REFRESH_MS = 3000;
let selectedJob = null;

function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "cls") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children || []) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

function pill(state) {
  const text = String(state || "unknown");
  return el("span", { cls: "pill s-" + text.replace(/[^A-Za-z_]/g, ""), text: text });
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (value >= 10 || unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  const s = Number(value);
  if (s < 1) return s.toFixed(2) + "s";
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function replaceRows(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function renderStatus(status) {
  const health = document.getElementById("health");
  health.replaceWith(Object.assign(pill(status.health), { id: "health" }));
  const queue = status.queue || {};
  const cap = status.capacity || {};
  document.getElementById("summary").textContent =
    `${queue.running || 0} running · ${queue.pending || 0} pending · ` +
    `${cap.used_cpus || 0}/${cap.cpus || 0} CPU · ` +
    `${size(cap.used_memory_bytes)}/${size(cap.memory_bytes)} reserved · ${status.home || ""}`;
  replaceRows("components", (status.components || []).map((c) => el("tr", {}, [
    el("td", {}, [c.name, c.url ? el("span", { cls: "muted", text: " " + c.url }) : null,
      c.job_id ? el("span", { cls: "muted", text: " job " + c.job_id }) : null]),
    el("td", {}, [pill(c.state)]),
    el("td", { cls: "num", text: c.pid ? String(c.pid) : "–" }),
    el("td", { cls: "num", text: seconds(c.uptime_seconds) }),
    el("td", { cls: "num", text: size(c.rss_bytes) }),
    el("td", { cls: "num", text: String(c.restarts || 0) }),
  ])));
  return (status.degraded_components || []).map((name) => `component ${name} is not running`);
}

function memoryCell(job) {
  const limit = (job.resources || {}).memory_bytes;
  const peak = job.peak_memory_bytes;
  if (!limit) return el("td", { cls: "num", text: peak ? size(peak) + " (no limit)" : "–" });
  const share = peak ? Math.min(1, peak / limit) : 0;
  const fill = el("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`; // CSSOM: allowed by the page's CSP
  const bar = el("span", { cls: "bar" + (share >= 0.95 ? " hot" : share >= 0.75 ? " warm" : "") },
    [fill]);
  return el("td", { cls: "num" }, [bar, `${size(peak)} / ${size(limit)}`]);
}

function renderJobs(jobs) {
  const order = { RUNNING: 0, STARTING: 0, PENDING: 1 };
  const sorted = jobs.slice().sort((a, b) =>
    (order[a.status] ?? 2) - (order[b.status] ?? 2) || b.id - a.id);
  replaceRows("jobs", sorted.map((job) => {
    const row = el("tr", { "data-job": String(job.id), "data-status": job.status }, [
      el("td", { cls: "num", text: String(job.id) }),
      el("td", { text: job.name || "" }),
      el("td", {}, [pill(job.status)]),
      el("td", { cls: "reason" }, [
        job.reason_code ? el("span", { cls: "code", text: job.reason_code }) : null,
        job.reason || ""]),
      el("td", { cls: "num", text: seconds(job.duration_seconds ??
        (job.started_at ? Date.now() / 1000 - job.started_at : null)) }),
      memoryCell(job),
    ]);
    if (job.id === selectedJob) row.classList.add("selected");
    row.addEventListener("click", () => { selectedJob = job.id; refresh(); });
    return row;
  }));
  const failing = jobs.filter((j) => ["FAILED", "FAILED_SETUP", "KILLED"].includes(j.status));
  return failing.map((j) => `job ${j.id} (${j.name}) ${j.status}` +
    (j.reason_code ? ` [${j.reason_code}]` : "") + (j.reason ? `: ${j.reason}` : ""));
}

function renderServices(data) {
  const box = document.getElementById("services");
  const services = data.services || [];
  const ctl = data.controller || {};
  const ctlLine = el("p", { cls: "muted" }, ["services-controller: ",
    ctl.running ? `running (pid ${ctl.pid})` : "stopped"]);
  if (!services.length) {
    box.replaceChildren(el("p", { cls: "muted", text: "no services" }), ctlLine);
    return [];
  }
  box.replaceChildren(...services.map((s) => el("div", { cls: "service", "data-service": s.name }, [
    el("h3", {}, [s.name, pill(s.status),
      el("span", { cls: "muted", text: `${s.ready_replicas}/${s.total_replicas} ready` +
        (s.endpoint ? ` · ${s.endpoint}` : "") }),
    ]),
    s.reason ? el("p", { cls: "reason", text: s.reason }) : null,
    el("table", {}, [
      el("thead", {}, [el("tr", {}, ["replica", "state", "pid", "port", "restarts", "last exit"]
        .map((h) => el("th", { text: h })))]),
      el("tbody", {}, (s.replicas || []).map((r) => el("tr", {}, [
        el("td", { cls: "num", text: String(r.index) }),
        el("td", {}, [pill(r.state)]),
        el("td", { cls: "num", text: r.pid ? String(r.pid) : "–" }),
        el("td", { cls: "num", text: r.port ? String(r.port) : "–" }),
        el("td", { cls: "num", text: String(r.restarts || 0) }),
        el("td", { cls: "reason", text: r.failed_reason || r.last_exit_reason || "" }),
      ]))),
    ]),
  ])), ctlLine);
  return services.filter((s) => ["FAILED", "NO_REPLICA"].includes(s.status))
    .map((s) => `service ${s.name} ${s.status}` + (s.reason ? `: ${s.reason}` : ""));
}

function renderChart(activity) {
  const ns = "http://www.w3.org/2000/svg";
  const ok = activity.succeeded || [];
  const bad = activity.failed || [];
  const count = ok.length;
  const width = 420, height = 130, base = 110, left = 24;
  const slot = (width - left) / Math.max(1, count);
  const top = Math.max(1, ...ok.map((v, i) => v + bad[i]));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", "100%");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: left, y1: base, x2: width, y2: base, stroke: "#c9ced8" });
  add("text", { x: 0, y: 12 }, String(top));
  add("text", { x: 0, y: base }, "0");
  for (let i = 0; i < count; i += 1) {
    const x = left + i * slot + 3;
    const hOk = (ok[i] / top) * (base - 10);
    const hBad = (bad[i] / top) * (base - 10);
    add("rect", { x: x, y: base - hOk, width: slot - 6, height: hOk, class: "ok" });
    add("rect", { x: x, y: base - hOk - hBad, width: slot - 6, height: hBad, class: "bad" });
    if (i % 3 === 0) add("text", { x: x, y: base + 14 }, `-${(count - i) * 5}m`);
  }
  add("text", { x: width - 24, y: base + 14 }, "now");
  document.getElementById("chart").replaceChildren(svg);
}

async function renderLog() {
  const panel = document.getElementById("log-panel");
  if (selectedJob === null) { panel.hidden = true; return; }
  const data = await getJSON(`/api/jobs/${selectedJob}/log?tail=200`);
  document.getElementById("log-id").textContent = String(selectedJob);
  const pre = document.getElementById("log");
  pre.textContent = data.lines.length ? data.lines.join("\n") : "(no output yet)";
  panel.hidden = false;
}

function renderProblems(problems) {
  const box = document.getElementById("problems");
  box.hidden = problems.length === 0;
  document.getElementById("problem-list").replaceChildren(
    ...problems.map((text) => el("li", { text: text })));
}

async function refresh() {
  try {
    const [status, jobs, services, activity] = await Promise.all([
      getJSON("/api/status"), getJSON("/api/jobs?limit=50"),
      getJSON("/api/services"), getJSON("/api/activity")]);
    if (selectedJob === null) {
      const failed = jobs.filter((j) => j.status !== "SUCCEEDED" && j.finished_at);
      if (failed.length) selectedJob = failed[failed.length - 1].id;
    }
    const problems = [...renderStatus(status), ...renderJobs(jobs), ...renderServices(services)];
    renderChart(activity);
    renderProblems(problems);
    await renderLog();
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach sky-mini: " + err.message;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
