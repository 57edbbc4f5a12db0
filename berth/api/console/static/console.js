// berth's console: live updates (fetch, polling the console's JSON routes) and its actions.
// berth's own code, no library. Text from the server goes in through textContent; the only
// innerHTML is the console's own server-rendered (autoescaped) fragments.
"use strict";
(() => {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (id) => document.getElementById(id);

  async function request(method, url, body) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-Berth-CSRF"] = csrf;
      options.body = JSON.stringify(body === undefined ? {} : body);
    }
    const response = await fetch(url, options);
    if (response.status === 401) { window.location.assign("/ui/login"); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { ok: response.ok, status: response.status, data };
  }
  const failure = (r) => (r.data && r.data.error && r.data.error.message) || `request failed (HTTP ${r.status})`;

  // run fn now and every `ms`, one at a time, not while the tab is hidden
  function every(ms, fn) {
    let busy = false;
    const tick = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try { await fn(); } catch (e) { /* the next tick tries again */ } finally { busy = false; }
    };
    tick();
    return setInterval(tick, ms);
  }

  document.querySelectorAll("select[data-autosubmit]").forEach((select) =>
    select.addEventListener("change", () => select.form.submit()));

  // ---- the deployments table -------------------------------------------------------------------
  const table = $("deployments");
  if (table) {
    const body = table.tBodies[0];
    let shown = null;
    every(750, async () => {
      const params = new URLSearchParams();
      if (table.dataset.status) params.set("status", table.dataset.status);
      if (table.dataset.pageToken) params.set("page_token", table.dataset.pageToken);
      const r = await request("GET", `${table.dataset.live}?${params}`);
      if (!r.ok || !r.data) return;
      if (r.data.html !== shown) { body.innerHTML = r.data.html; shown = r.data.html; }
      const next = $("next-page");
      if (next) {
        next.hidden = !r.data.next_page_token;
        const query = new URLSearchParams();
        if (table.dataset.status) query.set("status", table.dataset.status);
        query.set("page_token", r.data.next_page_token || "");
        next.href = `/ui/deployments?${query}`;
      }
    });
  }

  // ---- nodes -------------------------------------------------------------------------------------
  const nodes = $("nodes");
  if (nodes) {
    const body = nodes.tBodies[0], why = $("nodes-why"), said = $("action-result");
    let shown = null;
    const refresh = async () => {
      const r = await request("GET", nodes.dataset.live);
      if (!r.ok || !r.data) return;
      if (r.data.html !== shown) { body.innerHTML = r.data.html; shown = r.data.html; }
      why.hidden = !r.data.why;
      why.textContent = r.data.why ? `No cluster view: ${r.data.why}` : "";
    };
    every(1000, refresh);
    // the rows are replaced as they refresh: one listener on the table for every row's button
    nodes.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-node-action]");
      if (!button) return;
      const node = button.dataset.node, action = button.dataset.nodeAction;
      if (action === "drain" && !window.confirm(`Drain ${node}? Nothing new is placed there and its instances move to other nodes.`)) return;
      button.disabled = true;
      const r = await request("POST", `/ui/api/nodes/${encodeURIComponent(node)}/${action}`);
      button.disabled = false;
      said.textContent = r.ok ? `${node}: ${r.data.status}` : failure(r);
      said.className = r.ok ? "ok-text" : "alert";
      await refresh();
    });
  }

  // ---- a deployment ----------------------------------------------------------------------------
  const detail = $("detail");
  if (detail) {
    const context = $("change-context");
    let typed = false;
    if (context) context.addEventListener("input", () => { typed = true; });
    let shown = null;
    every(1000, async () => {
      const r = await request("GET", detail.dataset.live);
      if (!r.ok || !r.data) return;
      if (r.data.html !== shown) { detail.innerHTML = r.data.html; shown = r.data.html; }
      if (context && !typed && r.data.suggested_context_size) context.value = r.data.suggested_context_size;
    });
  }
  const result = $("action-result");
  const say = (text, bad) => { if (result) { result.textContent = text; result.className = bad ? "alert" : "ok-text"; } };
  document.querySelectorAll("button[data-action]").forEach((button) =>
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const r = await request("POST", button.dataset.action);
      button.disabled = false;
      say(r.ok ? `${button.textContent.trim()}: asked (status ${r.data.status})` : failure(r), !r.ok);
    }));
  const change = $("change");
  if (change) {
    change.addEventListener("submit", async (event) => {
      event.preventDefault();
      const patch = {};
      const context = $("change-context"), model = $("change-model"), engine = $("change-engine");
      if (context.value !== "" && context.value !== context.dataset.current) patch.context_size = Number(context.value);
      if (model.value !== model.defaultValue) patch.model = model.value;
      const chosen = engine.options[engine.selectedIndex];
      if (!chosen.defaultSelected) patch.engine = engine.value;
      const r = await request("POST", change.dataset.retry, patch);
      say(r.ok ? `Retrying with ${JSON.stringify(patch)} (status ${r.data.status})` : failure(r), !r.ok);
    });
  }

  const scale = $("scale");
  if (scale) {
    scale.addEventListener("submit", async (event) => {
      event.preventDefault();
      const replicas = Number($("scale-replicas").value);
      const r = await request("POST", scale.dataset.scale, { replicas });
      say(r.ok ? `Scaling to ${replicas} (status ${r.data.status})` : failure(r), !r.ok);
    });
  }

  // ---- logs ------------------------------------------------------------------------------------
  const log = $("log");
  if (log) {
    let offset = null;
    const follow = $("follow"), summary = $("issues"), empty = $("log-empty");
    const codes = new Set();
    every(1000, async () => {
      const url = offset === null ? `${log.dataset.live}?tail=500` : `${log.dataset.live}?offset=${offset}`;
      const r = await request("GET", url);
      if (!r.ok || !r.data) return;
      offset = r.data.offset;
      const issues = new Map(r.data.issues.map((issue) => [issue.line, issue]));
      r.data.lines.forEach((text, index) => {
        const item = document.createElement("li");
        const line = document.createElement("span");
        line.textContent = text;
        item.append(line);
        const issue = issues.get(index);
        if (issue) {
          item.className = "issue";
          const note = document.createElement("div");
          note.className = "note";
          const chip = document.createElement("span");
          chip.className = "chip";
          chip.textContent = issue.code;
          const first = !codes.has(issue.code);  // what to do: said at its first line and above the log
          note.append(chip, first ? ` ${issue.description}. What to do: ${issue.guidance}` : ` ${issue.description}`);
          item.append(note);
          if (first) {
            codes.add(issue.code);
            const found = document.createElement("p");
            found.className = "alert";
            const code = document.createElement("span");
            code.className = "chip";
            code.textContent = issue.code;
            found.append(code, ` ${issue.description}. ${issue.guidance}`);
            summary.append(found);
          }
        }
        log.append(item);
      });
      while (log.children.length > 5000) log.firstElementChild.remove();
      if (empty) empty.hidden = log.children.length > 0;
      if (r.data.lines.length && follow && follow.checked) log.lastElementChild.scrollIntoView({ block: "end" });
    });
  }

  // ---- deploy ----------------------------------------------------------------------------------
  const form = $("deploy");
  if (form) {
    const preset = $("preset"), model = $("model"), name = $("name"), error = $("deploy-error");
    const advanced = $("advanced"), toggle = $("advanced-toggle");
    const chosenModel = () => model.value.trim() || preset.value;
    const derivedName = (reference) => {
      if (reference === preset.value && !model.value.trim()) return reference;
      const stem = reference.split("?")[0].replace(/\/+$/, "").split(/[/:]/).pop().replace(/\.(gguf|safetensors)$/i, "");
      return stem.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63).replace(/-+$/, "");
    };
    const showError = (text) => { error.textContent = text; error.hidden = !text; };
    toggle.addEventListener("change", () => { advanced.hidden = !toggle.checked; });
    preset.addEventListener("change", () => { if (preset.value) model.value = ""; refresh(); });
    let timer = null;
    model.addEventListener("input", () => {
      if (model.value) preset.value = "";
      clearTimeout(timer);
      timer = setTimeout(refresh, 600);
    });
    $("check").addEventListener("click", () => refresh());

    async function refresh() {
      const reference = chosenModel();
      name.placeholder = reference ? derivedName(reference) : "";
      if (!reference) { $("plan").hidden = true; return; }
      const engine = advanced.hidden ? "auto" : $("engine").value;
      const asked = advanced.hidden ? "" : $("context_size").value;
      const [engines, plan] = await Promise.all([
        request("GET", `/ui/api/engines?${new URLSearchParams({ model: reference, engine })}`),
        request("POST", "/ui/api/plan", { model: reference, engine, ...(asked ? { context_size: Number(asked) } : {}) }),
      ]);
      $("plan").hidden = false;
      const selection = engines.ok && engines.data && engines.data.selection;
      $("engine-choice").textContent = !selection ? failure(engines)
        : selection.engine ? `Engine: ${selection.engine}. Why: ${selection.reasons.join("; ")}`
        : `No engine can serve it here: ${selection.refused}`;
      const fit = $("fit"), box = $("options-box"), options = $("options");
      options.replaceChildren();
      if (!plan.ok) { fit.textContent = failure(plan); fit.className = "alert"; box.hidden = true; return; }
      fit.textContent = plan.data.message;
      fit.className = plan.data.fits === false ? "alert" : "";
      box.hidden = !plan.data.options.length;
      plan.data.options.forEach((option) => {
        const id = `option-${option.kind}`;
        const input = document.createElement("input");
        Object.assign(input, { type: "radio", name: "context_option", id, value: option.context_size });
        input.checked = option.kind === "balanced";
        const label = document.createElement("label");
        label.htmlFor = id;
        label.className = "inline";
        label.textContent = `${option.label}: ${option.description}`;
        const line = document.createElement("div");
        line.append(input, label);
        options.append(line);
      });
    }

    function lines(id) { return $(id).value.split("\n").map((l) => l.trim()).filter(Boolean); }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("");
      const reference = chosenModel();
      if (!reference) { showError("Choose a preset or give a model."); return; }
      const spec = { name: name.value.trim() || derivedName(reference), model: reference };
      const option = form.querySelector('input[name="context_option"]:checked');
      if (option) spec.context_size = Number(option.value);
      if (!advanced.hidden) {
        spec.engine = $("engine").value;
        if ($("context_size").value) spec.context_size = Number($("context_size").value);
        spec.startup_timeout_s = Number($("startup_timeout_s").value);
        spec.engine_args = lines("engine_args");
        spec.env = Object.fromEntries(lines("env").map((l) => [l.split("=")[0], l.split("=").slice(1).join("=")]));
        spec.public = $("public").checked;
        if ($("node").value.trim()) spec.node = $("node").value.trim();
        spec.restart = Object.fromEntries(["max_attempts", "backoff_initial_s", "backoff_max_s", "stable_after_s"]
          .map((field) => [field, Number($(field).value)]));
      }
      const r = await request("POST", "/ui/api/deploy", spec);
      if (r.ok) window.location.assign(r.data.url);
      else showError(failure(r));
    });
  }
})();
