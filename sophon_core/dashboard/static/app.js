/* Sophon dashboard: plain JavaScript, no build step, no framework.
 *
 * The page holds no data: everything comes from the admin API, sent with
 * "Authorization: Bearer <token>". The token lives in this tab's sessionStorage,
 * never in a cookie or a query string. Forms are generated from each channel
 * type's JSON Schema (GET /api/channel-types), so a newly installed type gets its
 * form with no change here. The DOM is built with createElement/textContent only:
 * channel names and plugin messages are always shown as text, never as markup.
 */
"use strict";

(function () {
  const TOKEN_KEY = "sophon.adminToken";
  // The API sits next to /dashboard (this also works behind a path prefix).
  const BASE = location.pathname.replace(/\/dashboard\/?$/, "");
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const DM_CHOICES = [
    { value: "per-peer", label: "per-peer: one conversation per sender" },
    { value: "main-session", label: "main-session: every sender shares one session" },
  ];
  let generation = 0; // the latest navigation; a slower, older page load is dropped
  let typesCache = null;

  // ------------------------------------------------------------------ DOM helpers

  /** Make an element. attrs: class, testid, on<event>, value/checked (properties), others as attributes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "testid") el.dataset.testid = value;
      else if (key === "value" || key === "checked") el[key] = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Replace an element's children; null/false entries (optional parts) are left out. */
  function fill(el, ...nodes) {
    el.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
  }

  function heading(text) {
    return h("h1", { tabindex: "-1" }, text);
  }

  /** Replace the page's content unless a newer navigation has started meanwhile. */
  function show(gen, title, ...nodes) {
    if (gen !== generation) return false;
    document.title = title + " · Sophon";
    fill(main, nodes);
    const h1 = main.querySelector("h1");
    if (h1) h1.focus({ preventScroll: true });
    return true;
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  const enc = encodeURIComponent;
  const channelHref = (id) => "#/channels/" + enc(id);

  function statusBadge(status, testid) {
    const s = String(status || "");
    const kind = s === "connected" ? "ok" : s.startsWith("error") ? "bad" : s === "disabled" ? "off" : "unknown";
    return h("span", { class: "status status-" + kind, testid: testid || "status" }, s);
  }

  // ------------------------------------------------------------------ token and API

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  /** "#token=..." (a link the CLI prints): keep the token for this tab, drop it from the address bar. */
  function takeTokenFromFragment() {
    const m = /^#token=([^&]*)/.exec(location.hash);
    if (!m) return;
    let value = "";
    try {
      value = decodeURIComponent(m[1]).trim();
    } catch (e) {
      value = "";
    }
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    history.replaceState(null, "", location.pathname + location.search + "#/channels");
  }

  class AuthError extends Error {}

  class ApiError extends Error {
    constructor(status, body) {
      const b = body && typeof body === "object" ? body : {};
      super([b.title, b.description].filter(Boolean).join(": ") || "the server answered HTTP " + status);
      this.status = status;
      this.body = b;
    }
  }

  async function api(method, path, body) {
    const t = token();
    if (!t) throw new AuthError("");
    const init = {
      method,
      headers: { Authorization: "Bearer " + t, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(BASE + path, init);
    } catch (e) {
      throw new Error("Cannot reach the Sophon server (" + e.message + ")");
    }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      throw new AuthError("The admin token was not accepted. Enter the current one.");
    }
    if (resp.status === 204) return null;
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  async function channelTypes() {
    if (!typesCache) typesCache = await api("GET", "/api/channel-types");
    return typesCache;
  }

  // ------------------------------------------------------------------ routing

  async function route() {
    const gen = ++generation;
    if (!token()) {
      showSignIn("");
      return;
    }
    nav.hidden = false;
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (e) {
        return p;
      }
    });
    try {
      if (parts.length === 0 || (parts[0] === "channels" && parts.length === 1)) await listPage(gen);
      else if (parts[0] === "add" && parts.length === 1) await choosePage(gen);
      else if (parts[0] === "add" && parts.length === 2) await addPage(gen, parts[1]);
      else if (parts[0] === "channels" && parts.length === 2) await detailPage(gen, parts[1]);
      else if (parts[0] === "channels" && parts.length === 3 && parts[2] === "edit") await editPage(gen, parts[1]);
      else show(gen, "Not found", heading("Not found"), h("p", null, "There is no such page. "),
        h("a", { href: "#/channels" }, "Back to the channels"));
    } catch (err) {
      if (gen === generation) failed(err);
    }
  }

  /** Show an error that stopped a page or an action: sign-in for 401, else a message. */
  function failed(err) {
    if (err instanceof AuthError) {
      showSignIn(err.message);
      return;
    }
    ++generation;
    document.title = "Error · Sophon";
    fill(main, heading("Something went wrong"),
      h("p", { class: "error", role: "alert", testid: "page-error" }, err.message),
      h("a", { href: "#/channels" }, "Back to the channels"));
  }

  function showSignIn(message) {
    ++generation;
    typesCache = null;
    nav.hidden = true;
    document.title = "Sign in · Sophon";
    const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password",
      required: true, "aria-required": "true", "aria-describedby": "token-hint", testid: "token-input" });
    const form = h("form", { class: "card signin", testid: "signin", novalidate: true },
      h("h1", { tabindex: "-1" }, "Sign in"),
      message ? h("p", { class: "error", role: "alert", testid: "signin-error" }, message) : null,
      h("div", { class: "field" },
        h("label", { for: "token" }, "Admin token"),
        h("p", { class: "hint", id: "token-hint" },
          "SOPHON_ADMIN_TOKEN, or what `sophon admin-token` prints on the server. " +
          "It is kept in this browser tab only."),
        input),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", testid: "signin-submit" }, "Sign in")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      route();
    });
    main.replaceChildren(form);
    input.focus();
  }

  // ------------------------------------------------------------------ channels list

  async function listPage(gen) {
    const data = await api("GET", "/api/channels");
    const channels = data.channels || [];
    const add = h("a", { class: "button primary", href: "#/add", testid: "add-channel" }, "Add Channel");
    const warnings = (data.warnings || []).length
      ? h("ul", { class: "warnings", testid: "warnings" },
        data.warnings.map((w) => h("li", null, [w.channel, w.path, w.message].filter(Boolean).join(": "))))
      : null;
    let body;
    if (!channels.length) {
      body = h("p", { class: "empty", testid: "empty" }, "No channels yet. Add one to start answering messages.");
    } else {
      body = h("table", { class: "channels", testid: "channels" },
        h("thead", null, h("tr", null, ["Name", "ID", "Type", "Number / address", "Enabled", "Status"].map(
          (t) => h("th", { scope: "col" }, t)))),
        h("tbody", null, channels.map((c) => h("tr", { testid: "row-" + c.id },
          h("td", { "data-col": "name" }, h("a", { href: channelHref(c.id) }, c.name || c.id)),
          h("td", { "data-col": "id" }, h("code", null, c.id)),
          h("td", { "data-col": "type" }, c.typeName || c.type),
          h("td", { "data-col": "address" }, c.address || "—"),
          h("td", { "data-col": "enabled" }, c.enabled ? "yes" : "no"),
          h("td", { "data-col": "status" }, statusBadge(c.status))))));
    }
    show(gen, "Channels", h("div", { class: "page-head" }, heading("Channels"), add), warnings, body);
  }

  // ------------------------------------------------------------------ add: pick a type

  async function choosePage(gen) {
    const types = await channelTypes();
    const cards = types.map((t) => h("li", null,
      h("a", { class: "type-card", href: "#/add/" + enc(t.name), testid: "type-" + t.name },
        h("strong", null, t.displayName || t.name),
        t.configSchema && t.configSchema.description ? h("span", { class: "hint" }, t.configSchema.description) : null)));
    show(gen, "Add Channel", heading("Add Channel"),
      types.length ? h("p", null, "Choose the kind of channel:") : h("p", { class: "empty" }, "No channel type is installed."),
      h("ul", { class: "types", testid: "types" }, cards),
      h("p", null, h("a", { href: "#/channels" }, "Cancel")));
  }

  // ------------------------------------------------------------------ forms

  /**
   * A form whose fields are registered by path ("id", "name", "routing.agentId",
   * "config.<field>"), so the API's errors can be shown next to their field.
   */
  function makeForm({ testid, submitLabel, submitTestid, cancelHref, otherIds, onSubmit }) {
    const fields = new Map();
    const top = h("div", { class: "form-errors", role: "alert", testid: "form-errors", hidden: true });
    const submit = h("button", { type: "submit", class: "primary", testid: submitTestid || "save" }, submitLabel);
    const actions = h("div", { class: "actions" }, submit,
      cancelHref ? h("a", { class: "button", href: cancelHref, testid: "cancel" }, "Cancel") : null);
    const el = h("form", { class: "card form", novalidate: true, testid }, top);
    let counter = 0;

    function add(container, path, spec) {
      const id = (testid || "f") + "-" + (++counter);
      const described = [];
      let input;
      if (spec.kind === "select") {
        input = h("select", { id });
        for (const o of spec.options) input.append(h("option", { value: o.value }, o.label));
        input.value = spec.value === undefined ? "" : spec.value;
      } else if (spec.kind === "checkbox") {
        input = h("input", { type: "checkbox", id, checked: !!spec.value });
      } else if (spec.kind === "json") {
        input = h("textarea", { id, rows: "3", spellcheck: "false", value: spec.value || "" });
      } else {
        input = h("input", {
          id, type: spec.kind === "integer" ? "number" : spec.kind, value: spec.value === undefined ? "" : spec.value,
          placeholder: spec.placeholder, autocomplete: spec.autocomplete || "off", spellcheck: "false",
          step: spec.kind === "integer" ? "1" : spec.kind === "number" ? "any" : null,
          min: spec.min, max: spec.max,
        });
      }
      input.name = path;
      if (spec.testid) input.dataset.testid = spec.testid;
      if (spec.required && spec.kind !== "checkbox") {
        input.required = true;
        input.setAttribute("aria-required", "true");
      }
      // the marker sits beside the label: the field's accessible name stays its title
      const label = h("span", { class: "label" }, h("label", { for: id }, spec.label),
        spec.required ? h("span", { class: "req", "aria-hidden": "true", title: "required" }, " *") : null);
      const notes = [];
      if (spec.description) notes.push(h("p", { class: "hint", id: id + "-desc" }, spec.description));
      if (spec.hint) notes.push(h("p", { class: "hint note", id: id + "-hint", testid: "hint-" + path }, spec.hint));
      for (const n of notes) described.push(n.id);
      if (described.length) input.setAttribute("aria-describedby", described.join(" "));
      const wrap = spec.kind === "checkbox"
        ? h("div", { class: "field check", "data-field": path }, h("div", { class: "row" }, input, label), notes)
        : h("div", { class: "field", "data-field": path }, label, notes, input);
      container.append(wrap);
      fields.set(path, { id, wrap, input, spec, described });
      return input;
    }

    function clearErrors() {
      top.hidden = true;
      top.replaceChildren();
      for (const f of fields.values()) {
        f.wrap.querySelectorAll(".field-error, .field-warning").forEach((n) => n.remove());
        f.wrap.classList.remove("invalid");
        f.input.removeAttribute("aria-invalid");
        if (f.described.length) f.input.setAttribute("aria-describedby", f.described.join(" "));
        else f.input.removeAttribute("aria-describedby");
      }
    }

    /** Which registered field an API problem is about, or null. */
    function fieldFor(problem) {
      const path = String(problem.path || "");
      if (fields.has(path)) return path;
      const m = /^(config|routing|access|limits)\.([^.[]+)/.exec(path);
      if (m && fields.has(m[1] + "." + m[2])) return m[1] + "." + m[2];
      return null;
    }

    function fieldMessage(path, message, level) {
      const f = fields.get(path);
      const n = f.wrap.querySelectorAll(".field-error, .field-warning").length;
      const note = h("p", { class: level === "warning" ? "field-warning" : "field-error", id: f.id + "-err" + n,
        testid: (level === "warning" ? "warning-" : "error-") + path }, message);
      f.wrap.append(note);
      const ids = (f.input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      f.input.setAttribute("aria-describedby", [...ids, note.id].join(" "));
      if (level !== "warning") {
        f.wrap.classList.add("invalid");
        f.input.setAttribute("aria-invalid", "true");
      }
    }

    function topMessage(summary, items) {
      fill(top, h("p", null, summary),
        items.length ? h("ul", null, items.map((t) => h("li", null, t))) : null);
      top.hidden = false;
    }

    /** Show an API error: each problem next to its field, the rest at the top. */
    function showError(err) {
      if (!(err instanceof ApiError)) {
        topMessage(err.message, []);
        return;
      }
      const problems = Array.isArray(err.body.errors) ? err.body.errors : [];
      const loose = [];
      let marked = 0;
      for (const p of problems) {
        const foreign = p.channel && otherIds && otherIds.has(p.channel);
        if (foreign && p.level === "warning") continue; // another channel's advice, not why this failed
        const path = foreign ? null : fieldFor(p);
        if (path) {
          fieldMessage(path, p.message, p.level);
          if (p.level !== "warning") marked += 1;
        } else {
          loose.push([p.level === "warning" ? "warning" : "", p.channel, p.path, p.message].filter(Boolean).join(": "));
        }
      }
      let summary = err.message;
      if (err.status === 422) {
        summary = marked ? "Not saved: fix the fields marked below. Nothing was changed."
          : "Not saved: channels.json would be invalid. Nothing was changed.";
      }
      topMessage(summary, loose);
      const first = el.querySelector("[aria-invalid=true]");
      if (first) first.focus();
    }

    el.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors();
      const bad = [...fields.entries()].filter(([, f]) => f.input.validity && f.input.validity.badInput);
      if (bad.length) {
        for (const [path] of bad) fieldMessage(path, "is not a number", "error");
        topMessage("Not saved: fix the fields marked below.", []);
        return;
      }
      const label = submit.textContent;
      submit.disabled = true;
      submit.textContent = "Saving…";
      try {
        await onSubmit();
      } catch (e) {
        if (e instanceof AuthError) failed(e);
        else showError(e);
      } finally {
        submit.disabled = false;
        submit.textContent = label;
      }
    });

    return { el, fields, add, actions, finish: () => el.append(actions) };
  }

  /** How a schema property is edited. */
  function kindOf(prop, secret) {
    if (secret) return "password";
    if (Array.isArray(prop.enum)) return "select";
    let type = prop.type;
    if (Array.isArray(type)) type = type.find((t) => t !== "null");
    if (type === "boolean") return "checkbox";
    if (type === "integer") return "integer";
    if (type === "number") return "number";
    if (type === "array" || type === "object") return "json";
    return "text";
  }

  /**
   * The channel type's own fields, generated from its configSchema. Returns a reader
   * giving the config to send: for "create" the filled fields; for "edit" only the
   * changed ones (a blank secret keeps its stored value, a cleared field is removed).
   */
  function addConfigFields(form, container, type, channel) {
    const schema = type.configSchema || {};
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    const secrets = new Set(type.secretFields || []);
    const example = (Array.isArray(schema.examples) && schema.examples[0]) || {};
    const readers = [];
    for (const [name, prop] of Object.entries(props)) {
      const secret = secrets.has(name) || prop.writeOnly === true;
      const kind = kindOf(prop, secret);
      const stored = channel ? channel.config[name] : undefined;
      let value = channel ? stored : prop.default;
      let options;
      if (kind === "select") {
        options = [{ value: "", label: "(not set)" }].concat(
          prop.enum.map((v, i) => ({ value: String(i), label: String(v) })));
        const at = prop.enum.findIndex((v) => JSON.stringify(v) === JSON.stringify(value));
        value = at >= 0 ? String(at) : "";
      } else if (kind === "json") {
        value = value === undefined ? "" : JSON.stringify(value);
      } else if (secret) {
        value = ""; // never shown, never pre-filled
      }
      let hint = null;
      if (secret && channel) {
        hint = channel.secrets && channel.secrets[name]
          ? "Stored. Leave blank to keep the stored value."
          : "Not set yet.";
      }
      const placeholder = !secret && example[name] !== undefined && kind !== "checkbox" && kind !== "select"
        ? "e.g. " + (typeof example[name] === "string" ? example[name] : JSON.stringify(example[name])) : null;
      const input = form.add(container, "config." + name, {
        kind, label: prop.title || name, description: prop.description, required: required.has(name), value,
        options, placeholder, hint, testid: "field-" + name, autocomplete: secret ? "new-password" : "off",
        min: prop.minimum, max: prop.maximum,
      });
      readers.push({ name, kind, input, prop, secret, stored });
    }
    return function read(mode) {
      const config = {};
      for (const r of readers) {
        const v = readValue(r);
        if (mode === "create") {
          if (v !== undefined) config[r.name] = v;
        } else if (r.secret) {
          if (v !== undefined) config[r.name] = v; // blank: keep the stored secret
        } else if (JSON.stringify(v) !== JSON.stringify(r.stored)) {
          config[r.name] = v === undefined ? null : v; // null removes the field
        }
      }
      return config;
    };
  }

  function readValue({ kind, input, prop, secret }) {
    const raw = input.value;
    switch (kind) {
      case "checkbox": // unticked means "not set", unless that would leave a true default in force
        return input.checked ? true : prop.default === true ? false : undefined;
      case "select":
        return raw === "" ? undefined : prop.enum[Number(raw)];
      case "integer":
      case "number":
        return raw.trim() === "" ? undefined : Number(raw);
      case "json":
        if (raw.trim() === "") return undefined;
        try {
          return JSON.parse(raw);
        } catch (e) {
          return raw; // the server says what is wrong with it
        }
      default:
        if (secret) return raw === "" ? undefined : raw;
        return raw.trim() === "" ? undefined : raw.trim();
    }
  }

  function agentOptions(agents, current) {
    const ids = agents.map((a) => a.id);
    if (current && !ids.includes(current)) ids.push(current);
    return ids.map((id) => ({ value: id, label: id }));
  }

  function addRoutingFields(form, container, agents, routing) {
    const agentId = routing.agentId || (agents.some((a) => a.id === "default") ? "default" : (agents[0] || {}).id);
    const agent = form.add(container, "routing.agentId", {
      kind: "select", label: "Agent", description: "Which agent answers this channel", required: true,
      options: agentOptions(agents, agentId), value: agentId, testid: "routing-agentId",
    });
    const dm = form.add(container, "routing.dmBehavior", {
      kind: "select", label: "Conversations", required: true, options: DM_CHOICES, value: routing.dmBehavior,
      description: "per-peer keeps each sender's conversation apart (the safe choice for a public number)",
      testid: "routing-dmBehavior",
    });
    return () => ({ agentId: agent.value, dmBehavior: dm.value });
  }

  // ------------------------------------------------------------------ add: the form

  async function addPage(gen, typeName) {
    const [types, agents, list] = await Promise.all([
      channelTypes(), api("GET", "/api/agents"), api("GET", "/api/channels")]);
    const type = types.find((t) => t.name === typeName);
    if (!type) {
      show(gen, "Add Channel", heading("Add Channel"),
        h("p", { class: "error", role: "alert", testid: "page-error" }, "No installed channel type is called " + typeName + "."),
        h("a", { href: "#/add" }, "Choose another type"));
      return;
    }
    const ids = new Set((list.channels || []).map((c) => c.id));
    let n = 1;
    while (ids.has(type.name + "-" + n)) n += 1;

    let readConfig, readRouting, idInput, nameInput;
    const form = makeForm({
      testid: "channel-form", submitLabel: "Save", cancelHref: "#/add", otherIds: ids,
      onSubmit: async () => {
        const body = { id: idInput.value.trim(), type: type.name, config: readConfig("create"), routing: readRouting() };
        const name = nameInput.value.trim();
        if (name) body.name = name;
        const channel = await api("POST", "/api/channels", body);
        go(channelHref(channel.id));
      },
    });
    const envelope = h("fieldset", null, h("legend", null, "Channel"));
    idInput = form.add(envelope, "id", {
      kind: "text", label: "Channel id", required: true, value: type.name + "-" + n, testid: "channel-id",
      description: "Unique; letters, digits, '.', '_' and '-' (e.g. " + type.name + "-" + n + ")",
    });
    nameInput = form.add(envelope, "name", {
      kind: "text", label: "Display name", placeholder: type.displayName, testid: "channel-name",
      description: "Shown in this dashboard; defaults to the id",
    });
    const settings = h("fieldset", null, h("legend", null, (type.displayName || type.name) + " settings"));
    readConfig = addConfigFields(form, settings, type, null);
    const routing = h("fieldset", null, h("legend", null, "Routing"));
    readRouting = addRoutingFields(form, routing, agents, { dmBehavior: "per-peer" });
    form.el.append(envelope, settings, routing);
    form.finish();
    show(gen, "Add " + (type.displayName || type.name), heading("Add " + (type.displayName || type.name)),
      h("p", { class: "hint" }, "The channel is saved inactive: test the connection, then activate it. " +
        "Secrets are stored encrypted and never shown again."),
      form.el);
  }

  // ------------------------------------------------------------------ edit

  async function editPage(gen, id) {
    const [types, channel] = await Promise.all([channelTypes(), api("GET", "/api/channels/" + enc(id))]);
    const type = types.find((t) => t.name === channel.type);
    if (!type) throw new Error("The channel type " + channel.type + " is not installed.");
    let readConfig, nameInput;
    const form = makeForm({
      testid: "channel-form", submitLabel: "Save", cancelHref: channelHref(id),
      onSubmit: async () => {
        const patch = {};
        const name = nameInput.value.trim();
        if (name !== (channel.name || "")) patch.name = name || null;
        const config = readConfig("edit");
        if (Object.keys(config).length) patch.config = config;
        if (Object.keys(patch).length) await api("PATCH", "/api/channels/" + enc(id), patch);
        go(channelHref(id));
      },
    });
    const envelope = h("fieldset", null, h("legend", null, "Channel"),
      h("p", null, "Id: ", h("code", null, channel.id), " (cannot be changed)"));
    nameInput = form.add(envelope, "name", {
      kind: "text", label: "Display name", value: channel.name || "", testid: "channel-name",
      description: "Shown in this dashboard; defaults to the id",
    });
    const settings = h("fieldset", null, h("legend", null, (type.displayName || type.name) + " settings"));
    readConfig = addConfigFields(form, settings, type, channel);
    form.el.append(envelope, settings);
    form.finish();
    show(gen, "Edit " + channel.id, heading("Edit " + (channel.name || channel.id)),
      h("p", { class: "hint" }, "Changing a setting clears the last connection test: test again afterwards."),
      form.el);
  }

  // ------------------------------------------------------------------ channel detail

  async function detailPage(gen, id) {
    const [types, agents, channel] = await Promise.all([
      channelTypes(), api("GET", "/api/agents"), api("GET", "/api/channels/" + enc(id))]);
    if (gen !== generation) return;
    const state = { gen, types, agents, test: null };
    renderDetail(state, channel, true);
  }

  function renderDetail(state, channel, navigated) {
    const type = state.types.find((t) => t.name === channel.type) || { configSchema: {}, secretFields: [] };
    const id = channel.id;
    const path = "/api/channels/" + enc(id);
    const actionError = h("p", { class: "error", role: "alert", testid: "action-error", hidden: true });

    /** Run an action that returns the channel; re-render with it. */
    async function act(button, busyText, run) {
      const label = button.textContent;
      button.disabled = true;
      button.textContent = busyText;
      actionError.hidden = true;
      try {
        const updated = await run();
        if (state.gen === generation) renderDetail(state, updated, false);
      } catch (e) {
        if (e instanceof AuthError) {
          failed(e);
          return;
        }
        button.disabled = false;
        button.textContent = label;
        actionError.textContent = e.message;
        actionError.hidden = false;
      }
    }

    // the connection test's result, in the plugin's own words
    const result = h("div", { class: "test-result", testid: "test-result", "aria-live": "polite",
      hidden: !state.test });
    if (state.test) fillTestResult(result, state.test, channel);

    const testButton = h("button", { type: "button", testid: "test-connection" }, "Test Connection");
    testButton.addEventListener("click", () => {
      result.hidden = false;
      result.setAttribute("aria-busy", "true");
      result.replaceChildren(h("p", { class: "muted", testid: "testing" }, "Testing…"));
      act(testButton, "Testing…", async () => {
        try {
          const r = await api("POST", path + "/test");
          state.test = r;
          return r.channel;
        } catch (e) {
          result.hidden = true;
          throw e;
        } finally {
          result.removeAttribute("aria-busy");
        }
      });
    });

    const toggle = channel.enabled
      ? h("button", { type: "button", testid: "deactivate" }, "Deactivate")
      : h("button", { type: "button", class: "primary", testid: "activate" }, "Activate");
    toggle.addEventListener("click", () => act(toggle, channel.enabled ? "Deactivating…" : "Activating…",
      () => api("POST", path + (channel.enabled ? "/deactivate" : "/activate"))));

    const edit = h("a", { class: "button", href: channelHref(id) + "/edit", testid: "edit" }, "Edit");

    // routing: agent and conversations, PUT /routing
    const routingForm = makeForm({
      testid: "routing-form", submitLabel: "Save routing", submitTestid: "save-routing",
      onSubmit: async () => {
        const updated = await api("PUT", path + "/routing", readRouting());
        if (state.gen === generation) renderDetail(state, updated, false);
      },
    });
    const readRouting = addRoutingFields(routingForm, routingForm.el, state.agents, channel.routing || {});
    routingForm.finish();
    const routingCancel = h("button", { type: "button", testid: "cancel-routing" }, "Cancel");
    routingForm.actions.append(routingCancel);
    const routingBox = h("section", { class: "panel", hidden: true, "aria-label": "Routing" },
      h("h2", null, "Routing"), routingForm.el);
    const routingButton = h("button", { type: "button", testid: "routing", "aria-expanded": "false" }, "Routing");
    routingButton.addEventListener("click", () => {
      routingBox.hidden = !routingBox.hidden;
      routingButton.setAttribute("aria-expanded", String(!routingBox.hidden));
      if (!routingBox.hidden) routingBox.querySelector("select").focus();
    });
    routingCancel.addEventListener("click", () => {
      routingBox.hidden = true;
      routingButton.setAttribute("aria-expanded", "false");
      routingButton.focus();
    });

    // remove, after an in-page confirmation
    const confirm = h("button", { type: "button", class: "danger", testid: "confirm-remove" }, "Yes, remove " + id);
    const cancelRemove = h("button", { type: "button", testid: "cancel-remove" }, "Cancel");
    const confirmBox = h("section", { class: "panel confirm", hidden: true, role: "alertdialog",
      "aria-label": "Remove " + id, testid: "remove-confirmation" },
      h("p", null, "Remove the channel ", h("strong", null, channel.name || id), " (", h("code", null, id), ")? " +
        "It is deleted from channels.json with its stored secrets, and stops answering messages."),
      h("div", { class: "actions" }, confirm, cancelRemove));
    const remove = h("button", { type: "button", class: "danger", testid: "remove" }, "Remove");
    remove.addEventListener("click", () => {
      confirmBox.hidden = false;
      cancelRemove.focus();
    });
    cancelRemove.addEventListener("click", () => {
      confirmBox.hidden = true;
      remove.focus();
    });
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      confirm.textContent = "Removing…";
      try {
        await api("DELETE", path);
        go("#/channels");
      } catch (e) {
        if (e instanceof AuthError) {
          failed(e);
          return;
        }
        confirm.disabled = false;
        confirm.textContent = "Yes, remove " + id;
        actionError.textContent = e.message;
        actionError.hidden = false;
      }
    });

    // the server's own idea of its public webhook URL when it gives one, else this page's origin
    const webhook = channel.webhookUrl || (channel.webhookPath ? location.origin + BASE + channel.webhookPath : null);
    const nodes = [
      h("div", { class: "page-head" }, heading(channel.name || id),
        h("a", { href: "#/channels", class: "back" }, "All channels")),
      h("p", { class: "summary" }, h("span", { class: "muted" }, channel.typeName || channel.type), " · status ",
        statusBadge(channel.status)),
      h("div", { class: "toolbar", role: "group", "aria-label": "Actions" },
        testButton, toggle, edit, routingButton, remove),
      actionError, result, routingBox, confirmBox,
      webhook ? h("section", { class: "panel" }, h("h2", null, "Webhook URL"),
        h("p", { class: "hint" }, "Set this as the incoming-message webhook (HTTP POST) at the provider, e.g. " +
          "in the Twilio Console under the number's Messaging settings. If Sophon is reached through a public " +
          "URL or proxy, use that address with the same path."),
        h("p", null, h("code", { class: "url", testid: "webhook-url" }, webhook))) : null,
      h("section", { class: "panel" }, h("h2", null, "Settings"), detailList(channel, type)),
    ];
    if (navigated) {
      show(state.gen, channel.name || id, ...nodes);
    } else if (state.gen === generation) {
      const focused = document.activeElement && document.activeElement.dataset.testid;
      fill(main, nodes);
      const again = focused && main.querySelector('[data-testid="' + focused + '"]');
      (again || (channel.enabled ? main.querySelector('[data-testid="deactivate"]') : null) || testButton).focus();
    }
  }

  function fillTestResult(box, r, channel) {
    const items = (r.checks || []).map((c) => h("li", { class: "check check-" + c.level, "data-level": c.level },
      h("span", { class: "level" }, c.level), " ", h("span", { class: "message" }, c.message)));
    fill(box,
      h("p", { class: "test-status" }, "Connection test: ", statusBadge(r.status, "test-status")),
      h("ul", { class: "checks", testid: "checks" }, items),
      r.ok && !channel.enabled ? h("p", { class: "hint" }, "The channel is not active yet: activate it to answer messages.") : null);
  }

  function detailList(channel, type) {
    const schema = type.configSchema || {};
    const props = schema.properties || {};
    const secrets = new Set(type.secretFields || []);
    const rows = [
      ["Channel id", h("code", null, channel.id)],
      ["Type", channel.typeName || channel.type],
      ["Number / address", channel.address || "—"],
      ["Enabled", h("span", { testid: "enabled" }, channel.enabled ? "yes" : "no")],
      ["Last connection test", channel.lastTest || "never"],
      ["Agent", (channel.routing || {}).agentId || "—"],
      ["Conversations", (channel.routing || {}).dmBehavior || "—"],
      ["Access", (channel.access || {}).mode || "open"],
    ];
    const names = [...Object.keys(props)];
    for (const k of Object.keys(channel.config || {})) if (!names.includes(k)) names.push(k);
    for (const k of Object.keys(channel.secrets || {})) if (!names.includes(k)) names.push(k);
    for (const name of names) {
      const prop = props[name] || {};
      const label = prop.title || name;
      if (secrets.has(name) || prop.writeOnly === true || (channel.secrets && name in channel.secrets)) {
        rows.push([label, h("span", { class: "muted", testid: "value-" + name },
          channel.secrets && channel.secrets[name] ? "set" : "not set")]);
      } else {
        const v = channel.config[name];
        rows.push([label, h("span", { testid: "value-" + name },
          v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v))]);
      }
    }
    return h("dl", { class: "details", testid: "details" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
  }

  // ------------------------------------------------------------------ start

  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn("");
  });
  window.addEventListener("hashchange", () => {
    takeTokenFromFragment();
    route();
  });
  takeTokenFromFragment();
  route();
})();
