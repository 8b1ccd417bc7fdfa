"use strict";
// The on-call page: reads the same-origin API with the token from the sign-in form (kept in this tab's
// sessionStorage, sent as a header, never in a URL), follows the event stream, and drives every action.

const state = {
  token: sessionStorage.getItem("mlcd-token") || "",
  model: localStorage.getItem("mlcd-model") || "",
  models: [],
  status: null,
  rollouts: [],
  journal: [],       // newest first, as the events view shows it
  seen: new Map(),   // event id → event, from the journal and the stream
  actions: [],       // what this page asked for, and the events they led to
  stream: null,
  refreshing: null,
};

const TYPES = [
  "mlcd.data.arrived.v1", "mlcd.data.validated.v1", "mlcd.data.rejected.v1",
  "mlcd.training.pipeline_published.v1", "mlcd.training.retrain_requested.v1", "mlcd.training.started.v1",
  "mlcd.training.succeeded.v1", "mlcd.training.failed.v1", "mlcd.promotion.gate_opened.v1",
  "mlcd.promotion.approved.v1", "mlcd.promotion.rejected.v1", "mlcd.serving.rollout_started.v1",
  "mlcd.serving.rollout_step_completed.v1", "mlcd.serving.rollout_paused.v1", "mlcd.serving.rollout_resumed.v1",
  "mlcd.serving.rollout_succeeded.v1",
  "mlcd.serving.rollback_requested.v1", "mlcd.serving.rolled_back.v1", "mlcd.monitoring.alert_fired.v1",
  "mlcd.monitoring.notice_raised.v1",
];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, {
    headers: Object.assign({ "Authorization": "Bearer " + state.token, "Content-Type": "application/json",
                             "X-Mlcd-Via": "ui" }, (options || {}).headers || {}),
  }));
  let body = null;
  const text = await response.text();
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = text; }
  if (response.status === 401) { signOut("Your token was refused; sign in again."); throw new Error("unauthorised"); }
  if (!response.ok) throw new Error((body && (body.error || body.detail)) || ("HTTP " + response.status));
  return body;
}

