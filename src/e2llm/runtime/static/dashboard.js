// The e2llm dashboard: polls GET /v1/status and draws the plan, the cluster, live per-replica
// figures and the event log; the chat box streams from POST /v1/chat/completions.
// Plain browser JavaScript, no library, no build step. Every text from the server is set with
// textContent (never parsed as HTML). The API key, when the server wants one, is asked for once
// and kept in this tab's sessionStorage; it travels only in the Authorization header.
"use strict";

const POLL_MS = 1000;
const KEY_ITEM = "e2llm-api-key";
const SVG_NS = "http://www.w3.org/2000/svg";
const ROLE_COLOURS = { PREFILL: "#4e79a7", DECODER: "#f28e2b", COLOCATED: "#59a14f", MIXED: "#b07aa1" };
const STATE_COLOURS = { lost: "#d62728", unused: "#bab0ac" };

let latest = null; // the last status answer
let waitingForKey = false; // polling stopped on a 401 until a key is entered
const chatHistory = [];

// ---- small helpers -------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function num(x, digits = 1) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 100) return x.toFixed(0);
  return x.toFixed(digits);
}

function bandwidth(mbps) {
  if (mbps === null || mbps === undefined) return "?";
  return mbps >= 1000 ? `${num(mbps / 1000)} Gbit/s` : `${num(mbps)} Mbit/s`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(0)} KiB`;
  return `${n} B`;
}

function duration(s) {
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function showError(text) {
  const panel = document.getElementById("error-panel");
  panel.hidden = !text;
  panel.textContent = text || "";
}

// ---- polling -------------------------------------------------------------------------------
async function poll() {
  try {
    const response = await fetch("/v1/status", { headers: authHeaders(), cache: "no-store" });
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      document.getElementById("key-panel").hidden = false;
      document.getElementById("key-input").focus();
      showError("");
      waitingForKey = true;
      return; // resumes when a key is entered
    }
    if (!response.ok) throw new Error(await errorText(response));
    latest = await response.json();
    document.getElementById("key-panel").hidden = true;
    showError("");
    render(latest);
  } catch (e) {
    showError(`cannot read the server's status: ${e.message}`);
  }
  setTimeout(poll, POLL_MS);
}

function render(status) {
  renderHeader(status);
  renderCluster(status);
  renderTotals(status);
  renderReplicas(status);
  renderEvents(status.events);
}

function renderHeader(status) {
  document.getElementById("model").textContent = status.model;
  const health = document.getElementById("health");
  health.textContent = status.status + (status.replanning ? " · re-planning" : "");
  health.className = `badge ${status.status}`;
  const p = status.plan;
  const objective = p.objective === null ? "" : `, objective ${p.objective_kind} ${num(p.objective, 3)}`;
  const replan = status.can_replan ? "" : " · no re-planning (hand-written plan)";
  document.getElementById("plan-summary").textContent =
    `plan ${p.system} · generation ${p.generation} · ${status.replicas.length} replicas · ` +
    `scheduler ${p.scheduler}${objective}${replan} · up ${duration(status.uptime_s)}`;
  document.getElementById("updated").textContent =
    `updated ${new Date(status.time_s * 1000).toLocaleTimeString()}`;
  document.getElementById("window").textContent =
    `(observed figures over the last ${status.window_s} s; predicted = the planner's estimate)`;
  if (status.can_replan && status.replan_error) showError(`last re-plan: ${status.replan_error}`);
}

// ---- cluster: devices on a circle, pipeline hops as links with their bandwidth ---------------
function linkOf(network, a, b) {
  const override = network.links.find((l) => (l.a === a && l.b === b) || (l.a === b && l.b === a));
  return override || { bandwidth_mbps: network.bandwidth_mbps, latency_ms: network.latency_ms };
}

function deviceRoles(status) {
  const roles = {};
  for (const r of status.replicas) {
    if (r.state === "lost") continue;
    for (const s of r.stages) roles[s.device] = r.role;
  }
  return roles;
}

