// softprompt playground: the same request answered by the bare model and by each chosen adapter,
// side by side and streaming. A client of the /v1 API like any other: it sends the key typed into
// the page as "Authorization: Bearer" and shows the server's errors ({"error": {"message"}}) as text.
// Model output is only ever inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "softprompt-playground-key"; // sessionStorage: gone when the tab closes
const state = { base: null, adapters: [], running: [] };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function apiError(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, message);
}

function describe(error) {
  if (error instanceof ApiError) {
    const hint = error.status === 401 ? " Check the API key field." : "";
    return `HTTP ${error.status}: ${error.message.replace(/\.$/, "")}.${hint}`;
  }
  if (error.name === "AbortError") return "stopped";
  return `cannot reach the server: ${error.message}`;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// Server-sent events from a fetch body: "data: {...}" lines, events separated by a blank line.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Models and adapter panels

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

// Each finished load counts up body[data-loads], so a test (or a person) can tell when it is done.
async function loadModels() {
  try {
    await refresh();
  } finally {
    document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
  }
}

async function refresh() {
  showBanner("");
  let list;
  try {
    list = await getJSON("v1/models");
  } catch (error) {
    $("server").textContent = "not connected";
    state.base = null;
    state.adapters = [];
    renderChoices();
    await renderPanels();
    showBanner(`Could not list the models: ${describe(error)}`);
    return;
  }
  const base = list.data.find((m) => !m.parent) || list.data[0];
  state.base = base ? base.id : null;
  state.adapters = list.data.filter((m) => m.parent).map((m) => m.id);
  $("server").textContent = `base model ${state.base} · ${state.adapters.length} adapter(s)`;
  renderChoices();
  await renderPanels();
}

function renderChoices() {
  const box = $("models");
  box.querySelectorAll("label").forEach((el) => el.remove());
  $("models-empty").hidden = Boolean(state.base);
  const choices = [[state.base, "base model, no prompt"], ...state.adapters.map((a) => [a, "adapter"])];
  for (const [id, kind] of choices) {
    if (!id) continue;
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = id;
    input.checked = true;
    input.name = "model";
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = kind;
    label.append(input, ` ${id} `, tag);
    box.append(label);
  }
}

async function renderPanels() {
  const panels = $("panels");
  panels.replaceChildren();
  if (!state.adapters.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "no adapters loaded";
    panels.append(p);
    return;
  }
  const details = await Promise.all(
    state.adapters.map((name) => getJSON(`v1/adapters/${encodeURIComponent(name)}`).catch((e) => ({ id: name, failed: e }))),
  );
  for (const info of details) panels.append(panel(info));
}

function panel(info) {
  const box = document.createElement("article");
  box.className = "panel";
  box.dataset.adapter = info.id;
  const title = document.createElement("h3");
  title.textContent = info.id;
  box.append(title);
  if (info.failed) {
    const err = document.createElement("p");
    err.className = "error";
    err.textContent = describe(info.failed);
    box.append(err);
    return box;
  }
  const config = info.config || {};
  const metrics = info.metrics || config.softprompt_metrics || {};
  const card = info.card || {};
  const rows = [
    ["base model", config.base_model_name_or_path || card.base_model || "unknown"],
    ["form", formText(config)],
    ["init", initText(config)],
    ["virtual tokens", `${info.num_virtual_tokens}${config.token_dim ? ` × ${config.token_dim}` : ""}`],
    ["training data", dataText(card, metrics)],
    ["held-out loss", lossText(metrics)],
    ["training", trainingText(metrics)],
  ];
  const list = document.createElement("dl");
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  box.append(list, lossCurve(info.records || []));
  return box;
}

const fmt = (x, digits = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "n/a");

function formText(config) {
  const entry = config.softprompt_entry_layer || 0;
  const kv = config.softprompt_form === "kv" || config.peft_type === "PREFIX_TUNING";
  const what = kv ? "keys/values per layer" : "vectors";
  return entry ? `${what}, entering at layer ${entry} (late)` : kv ? `${what} (deep)` : `${what} at the input`;
}

function initText(config) {
  const init = (config.prompt_tuning_init || "unknown").toLowerCase();
  return config.prompt_tuning_init_text ? `${init}: "${config.prompt_tuning_init_text}"` : init;
}

function dataText(card, metrics) {
  let source = "not recorded";
  try {
    source = card["model-index"][0].results[0].dataset.name;
  } catch (_) {
    // no card, or a card without results: the rows below still say how much data there was
  }
  const rows = metrics.train_rows !== undefined ? `, ${metrics.train_rows} training / ${metrics.eval_rows} held-out rows` : "";
  return source + rows;
}

function lossText(metrics) {
  if (metrics.heldout_loss_before === undefined && metrics.heldout_loss_after === undefined) return "not recorded";
  return `${fmt(metrics.heldout_loss_before)} → ${fmt(metrics.heldout_loss_after)} nats/token (before → after)`;
}

function trainingText(metrics) {
  if (metrics.optimizer_steps === undefined) return "not recorded";
  return `${metrics.epochs_run} epoch(s), ${metrics.optimizer_steps} steps, ${fmt(metrics.train_seconds, 1)} s`;
}

// The loss curve as inline SVG: train loss per step (line), held-out loss per evaluation (dashed, dots).
function lossCurve(records) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 360, H = 170, L = 40, R = 10, T = 14, B = 26;
  const el = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "curve", role: "img", "aria-label": "loss curve" });
  const train = records.filter((r) => typeof r.loss === "number");
  const evals = records.filter((r) => typeof r.eval_loss === "number");
  if (!train.length && !evals.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no training records"));
    return svg;
  }
  const steps = [...train, ...evals].map((r) => r.step);
  const losses = [...train.map((r) => r.loss), ...evals.map((r) => r.eval_loss)];
  const [x0, x1] = [Math.min(...steps), Math.max(...steps, Math.min(...steps) + 1)];
  const [lo, hi] = [Math.min(...losses), Math.max(...losses)];
  const pad = (hi - lo) * 0.05 || 0.5;
  const [y0, y1] = [lo - pad, hi + pad];
  const x = (s) => L + ((s - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  svg.append(
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    el("text", { x: L - 4, y: y(hi) + 3, "text-anchor": "end" }, hi.toFixed(2)),
    el("text", { x: L - 4, y: y(lo) + 3, "text-anchor": "end" }, lo.toFixed(2)),
    el("text", { x: L, y: H - 8 }, `step ${x0}`),
    el("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${x1}`),
    el("text", { x: L + 4, y: T - 3 }, "train loss (line), held-out loss (dots)"),
  );
  const line = (points, cls) => el("polyline", { points: points.map(([s, v]) => `${x(s)},${y(v)}`).join(" "), class: cls });
  if (train.length) svg.append(line(train.map((r) => [r.step, r.loss]), "train"));
  if (evals.length) {
    svg.append(line(evals.map((r) => [r.step, r.eval_loss]), "eval"));
    for (const r of evals) svg.append(el("circle", { cx: x(r.step), cy: y(r.eval_loss), r: 3, class: "eval-point" }));
  }
  return svg;
}

// ---------------------------------------------------------------------------------------------
// Requests, one streaming column per chosen model

function chosen() {
  return [...document.querySelectorAll('#models input[name="model"]:checked')].map((el) => el.value);
}

function requestBody(model) {
  const chat = $("endpoint").value === "chat";
  const text = $("prompt").value;
  const body = { model, stream: true, max_tokens: Number($("max-tokens").value) || 64 };
  body.temperature = Number($("temperature").value);
  body.top_p = Number($("top-p").value) || 1;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("stop").value) body.stop = [$("stop").value];
  if (chat) body.messages = [{ role: "user", content: text }];
  else body.prompt = text;
  return [chat ? "v1/chat/completions" : "v1/completions", body, chat];
}

function column(model) {
  const box = document.createElement("article");
  box.className = "column";
  box.dataset.model = model;
  box.dataset.chunks = "0";
  const title = document.createElement("h3");
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = model === state.base ? "base model" : "adapter";
  title.append(`${model} `, tag);
  const status = document.createElement("p");
  status.className = "status";
  const output = document.createElement("pre");
  output.className = "output";
  box.append(title, status, output);
  return box;
}

async function runColumn(model, box, signal) {
  const [path, body, chat] = requestBody(model);
  const status = box.querySelector(".status");
  const output = box.querySelector(".output");
  const started = performance.now();
  box.dataset.state = "streaming";
  status.textContent = "waiting…";
  try {
    const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
    if (!response.ok) throw await apiError(response);
    let chunks = 0, reason = null;
    for await (const chunk of events(response)) {
      if (chunk.error) throw new ApiError(500, chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const delta = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
      if (delta) {
        output.textContent += delta;
        box.dataset.chunks = String(++chunks);
        status.textContent = `streaming… ${chunks} chunk(s)`;
      }
      reason = choice.finish_reason || reason;
    }
    box.dataset.state = "done";
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    status.textContent = `done: ${chunks} chunk(s) in ${seconds} s, finish reason ${reason || "n/a"}`;
  } catch (error) {
    box.dataset.state = "error";
    status.textContent = "";
    const message = document.createElement("p");
    message.className = "error";
    message.setAttribute("role", "alert");
    message.textContent = describe(error);
    box.append(message);
  }
}

async function runAll() {
  const models = chosen();
  if (!models.length) {
    showBanner("Choose at least one model to answer.");
    return;
  }
  showBanner("");
  stopAll();
  const answers = $("answers");
  answers.replaceChildren();
  $("run").disabled = true;
  $("stop-all").disabled = false;
  state.running = models.map(() => new AbortController());
  const jobs = models.map((model, i) => {
    const box = column(model);
    answers.append(box);
    return runColumn(model, box, state.running[i].signal);
  });
  await Promise.all(jobs);
  state.running = [];
  $("run").disabled = false;
  $("stop-all").disabled = true;
}

function stopAll() {
  for (const controller of state.running) controller.abort();
}

// ---------------------------------------------------------------------------------------------

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // the key goes in request headers, never in a form submission
    loadModels();
  });
  $("run").addEventListener("click", runAll);
  $("stop-all").addEventListener("click", stopAll);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) runAll();
  });
  loadModels();
}

init();