function table(headers, rows, cls) {
  return el("table", { class: cls || null },
    el("thead", {}, el("tr", {}, ...headers.map(h => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map(r => el("tr", {}, ...r.map((c, i) => el("td", { "data-label": headers[i] || null }, c))))));
}

function fmt(value) {
  if (value == null || value === "") return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+$/, "");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function shortType(type) { return (type || "").replace(/^mlcd\./, "").replace(/\.v1$/, ""); }

function facts(pairs) {
  return el("dl", { class: "facts" }, ...pairs.filter(p => p).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// One line that says what an event means, from its payload.
function summary(e) {
  const d = e.data || {};
  const v = d.model_version;
  switch (e.type) {
    case "mlcd.data.arrived.v1": return `batch ${d.uri} arrived (${fmt(d.size)} bytes)`;
    case "mlcd.data.validated.v1": return `batch ${d.uri} passed ${d.suite} (${fmt(d.rows)} rows)`;
    case "mlcd.data.rejected.v1": return `batch ${d.uri} rejected: ${d.reason}`;
    case "mlcd.training.pipeline_published.v1": return `pipeline ${d.pipeline} ${d.version} from commit ${(d.commit || "").slice(0, 12)}`;
    case "mlcd.training.retrain_requested.v1": return `retrain on ${d.data_uri || "the last batch"}: ${d.reason}`;
    case "mlcd.training.started.v1": return `run ${d.run_name} on ${d.data_uri}`;
    case "mlcd.training.succeeded.v1": return `run ${d.run_id} registered version ${v}`;
    case "mlcd.training.failed.v1": return `run ${d.run_id} failed: ${d.reason}`;
    case "mlcd.training.candidate_registered.v1": return `version ${v} registered`;
    case "mlcd.promotion.gate_opened.v1": return `gate ${d.gate_id} opened for version ${v} (champion ${fmt(d.champion_version)})`;
    case "mlcd.promotion.decision_requested.v1": return `${d.actor} asked to ${d.decision} gate ${d.gate_id} via ${d.via}`;
    case "mlcd.promotion.approved.v1": return `version ${v} approved by ${(d.approved_by || []).join(", ") || "policy"}`;
    case "mlcd.promotion.rejected.v1": return `version ${v} rejected${d.rejected_by ? " by " + d.rejected_by : ""}: ${d.reason}`;
    case "mlcd.serving.rollout_started.v1": return `rollout of version ${v} over ${fmt(d.previous_version)}, steps ${(d.steps || []).join(" → ")} %`;
    case "mlcd.serving.rollout_step_completed.v1": {
      const figures = Object.entries(d.analysis || {}).map(([k, x]) => `${k} ${fmt(x)}`).join(", ");
      return `version ${v} at ${d.traffic_percent} %` + (figures ? ` (${figures})` : "");
    }
    case "mlcd.serving.rollout_paused.v1": return `version ${v} paused at ${d.traffic_percent} %: ${d.reason}`;
    case "mlcd.serving.rollout_resumed.v1": return `version ${v} resumed at ${d.traffic_percent} % by ${d.resumed_by}`;
    case "mlcd.serving.rollout_succeeded.v1": return `version ${v} serves all traffic (was ${fmt(d.previous_version)})`;
    case "mlcd.serving.rollback_requested.v1": return `rollback${d.to_version ? " to version " + d.to_version : ""} requested by ${d.requested_by}: ${d.reason}`;
    case "mlcd.serving.rolled_back.v1": return `rolled back from version ${fmt(d.from_version)} to ${fmt(d.to_version)}: ${d.reason}`;
    case "mlcd.monitoring.alert_fired.v1": return `alert ${d.alert} (${d.severity})`;
    case "mlcd.monitoring.alert_resolved.v1": return `alert ${d.alert} resolved`;
    case "mlcd.monitoring.notice_raised.v1": return d.message;
    default:
      return Object.entries(d).slice(0, 4).map(([k, x]) => `${k}: ${typeof x === "object" ? JSON.stringify(x) : x}`).join(" · ");
  }
}

function say(text, ok) {
  const m = $("message");
  m.className = ok ? "pass" : "fail";
  m.textContent = text;
}

// --- confirmation ---------------------------------------------------------------------------------

function confirmAction({ title, text, field, required, initial }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-error").textContent = "";
  $("confirm-field").hidden = !field;
  $("confirm-label").textContent = field || "";
  $("confirm-input").value = initial || "";
  return new Promise((resolve) => {
    const done = (value) => { cleanup(); dialog.close(); resolve(value); };
    const submit = (e) => {
      e.preventDefault();
      const value = $("confirm-input").value.trim();
      if (field && required && !value) { $("confirm-error").textContent = `${field} is required.`; $("confirm-input").focus(); return; }
      done({ value });
    };
    const cancel = () => done(null);
    const onCancel = (e) => { e.preventDefault(); cancel(); };
    function cleanup() {
      $("confirm-form").removeEventListener("submit", submit);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", onCancel);
    }
    $("confirm-form").addEventListener("submit", submit);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    (field ? $("confirm-input") : $("confirm-ok")).focus();
  });
}

// --- actions and the events they lead to ----------------------------------------------------------

// `expect`: the event types that show the action's result; `eventId`: the event the API said it emitted.
// `since`: when the request was sent (events of the expected types journaled earlier are not its result).
function track(label, { model, eventId, expect, note, since }) {
  const entry = { id: state.actions.length + 1, label, model, eventId, expect: expect || [], note: note || "",
                  since: since || new Date().toISOString(), found: [] };
  state.actions.unshift(entry);
  matchActions();
  renderActions();
  return entry;
}

// Each event goes to one action: the one that named its id, else the newest action expecting its type.
function matchActions() {
  const taken = new Set(state.actions.flatMap(a => a.found.map(f => f.id)));
  const fresh = [...state.seen.values()].filter(e => !taken.has(e.id))
    .sort((a, b) => (a.time || "").localeCompare(b.time || ""));
  for (const e of fresh) {
    let owner = state.actions.find(a => a.eventId && a.eventId === e.id);
    if (!owner) {
      owner = state.actions.find(a => a.expect.includes(e.type) && (!a.model || e.subject === a.model)
        && Date.parse(e.time || "") >= Date.parse(a.since));  // state.actions is newest first
    }
    if (owner) owner.found.push(e);
  }
}

function renderActions() {
  const item = (entry) => el("li", { "data-action": entry.id, "data-label": entry.label },
    el("strong", {}, entry.label), " ",
    entry.found.length
      ? el("span", { class: "result" }, "→ ", ...entry.found.map((e, i) => [i ? " → " : "",
          el("code", { class: "event-type" }, e.type), " ", summary(e), el("span", { class: "muted" }, ` (${when(e.time)}, id ${e.id})`)]))
      : el("span", { class: "muted result" }, entry.eventId ? `→ event ${entry.eventId} queued; waiting for the journal…`
                                                             : entry.note || "→ waiting for the resulting event…"));
  // The newest two stay in view; earlier ones fold away so the model page keeps the first screen.
  const earlier = state.actions.slice(2, 12);
  $("action-log").replaceChildren(...state.actions.slice(0, 2).map(item),
    ...(earlier.length ? [el("li", { class: "earlier" }, el("details", {},
      el("summary", {}, `${earlier.length} earlier action${earlier.length === 1 ? "" : "s"}`),
      el("ol", { class: "action-log" }, ...earlier.map(item))))] : []));
}

async function act(label, request, track_as) {
  const since = new Date().toISOString();
  try {
    const body = await request();
    say(`${label}: done.`, true);
    track(label, Object.assign({ eventId: body && body.event_id, since }, track_as(body)));
  } catch (e) {
    if (e.message !== "unauthorised") say(`${label}: ${e.message}`, false);
  }
  refresh();
}

function rolloutAction(action) {
  return async () => {
    const model = state.model;
    const r = state.status && (state.status.rollout || state.status.last_rollout);
    const what = { promote: "send all traffic to the candidate now, skipping the remaining analysis",
                   abort: "stop the rollout and send all traffic back to the stable version",
                   pause: "hold the rollout at its current step", resume: "let the rollout's analysis go on",
                   retry: "roll the last failed or rolled-back version out again" }[action];
    const ok = await confirmAction({ title: `${action[0].toUpperCase() + action.slice(1)} the rollout of ${model}?`,
                                     text: `This will ${what}` + (r ? ` (version ${r.version}).` : ".") });
    if (!ok) return;
    const expect = { promote: ["mlcd.serving.rollout_step_completed.v1", "mlcd.serving.rollout_succeeded.v1"],
                     abort: ["mlcd.serving.rolled_back.v1"], retry: ["mlcd.serving.rollout_started.v1"],
                     pause: ["mlcd.serving.rollout_paused.v1"], resume: ["mlcd.serving.rollout_resumed.v1"] }[action];
    await act(`${action} ${model}`, () => api(`/api/v1/models/${enc(model)}/rollout/${action}`, { method: "POST" }),
      () => ({ model, expect }));
  };
}

async function rollback() {
  const model = state.model;
  const version = $("rollback-version").value;
  const ok = await confirmAction({ title: `Roll ${model} back?`, field: "reason (for the journal)",
    text: `All traffic goes to ${version ? "version " + version : "the version before the current one"}; champion follows.` });
  if (!ok) return;
  const body = { reason: ok.value || null, to_version: version || null };
  await act(`roll back ${model}${version ? " to " + version : ""}`,
    () => api(`/api/v1/models/${enc(model)}/rollback`, { method: "POST", body: JSON.stringify(body) }),
    () => ({ model, expect: ["mlcd.serving.rolled_back.v1", "mlcd.monitoring.notice_raised.v1"] }));
}

async function retrain() {
  const model = state.model;
  const data = $("retrain-data").value.trim();
  const ok = await confirmAction({ title: `Retrain ${model}?`, field: "reason (required)", required: true,
    text: `A training run starts on ${data || "the last validated batch"}.` });
  if (!ok) return;
  await act(`retrain ${model}`,
    () => api(`/api/v1/models/${enc(model)}/retrain`, { method: "POST", body: JSON.stringify({ reason: ok.value, data_uri: data || null }) }),
    () => ({ model, expect: ["mlcd.training.started.v1"] }));
}

async function decideGate(g, decision, reasonInput) {
  const reject = decision === "reject";
  const reason = reasonInput.value.trim();
  if (reject && !reason) {
    say(`Gate ${g.id}: a rejection needs a reason; type it beside the button.`, false);
    reasonInput.focus();
    return;
  }
  const ok = await confirmAction({ title: `${reject ? "Reject" : "Approve"} gate ${g.id}?`,
    text: `${g.model} version ${g.model_version}` + (reject ? `, because: ${reason}` : " goes to its canary rollout.") });
  if (!ok) return;
  const since = new Date().toISOString();
  try {
    await api(`/api/v1/gates/${enc(g.id)}/${decision}`, { method: "POST", body: JSON.stringify({ reason }) });
    say(`Gate ${g.id} ${reject ? "rejected" : "approved"}.`, true);
    track(`${decision} gate ${g.id}`, { model: g.model, since,
      expect: [reject ? "mlcd.promotion.rejected.v1" : "mlcd.promotion.approved.v1"] });
  } catch (e) { if (e.message !== "unauthorised") say(`Gate ${g.id}: ${e.message}`, false); }
  refresh();
}

async function replay(letter) {
  const what = letter ? `dead letter ${letter.id} (${letter.event_type || letter.topic})` : "every waiting dead letter";
  const ok = await confirmAction({ title: `Replay ${what}?`, text: "It goes back onto its original topic for its consumer to try again." });
  if (!ok) return;
  try {
    const body = await api("/api/v1/dead-letters/replay", { method: "POST", body: JSON.stringify({ ids: letter ? [letter.id] : [] }) });
    say(`Replayed ${body.replayed} dead letter${body.replayed === 1 ? "" : "s"}.`, true);
    track(`replay ${what}: ${body.replayed} replayed`, { eventId: letter ? letter.event_id : null, note: "→ re-published; waiting for the journal…" });
  } catch (e) { if (e.message !== "unauthorised") say(`Replay: ${e.message}`, false); }
  refresh();
}

// --- views ------------------------------------------------------------------------------------------

function renderServing(status) {
  const s = status.serving;
  const box = $("serving");
  if (!s) {
    box.replaceChildren(el("p", { class: "muted" }, status.serving_problem || "the serving platform reports nothing for this model"));
    return;
  }
  const canary = s.canary_version ? (s.canary_percent_observed ?? s.canary_percent_wanted ?? 0) : 0;
  const stable = 100 - canary;
  const bar = el("div", { class: "split", role: "img", "aria-label": `stable ${fmt(s.stable_version)} ${stable}%, canary ${fmt(s.canary_version)} ${canary}%` },
    stable ? el("span", { class: "stable", "data-width": stable }, `v${fmt(s.stable_version)} ${stable}%`) : null,
    canary ? el("span", { class: "canary", "data-width": canary }, `v${s.canary_version} ${canary}%`) : null);
  for (const span of bar.children) span.style.width = span.dataset.width + "%";
  const revisions = Object.entries(s.traffic || {});
  box.replaceChildren(
    bar,
    facts([
      ["stable", fmt(s.stable_version)],
      ["canary", s.canary_version ? `${s.canary_version}: ${fmt(s.canary_percent_observed)} % observed, ${fmt(s.canary_percent_wanted)} % asked` : "none"],
      ["ready", el("span", { class: s.ready ? "pass" : "fail" }, s.ready ? "yes" : "no")],
      revisions.length ? ["revisions", revisions.map(([r, p]) => `${r}: ${p} %`).join(", ")] : null,
      s.message ? ["platform says", s.message] : null,
    ]));
}

function renderVersions(status) {
  const r = status.rollout;
  const last = status.last_rollout;
  // a rollback after a rollout succeeded leaves that rollout "succeeded": say what came after it
  const rolledBack = (status.events || []).find(e => e.type === "mlcd.serving.rolled_back.v1");  // newest first
  $("versions").replaceChildren(facts([
    ["champion", el("strong", { id: "champion-version" }, fmt(status.champion))],
    ["candidate", el("span", { id: "candidate-version" }, fmt(status.candidate))],
    ["rollout", r ? `version ${r.version}: ${r.state} at ${r.traffic_percent} % (step ${r.step} of ${r.steps.length})` : "none in progress"],
    r && r.reason ? ["why", r.reason] : null,
    !r && last ? ["last rollout", `version ${last.version} ${last.state}${last.reason ? ": " + last.reason : ""}`] : null,
    !r && rolledBack && last && last.state === "succeeded" && Date.parse(rolledBack.time) > Date.parse(last.updated_at || 0)
      ? ["since then", el("span", { class: "fail", id: "rolled-back-since" }, `rolled back ${when(rolledBack.time)}: ${summary(rolledBack)}`)] : null,
    status.waiting ? ["waiting", `version ${status.waiting.version} since ${when(status.waiting.since)}`] : null,
    status.registry_problem ? ["registry", el("span", { class: "fail" }, status.registry_problem)] : null,
  ]));
  $("rollout-state").textContent = r ? `Version ${r.version} is ${r.state} at ${r.traffic_percent} %${r.reason ? " — " + r.reason : ""}.`
    : last ? `No rollout in progress; the last one (version ${last.version}) ${last.state}.` : "No rollout yet.";
  const active = !!r;
  $("act-promote").disabled = !active;
  $("act-abort").disabled = !active;
  $("act-pause").disabled = !active || r.state === "paused";
  $("act-resume").disabled = !active || r.state !== "paused";
  $("act-retry").disabled = active || !last || !["rolled_back", "failed", "superseded"].includes(last.state);
}

function rulesTable(rules) {
  return el("div", { class: "scroll" }, table(["rule", "expression", "outcome", "values seen", "error"], (rules || []).map(r => [
    r.name, el("code", {}, r.expression || ""),
    el("span", { class: r.passed ? "pass" : "fail" }, r.passed ? "pass" : "fail"),
    el("code", {}, fmt(r.values)), r.error || ""]), "rules"));
}

function renderGateCard(box, gate) {
  if (!gate) { box.replaceChildren(el("p", { class: "muted" }, "none")); return; }
  box.replaceChildren(facts([
    ["gate", el("a", { href: "#gates-section" }, gate.id)], ["version", `${gate.model_version} over champion ${fmt(gate.champion_version)}`],
    ["author", fmt(gate.author)], ["needs", `${gate.approvals_required} approval(s) from ${(gate.approver_groups || []).join(", ")}`],
    ["expires", when(gate.expires_at)],
  ]));
}

function renderDecision(gate) {
  const box = $("last-decision");
  if (!gate) { box.replaceChildren(el("p", { class: "muted" }, "no gate of this model was decided yet")); return; }
  const audit = (gate.audit || []).filter(a => a.outcome === "accepted" || a.action === "expire");
  const via = audit.length ? audit[audit.length - 1].via : null;
  box.replaceChildren(
    facts([["gate", gate.id], ["version", gate.model_version],
      ["decision", el("span", { class: gate.state === "approved" ? "pass" : "fail", id: "decision-state" }, gate.state)],
      ["by", el("span", { id: "decision-by" }, `${fmt(gate.decided_by)}${via ? " via " + via : ""}`)],
      ["when", when(gate.decided_at)], gate.reason ? ["reason", gate.reason] : null]),
    rulesTable(gate.rules));
}

function renderGates(gates) {
  const box = $("gates");
  box.replaceChildren();
  if (!gates.length) { box.append(el("p", { class: "muted" }, "No gate is waiting for a decision.")); return; }
  for (const g of gates) {
    const reason = el("input", { type: "text", placeholder: "reason (required to reject)", "aria-label": `reason for gate ${g.id}`, class: "wide" });
    box.append(el("div", { class: "gate", "data-gate": g.id },
      el("h3", {}, `Gate ${g.id} · ${g.model} version ${g.model_version}`),
      el("p", { class: "muted" }, `champion: ${fmt(g.champion_version)} · approvals needed: ${fmt(g.approvals_required)}`
        + ` · groups: ${(g.approver_groups || []).join(", ")} · author: ${fmt(g.author)} · expires: ${when(g.expires_at)}`),
      rulesTable(g.rules),
      el("p", {}, reason),
      el("p", { class: "buttons" }, el("button", { type: "button", class: "approve", onclick: () => decideGate(g, "approve", reason) }, "Approve"),
        el("button", { type: "button", class: "reject", onclick: () => decideGate(g, "reject", reason) }, "Reject"))));
  }
}

function renderModels(models) {
  $("models").replaceChildren(table(["model", "champion", "candidate", "rollout", "step"], models.map(m => {
    const rollout = m.rollout || {};
    return [el("button", { type: "button", class: "quiet-link", onclick: () => choose(m.model) }, m.model), fmt(m.champion),
      fmt(m.candidate), fmt(rollout.state || (m.last_rollout && m.last_rollout.state)),
      rollout.traffic_percent != null ? rollout.traffic_percent + " %" : "—"];
  })));
}

const CHAIN_GOOD = ["arrived", "passed", "published", "succeeded", "registered", "approved", "done"];
const CHAIN_BAD = ["rejected", "failed", "rolled_back", "expired"];

function renderChain(chain) {
  const box = $("chain");
  $("chain-title").textContent = chain.version ? `The chain of ${chain.model} version ${chain.version}` : "The chain";
  if (!chain.nodes.length) { box.replaceChildren(el("li", { class: "muted" }, "nothing recorded for this model yet")); return; }
  box.replaceChildren(...chain.nodes.flatMap((n, i) => {
    const cls = CHAIN_GOOD.includes(n.state) ? "good" : CHAIN_BAD.includes(n.state) ? "bad"
      : ["running", "open"].includes(n.state) ? "active" : ["paused", "pending"].includes(n.state) ? "waiting" : "";
    const arrow = i ? [el("li", { class: "arrow", "aria-hidden": "true" }, "→")] : [];
    return [...arrow, el("li", { class: "node " + cls, "data-kind": n.kind, "data-state": n.state },
      el("div", { class: "kind" }, n.kind.replace(/_/g, " ")),
      el("div", { class: "label" }, n.link ? el("a", { href: n.link, target: "_blank", rel: "noopener noreferrer" }, n.label) : n.label),
      el("div", { class: "state" }, n.state),
      el("div", { class: "time muted" }, when(n.time)),
      n.detail ? el("div", { class: "detail" }, n.detail) : null)];
  }));
}

async function renderCanary() {
  const select = $("rollout-select");
  const chosen = select.value;
  select.replaceChildren(...state.rollouts.map(r => el("option", { value: String(r.id) },
    `#${r.id} v${r.version} ${r.state.replace("_", " ")} · ${when(r.created_at).slice(11)}`)));
  if (!state.rollouts.length) {
    $("canary-chart").replaceChildren(el("p", { class: "muted" }, "no rollout of this model yet"));
    $("canary-reason").textContent = "";
    return;
  }
  // The newest rollout unless the reader picked another one.
  if (state.chartPicked && state.rollouts.some(r => String(r.id) === chosen)) select.value = chosen;
  await drawChart();
}

async function drawChart() {
  const id = $("rollout-select").value;
  const rollout = state.rollouts.find(r => String(r.id) === id);
  if (!rollout) return;
  const response = await fetch(`/api/v1/models/${enc(state.model)}/rollouts/${enc(id)}/chart`,
                               { headers: { "Authorization": "Bearer " + state.token } });
  if (!response.ok) { $("canary-chart").replaceChildren(el("p", { class: "fail" }, `chart: HTTP ${response.status}`)); return; }
  const parsed = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
  const svg = parsed.documentElement;
  if (svg.nodeName !== "svg") return;
  $("canary-chart").replaceChildren(document.importNode(svg, true));
  const measured = rollout.measured;
  $("canary-reason").textContent = `${measured.count} measurements recorded`
    + (measured.last_at ? `; last at ${when(measured.last_at)}` : "") + (rollout.reason ? ` — ${rollout.reason}` : "");
}

function expectationRows(list) {
  return (list || []).map(x => {
    const observed = x.observed && typeof x.observed === "object" ? x.observed : null;
    const examples = observed && observed.unexpected_examples ? observed.unexpected_examples.map(fmt).join(", ") : "";
    return [x.expectation.replace(/^expect_/, "").replace(/_/g, " "), fmt(x.column),
      el("span", { class: x.success ? "pass" : "fail" }, x.success ? "pass" : "fail"),
      examples ? el("span", { class: "examples" }, examples) : el("code", {}, fmt(x.observed)), x.details || ""];
  });
}

function renderBatches(batches) {
  const box = $("batches");
  if (!batches.length) { box.replaceChildren(el("p", { class: "muted" }, "no batch of this model was validated yet")); return; }
  box.replaceChildren(...batches.map(e => {
    const rejected = e.type === "mlcd.data.rejected.v1";
    const d = e.data;
    return el("div", { class: "card batch", "data-batch": d.uri },
      el("h3", {}, el("span", { class: rejected ? "fail" : "pass" }, rejected ? "rejected" : "passed"), " ", d.uri),
      el("p", { class: "muted" }, `${when(e.time)} · suite ${fmt(d.suite)}` + (rejected ? ` · ${d.reason}` : ` · ${fmt(d.rows)} rows`)),
      rejected ? el("div", { class: "scroll" }, table(["expectation", "column", "outcome", "example values / observed", "details"], expectationRows(d.failed), "stack")) : null);
  }));
}

function renderEvents(items) {
  $("events").replaceChildren(table(["time", "type", "model", "what happened"], items.map(e => [
    when(e.time), el("code", {}, shortType(e.type)), e.subject || "—",
    el("details", {}, el("summary", { class: "event-summary" }, summary(e)),
      el("pre", {}, JSON.stringify(e.data, null, 2)), el("span", { class: "muted" }, `id ${e.id} · source ${e.source}`))])));
}

function renderDeadLetters(letters) {
  $("replay-all").disabled = !letters.length;
  $("dead-letters").replaceChildren(letters.length ? table(["#", "when", "consumer", "event", "reason", "attempts", ""], letters.map(l => [
    String(l.id), when(l.created_at), l.consumer_group, el("code", {}, `${shortType(l.event_type) || l.topic} ${l.event_id || ""}`),
    el("span", { class: "fail" }, l.error), String(l.attempts),
    el("button", { type: "button", "data-replay": l.id, onclick: () => replay(l) }, "Replay…")])) :
    el("p", { class: "muted" }, "No dead letter is waiting."));
}

function renderAudit(entries) {
  $("audit").replaceChildren(entries.length ? table(["when", "who", "via", "did", "gate", "outcome", "reason"], entries.map(a => [
    when(a.at), a.actor, a.via, a.action, `${a.gate_id} (${a.model} v${a.model_version})`,
    el("span", { class: a.outcome === "accepted" ? "pass" : "fail" }, a.outcome), a.reason || ""])) :
    el("p", { class: "muted" }, "Nobody decided a gate yet."));
}

function renderRollbackChoices(status) {
  const select = $("rollback-version");
  const chosen = select.value;
  const versions = new Set();
  for (const r of state.rollouts) { versions.add(r.version); if (r.previous_version) versions.add(r.previous_version); }
  const serving = status.serving ? status.serving.stable_version : status.champion;
  const options = [...versions].filter(v => v !== serving).sort((a, b) => Number(b) - Number(a) || b.localeCompare(a));
  select.replaceChildren(el("option", { value: "" }, "the one before the current"),
    ...options.map(v => el("option", { value: v }, `version ${v}`)));
  if (options.includes(chosen)) select.value = chosen;
}

// --- loading ----------------------------------------------------------------------------------------

async function section(id, load) {
  try { await load(); }
  catch (e) { if (e.message !== "unauthorised") $(id).replaceChildren(el("p", { class: "fail" }, e.message)); }
}

function remember(list) {
  for (const e of list) state.seen.set(e.id, e);
  if (state.seen.size > 2000) state.seen = new Map([...state.seen].slice(-1000));
}

async function loadModel() {
  const m = state.model;
  if (!m) return;
  $("model-title").textContent = `What is live and why: ${m}`;
  await Promise.all([
    section("serving", async () => {
      const [status, rolls] = await Promise.all([api(`/api/v1/models/${enc(m)}`), api(`/api/v1/models/${enc(m)}/rollouts?limit=10&measurements=false`)]);
      state.status = status; state.rollouts = rolls;
      remember(status.events || []);
      renderServing(status); renderVersions(status); renderRollbackChoices(status);
      await renderCanary();
    }),
    section("chain", async () => renderChain(await api(`/api/v1/models/${enc(m)}/chain`))),
    section("last-decision", async () => {
      const listed = await api(`/api/v1/gates?model=${enc(m)}`);
      const open = listed.find(g => g.state === "open");
      renderGateCard($("open-gate"), open);
      const decided = listed.filter(g => g.state !== "open" && g.decided_at)
        .sort((a, b) => (b.decided_at || "").localeCompare(a.decided_at || ""))[0];
      renderDecision(decided ? await api(`/api/v1/gates/${enc(decided.id)}`) : null);
    }),
    section("batches", async () => {
      const [ok, bad] = await Promise.all([api(`/api/v1/events?model=${enc(m)}&type=mlcd.data.validated.v1&limit=5`),
                                           api(`/api/v1/events?model=${enc(m)}&type=mlcd.data.rejected.v1&limit=5`)]);
      renderBatches([...ok, ...bad].sort((a, b) => (b.time || "").localeCompare(a.time || "")).slice(0, 6));
    }),
  ]);
}

async function loadEvents() {
  const model = $("filter-model").value;
  const type = $("filter-type").value;
  const query = new URLSearchParams({ limit: "50" });
  if (model) query.set("model", model);
  if (type) query.set("type", type);
  const items = await api(`/api/v1/events?${query}`);
  remember(items);
  state.journal = items;
  renderEvents(items);
}

async function refreshNow() {
  await Promise.all([
    section("gates", async () => {
      const listed = await api("/api/v1/gates?state=open");
      renderGates(await Promise.all(listed.map(g => api(`/api/v1/gates/${enc(g.id)}`))));
    }),
    section("models", async () => {
      renderModels(await Promise.all(state.models.map(n => api(`/api/v1/models/${enc(n)}`)
        .then(m => Object.assign({}, m, { model: n })).catch(() => ({ model: n })))));
    }),
    loadModel(),
    section("events", loadEvents),
    section("dead-letters", async () => renderDeadLetters(await api("/api/v1/dead-letters?limit=50"))),
    section("audit", async () => {
      const model = $("filter-model").value;
      renderAudit(await api(`/api/v1/audit?limit=50${model ? "&model=" + enc(model) : ""}`));
    }),
  ]);
  matchActions();
  renderActions();
}

// Refreshes run one at a time; asking during one runs one more after it.
function refresh() {
  if (state.refreshing) { state.again = true; return state.refreshing; }
  state.refreshing = refreshNow().finally(() => {
    state.refreshing = null;
    if (state.again) { state.again = false; refresh(); }
  });
  return state.refreshing;
}

// Live updates: the journal's event stream, read with fetch so the token travels in a header.
async function follow() {
  if (state.stream) return;
  const controller = new AbortController();
  state.stream = controller;
  while (state.token && state.stream === controller) {
    try {
      const response = await fetch("/api/v1/events/stream", { headers: { "Authorization": "Bearer " + state.token }, signal: controller.signal });
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      $("live").textContent = "● live"; $("live").className = "live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
          if (!data || block.startsWith("event: error")) continue;
          try { remember([JSON.parse(data)]); } catch (e) { continue; }
          matchActions(); renderActions();
          clearTimeout(state.soon); state.soon = setTimeout(refresh, 250);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    $("live").textContent = "○ reconnecting"; $("live").className = "live off";
    await new Promise(r => setTimeout(r, 3000));
  }
}

function choose(model) {
  state.model = model;
  state.chartPicked = false;
  localStorage.setItem("mlcd-model", model);
  $("model-select").value = model;
  refresh();
}

async function start() {
  try {
    state.models = (await api("/api/v1/policies")).map(m => m.model);
  } catch (e) {
    if (e.message !== "unauthorised") say(e.message, false);
    return;
  }
  if (!state.models.includes(state.model)) state.model = state.models[0] || "";
  $("model-select").replaceChildren(...state.models.map(m => el("option", { value: m }, m)));
  $("model-select").value = state.model;
  $("model-picker").hidden = !state.models.length;
  const filter = $("filter-model");
  filter.replaceChildren(el("option", { value: "" }, "every model"), ...state.models.map(m => el("option", { value: m }, m)));
  $("filter-type").replaceChildren(el("option", { value: "" }, "every type"), ...TYPES.map(t => el("option", { value: t }, shortType(t))));
  await refresh();
  follow();
}

function signOut(why) {
  state.token = ""; sessionStorage.removeItem("mlcd-token");
  if (state.stream) { state.stream.abort(); state.stream = null; }
  $("app").hidden = true; $("sign-out").hidden = true; $("model-picker").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why || "";
  $("who").textContent = ""; $("live").textContent = "";
}

function signIn(token) {
  state.token = token; sessionStorage.setItem("mlcd-token", token);
  $("login").hidden = true;
  $("app").hidden = false; $("sign-out").hidden = false;
  $("who").textContent = "signed in";
  start();
}

$("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
$("sign-out").addEventListener("click", () => signOut(""));
$("model-select").addEventListener("change", (e) => choose(e.target.value));
$("rollout-select").addEventListener("change", () => { state.chartPicked = true; drawChart(); });
$("filter-model").addEventListener("change", () => refresh());
$("filter-type").addEventListener("change", () => section("events", loadEvents));
for (const action of ["promote", "pause", "resume", "abort", "retry"]) $("act-" + action).addEventListener("click", rolloutAction(action));
$("act-rollback").addEventListener("click", rollback);
$("act-retrain").addEventListener("click", retrain);
$("replay-all").addEventListener("click", () => replay(null));
if (state.token) signIn(state.token); else signOut();
setInterval(() => { if (state.token) refresh(); }, 10000);