function renderCluster(status) {
  const box = document.getElementById("cluster-svg");
  const devices = status.cluster.devices;
  const network = status.cluster.network;
  const roles = deviceRoles(status);
  const width = 640, height = 260, cx = width / 2, cy = height / 2;
  const radius = Math.min(cx, cy) - 34;
  box.setAttribute("viewBox", `0 0 ${width} ${height}`);
  box.replaceChildren();
  const at = {};
  devices.forEach((d, i) => {
    const angle = (2 * Math.PI * i) / Math.max(1, devices.length) - Math.PI / 2;
    at[d.name] = [cx + radius * 1.6 * Math.cos(angle), cy + radius * Math.sin(angle)];
  });
  const line = (a, b, attrs, always) => {
    if (!at[a] || !at[b] || a === b) return;
    const [x1, y1] = at[a], [x2, y2] = at[b];
    box.append(svg("line", { x1, y1, x2, y2, "stroke-linecap": "round", ...attrs }));
    const link = linkOf(network, a, b);
    const special = network.links.some((l) => (l.a === a && l.b === b) || (l.a === b && l.b === a));
    if (always || special) {
      box.append(svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "text-anchor": "middle",
        class: "link-label" }, `${bandwidth(link.bandwidth_mbps)}, ${num(link.latency_ms)} ms`));
    }
  };
  const live = status.replicas.filter((r) => r.state !== "lost");
  // KV hand-off: each PREFILL stage sends its layers to the decoder stages that own them
  for (const p of live.filter((r) => r.role === "PREFILL")) {
    for (const d of live.filter((r) => r.role !== "PREFILL")) {
      for (const ps of p.stages) {
        for (const ds of d.stages) {
          if (Math.max(ps.start, ds.start) < Math.min(ps.end, ds.end)) {
            line(ps.device, ds.device, { stroke: "#999", "stroke-width": 1.2, "stroke-dasharray": "4 4" }, false);
          }
        }
      }
    }
  }
  // pipeline hops (activations): consecutive stages of each replica, labelled with their link
  for (const r of live) {
    for (let i = 1; i < r.stages.length; i++) {
      line(r.stages[i - 1].device, r.stages[i].device,
        { stroke: ROLE_COLOURS[r.role] || ROLE_COLOURS.MIXED, "stroke-width": 3 }, true);
    }
  }
  const boxWidth = Math.min(92, (2 * Math.PI * radius * 1.3) / Math.max(1, devices.length) - 6);
  for (const d of devices) {
    const [x, y] = at[d.name];
    const colour = d.state === "serving" ? ROLE_COLOURS[roles[d.name]] || ROLE_COLOURS.MIXED
      : STATE_COLOURS[d.state];
    const g = svg("g", { class: `device device-${d.state}`, "data-device": d.name });
    g.append(svg("title", {}, `${d.name}: ${d.state}`));
    if (boxWidth >= 60) {
      g.append(svg("rect", { x: x - boxWidth / 2, y: y - 18, width: boxWidth, height: 36, rx: 7, fill: "#fff",
        stroke: colour, "stroke-width": 3 }));
      g.append(svg("text", { x, y: y - 3, "text-anchor": "middle", "font-weight": 600 }, d.name));
      const spec = d.memory_gb === null ? d.state : `${num(d.memory_gb)} GiB · ${num(d.tflops, 2)} TF`;
      g.append(svg("text", { x, y: y + 11, "text-anchor": "middle", class: "link-label" }, spec));
    } else { // many devices: a dot each, the table below has the specs
      g.append(svg("circle", { cx: x, cy: y, r: 6, fill: colour }));
      g.append(svg("text", { x, y: y - 9, "text-anchor": "middle", class: "link-label" }, d.name));
    }
    box.append(g);
  }
  const overrides = network.links.length ? `; ${network.links.length} per-pair link(s) listed below` : "";
  document.getElementById("network").textContent = network.bandwidth_mbps === null
    ? "the plan embeds no cluster: device specs and links unknown"
    : `network: ${bandwidth(network.bandwidth_mbps)}, ${num(network.latency_ms)} ms between every pair` +
      `${overrides}. Solid lines: pipeline hops of a replica; dashed: KV hand-off PREFILL → DECODER.`;
  const table = document.getElementById("devices");
  table.replaceChildren(el("tr", {}, el("th", { text: "device" }), el("th", { text: "state" }),
    el("th", { class: "num", text: "memory GiB" }), el("th", { class: "num", text: "TFLOP/s" }),
    el("th", { class: "num", text: "mem GB/s" })));
  for (const d of devices) {
    table.append(el("tr", { "data-device": d.name }, el("td", { text: d.name }),
      el("td", { text: d.state === "serving" ? `${roles[d.name] || ""}` : d.state }),
      el("td", { class: "num", text: num(d.memory_gb) }), el("td", { class: "num", text: num(d.tflops, 2) }),
      el("td", { class: "num", text: num(d.mem_bandwidth_gbs) })));
  }
  for (const l of network.links) {
    table.append(el("tr", { class: "link" }, el("td", { text: `${l.a} ↔ ${l.b}` }), el("td", { text: "link" }),
      el("td", { class: "num", text: bandwidth(l.bandwidth_mbps) }),
      el("td", { class: "num", text: `${num(l.latency_ms)} ms` }), el("td")));
  }
}

// ---- totals ----------------------------------------------------------------------------------
function figure(label, value, name) {
  return el("div", { class: "figure", "data-figure": name },
    el("div", { class: "value", text: value }), el("div", { class: "label", text: label }));
}

function renderTotals(status) {
  const t = status.totals;
  const finished = Object.values(t.requests).reduce((a, b) => a + b, 0);
  const failed = (t.requests.error || 0) + (t.requests.unknown || 0);
  document.getElementById("totals").replaceChildren(
    figure("requests finished", String(finished), "requests"),
    figure("failed", String(failed), "failed"),
    figure("tokens/s now", num(t.tokens_per_s), "tokens-per-s"),
    figure("in decode batches", String(t.batch), "batch"),
    figure("waiting for prefill", String(t.prefill_queue), "prefill-queue"),
    figure("waiting for a decoder", String(t.decode_queue), "decode-queue"),
    figure("migrations", String(t.migrations), "migrations"),
    figure("plan generation", String(status.plan.generation), "generation"),
  );
}

// ---- replicas --------------------------------------------------------------------------------
function meter(label, used, limit, name) {
  const share = limit ? Math.min(1, used / limit) : 0;
  const text = limit ? `${used} / ${limit}` : `${used} (no memory limit)`;
  const bar = el("div");
  bar.style.width = `${(100 * share).toFixed(1)}%`;
  return el("div", { "data-figure": name }, el("span", { class: "muted", text: `${label} ` }),
    el("span", { class: "value", text }), el("div", { class: "meter" }, bar));
}

function rateRow(label, rate, unit) {
  if (rate.predicted === null && rate.observed === null) return null;
  return el("tr", {}, el("td", { text: label }), el("td", { class: "num", text: num(rate.predicted) }),
    el("td", { class: "num", text: num(rate.observed) }), el("td", { class: "muted", text: unit }));
}

function replicaCard(r, nLayers) {
  const card = el("article", { class: `replica role-${r.role} state-${r.state}`, "data-replica": r.label });
  const state = r.state === "lost" ? `lost: ${r.reason || ""}` : r.state;
  card.append(el("header", {}, el("span", { class: "badge role", text: r.role }),
    el("strong", { text: `replica ${r.label}` }), el("span", { class: "state", text: state })));
  for (const s of r.stages) {
    const bar = el("div", { class: "bar" + (s.device === r.bottleneck_device ? " bottleneck" : ""),
      text: `[${s.start},${s.end})${s.embedding ? " E" : ""}${s.lm_head ? " H" : ""}` });
    bar.style.left = `${(100 * s.start) / nLayers}%`;
    bar.style.width = `${(100 * (s.end - s.start)) / nLayers}%`;
    bar.title = `${s.device}: layers [${s.start}, ${s.end})` +
      (s.device === r.bottleneck_device ? " — bottleneck stage" : "") +
      (s.memory_gb ? `, planned ${num(s.memory_gb, 2)} GiB` : "");
    const kv = s.kv_bytes === null ? "" : `KV ${bytes(s.kv_bytes)} · ${s.sequences} seq`;
    card.append(el("div", { class: "stage" }, el("span", { class: "device", text: s.device }),
      el("div", { class: "track" }, bar), el("span", { class: "kv", text: kv })));
  }
  const decodes = r.role !== "PREFILL";
  const prefills = r.role !== "DECODER";
  const meters = el("div", { class: "meters" });
  if (prefills) {
    meters.append(el("div", { "data-figure": "prefill-queue" }, el("span", { class: "muted", text: "prefill queue " }),
      el("span", { class: "value", text: `${r.prefill_queue} (${r.prefill_tokens_outstanding} tokens)` })));
  }
  if (decodes) {
    meters.append(el("div", { "data-figure": "decode-queue" }, el("span", { class: "muted", text: "decode queue " }),
      el("span", { class: "value", text: String(r.decode_queue) })));
    meters.append(meter("batch", r.batch, r.concurrency, "batch"));
    meters.append(meter("KV tokens", r.kv_tokens_in_use, r.kv_budget_tokens, "kv"));
  }
  if (prefills) {
    meters.append(el("div", { "data-figure": "prompt-tokens" }, el("span", { class: "muted", text: "prompt tokens " }),
      el("span", { class: "value", text: String(r.prompt_tokens) })));
  }
  if (decodes) {
    meters.append(el("div", { "data-figure": "generated" }, el("span", { class: "muted", text: "tokens decoded " }),
      el("span", { class: "value", text: String(r.generated_tokens) })));
  }
  card.append(meters);
  const rates = el("table", { class: "table rates" }, el("tr", {}, el("th", { text: "tokens/s" }),
    el("th", { class: "num", text: "predicted" }), el("th", { class: "num", text: "observed" }), el("th")));
  const rows = [
    rateRow("prefill speed", r.prefill_speed, "per prompt"),
    rateRow("prefill throughput", r.prefill_throughput, "replica"),
    rateRow("decode speed", r.decode_speed, "per request"),
    rateRow("decode throughput", r.decode_throughput, "replica"),
  ];
  for (const row of rows) if (row) rates.append(row);
  card.append(rates);
  return card;
}

function renderReplicas(status) {
  const nLayers = Math.max(1, ...status.replicas.flatMap((r) => r.stages.map((s) => s.end)));
  document.getElementById("replicas").replaceChildren(...status.replicas.map((r) => replicaCard(r, nLayers)));
}

// ---- events ----------------------------------------------------------------------------------
function renderEvents(events) {
  const list = document.getElementById("events");
  const items = events.slice().reverse().map((e) => el("li", { class: `event kind-${e.kind}` },
    el("time", { text: new Date(e.time_s * 1000).toLocaleTimeString() }),
    el("span", { class: `kind kind-${e.kind}`, text: e.kind.replace("_", " ") }),
    el("span", { text: e.text })));
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "nothing yet" })]));
}

// ---- chat ------------------------------------------------------------------------------------
function chatMessage(role, text) {
  const node = el("div", { class: `msg ${role}`, text });
  const log = document.getElementById("chat-log");
  log.append(node);
  log.scrollTop = log.scrollHeight;
  return node;
}

async function streamChat(reply) {
  const body = { model: latest?.model || "", messages: chatHistory, stream: true, temperature: 0, max_tokens: 256 };
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return text;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return text;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          text += delta;
          reply.textContent = text;
        }
      }
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const button = document.getElementById("chat-send");
  const question = input.value.trim();
  if (!question) return;
  input.value = "";
  button.disabled = true;
  chatMessage("user", question);
  chatHistory.push({ role: "user", content: question });
  const reply = chatMessage("assistant", "…");
  try {
    const text = await streamChat(reply);
    chatHistory.push({ role: "assistant", content: text });
  } catch (e) {
    chatHistory.pop();
    reply.textContent = `failed: ${e.message}`;
    reply.classList.add("failed");
  } finally {
    button.disabled = false;
  }
}

// ---- start -----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, document.getElementById("key-input").value);
    document.getElementById("key-input").value = "";
    document.getElementById("key-panel").hidden = true;
    if (waitingForKey) {
      waitingForKey = false;
      poll();
    }
  });
  document.getElementById("chat-form").addEventListener("submit", sendChat);
  document.getElementById("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      document.getElementById("chat-form").requestSubmit();
    }
  });
  poll();
});
