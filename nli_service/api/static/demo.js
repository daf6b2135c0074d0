// The demo page (templates/demo.html): forms over /predict, /zero-shot, /verify and /batch-predict,
// answers drawn as probability bars. A file, not inline: the page's Content-Security-Policy
// (default-src 'self') allows no inline script or style, so bar widths are set through the DOM.
"use strict";

// When the service asks for an API key, the key lives in this variable only: never in
// localStorage, sessionStorage or a cookie, so reloading the page forgets it.
let apiKey = null;
let model = null; // the answer of GET /model: id, fallback, labels, max_pairs, ...
let downloadUrl = null;

const NLI_LABELS = ["entailment", "neutral", "contradiction"];

class InputError extends Error {}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name === "className" ? "class" : name, value);
  }
  node.append(...children);
  return node;
}

// One API call: {ok, status, data, ms}, where ms runs from sending to the decoded answer.
async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (apiKey !== null) headers.Authorization = `Bearer ${apiKey}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    const data = { error: `the service did not answer (${error.message})` };
    return { ok: false, status: 0, data, ms: performance.now() - started };
  }
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: `HTTP ${response.status}, and the answer is not JSON` };
  }
  return { ok: response.ok, status: response.status, data, ms: performance.now() - started };
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)} %`;
}

function latency(answer) {
  return element("p", { className: "meta latency" }, `answered in ${Math.round(answer.ms)} ms by ${answer.data.model}`);
}

// One labelled bar; the fill's width is the probability (the browser test measures it).
function barRow(tag, name, probability) {
  const fill = element("div", { className: "bar-fill" });
  fill.style.width = `${probability * 100}%`;
  const colour = NLI_LABELS.includes(name) ? ` bar-${name}` : "";
  return element(
    tag,
    { className: `bar-row${colour}`, "data-label": name },
    element("span", { className: "bar-name" }, name),
    element("div", { className: "bar-track", "aria-hidden": "true" }, fill),
    element("span", { className: "bar-value" }, percent(probability)),
  );
}

// An NLI answer's three bars, entailment first, whatever order the model uses.
function nliBars(scores) {
  const rank = (name) => (NLI_LABELS.includes(name) ? NLI_LABELS.indexOf(name) : NLI_LABELS.length);
  const names = Object.keys(scores).sort((a, b) => rank(a) - rank(b));
  return element("ul", { className: "bars" }, ...names.map((name) => barRow("li", name, scores[name])));
}

// --- errors: the API's messages start with the field they are about ("premise must not be
// empty ...", "pairs[3].hypothesis ..."), so each is shown next to its field.

function fieldOf(form, message) {
  const fields = form.dataset.fields.split(" ");
  return fields.find((name) => new RegExp(`^${name}\\b`).test(message)) ?? "";
}

function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

function showError(form, message, field = fieldOf(form, message)) {
  form.querySelector(`[data-error-for="${field}"]`).textContent = message;
  const input = field ? form.elements.namedItem(field) : null;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

function fail(form, answer, shown = answer.data.error) {
  const message = answer.data.error ?? `HTTP ${answer.status}`;
  showError(form, shown ?? message, fieldOf(form, message));
  if (answer.status === 401) askForKey();
}

// --- the model and the API key

function askForKey(message) {
  document.getElementById("key-section").hidden = false;
  const form = document.getElementById("key-form");
  clearErrors(form);
  if (message) showError(form, message, "key");
  else form.elements.key.focus();
}

function showModel(info) {
  const node = document.getElementById("model-info");
  node.replaceChildren(
    "Model ",
    element("code", { id: "model-id" }, info.id),
    ` (${info.backend}, ${info.device}), labels ${info.labels.join(", ")}, up to ${info.max_pairs} pairs a request.`,
  );
  if (info.fallback) {
    const requested = info.requested_model ?? "the configured model";
    node.append(
      " ",
      element("strong", { className: "badge badge-fallback", id: "fallback-badge" }, "fallback model"),
      element(
        "span",
        { className: "fallback-note" },
        `${requested} could not be loaded: this is the service's bundled compact model, less accurate.`,
      ),
    );
  }
  document.getElementById("batch-limit").textContent = `up to ${info.max_pairs} pairs`;
}

async function loadModel() {
  const answer = await call("GET", "model");
  const info = document.getElementById("model-info");
  if (answer.status === 401) {
    const tried = apiKey !== null;
    apiKey = null;
    info.textContent = "This service needs an API key before it says which model it serves.";
    askForKey(tried ? answer.data.error : undefined);
  } else if (answer.status === 503) {
    info.textContent = "The model is still loading; asking again in a few seconds…";
    setTimeout(loadModel, 3000);
  } else if (!answer.ok) {
    info.textContent = `The service did not describe its model: ${answer.data.error}`;
  } else {
    model = answer.data;
    showModel(model);
    document.getElementById("key-section").hidden = true;
  }
}

// --- the forms

function onSubmit(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await handler(form);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
}

async function submitKey(form) {
  const key = form.elements.key.value.trim();
  if (!key) {
    showError(form, "enter the API key you were given", "key");
    return;
  }
  apiKey = key;
  form.elements.key.value = "";
  await loadModel();
}

async function submitPair(form) {
  const result = document.getElementById("pair-result");
  const body = { premise: form.elements.premise.value, hypothesis: form.elements.hypothesis.value };
  const answer = await call("POST", "predict", body);
  result.replaceChildren();
  if (!answer.ok) return fail(form, answer);
  const { label, scores } = answer.data;
  result.append(element("p", { className: "answer", id: "pair-label" }, label), nliBars(scores), latency(answer));
}

async function submitZeroShot(form) {
  const result = document.getElementById("zs-result");
  const multiLabel = form.elements.multi_label.checked;
  const body = {
    text: form.elements.text.value,
    labels: form.elements.labels.value
      .split(",")
      .map((label) => label.trim())
      .filter((label) => label !== ""),
    hypothesis_template: form.elements.hypothesis_template.value,
    multi_label: multiLabel,
  };
  const answer = await call("POST", "zero-shot", body);
  result.replaceChildren();
  if (!answer.ok) return fail(form, answer);
  const { labels, scores } = answer.data;
  const how = multiLabel ? "each label scored on its own" : "the scores share 100 %";
  result.append(
    element("ol", { className: "bars" }, ...labels.map((label, index) => barRow("li", label, scores[index]))),
    element("p", { className: "meta" }, `Ranked by score; ${how}.`),
    latency(answer),
  );
}

// Each claim's label and bars, and the document span that decided it.
async function submitVerify(form) {
  const result = document.getElementById("verify-result");
  const claims = form.elements.claims.value.split("\n").filter((claim) => claim.trim() !== "");
  const answer = await call("POST", "verify", { document: form.elements.document.value, claims });
  result.replaceChildren();
  if (!answer.ok) return fail(form, answer);
  const { results, windows } = answer.data;
  const items = results.map(({ label, scores, evidence }, index) =>
    element(
      "li",
      { className: "claim" },
      element("p", { className: "claim-text" }, claims[index]),
      element("p", { className: "answer" }, label),
      nliBars(scores),
      element(
        "blockquote",
        { className: "evidence", "data-start": String(evidence.start), "data-end": String(evidence.end) },
        evidence.text,
      ),
      element("p", { className: "meta" }, `evidence: characters ${evidence.start}–${evidence.end} of the document`),
    ),
  );
  result.append(
    element("ol", { className: "claims" }, ...items),
    element("p", { className: "meta" }, `The document was read in ${windows} window${windows === 1 ? "" : "s"}.`),
    latency(answer),
  );
}

// CSV rows (RFC 4180: quoted fields may hold commas, newlines and doubled quotes), each with
// the line it starts on.
function csvRows(text) {
  const rows = [];
  let cells = [];
  let field = "";
  let quoted = false;
  let line = 1;
  let rowLine = 1;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (char === '"') {
        quoted = false;
      } else {
        if (char === "\n") line++;
        field += char;
      }
    } else if (char === '"') {
      quoted = true;
    } else if (char === ",") {
      cells.push(field);
      field = "";
    } else if (char === "\n" || char === "\r") {
      if (char === "\r" && text[i + 1] === "\n") i++;
      cells.push(field);
      rows.push({ cells, line: rowLine });
      cells = [];
      field = "";
      line++;
      rowLine = line;
    } else {
      field += char;
    }
  }
  if (quoted) throw new InputError(`line ${rowLine}: a quoted field is not closed`);
  cells.push(field);
  rows.push({ cells, line: rowLine });
  return rows.filter((row) => row.cells.some((cell) => cell.trim() !== ""));
}

function parseCsv(text) {
  let rows = csvRows(text);
  const header = rows.length ? rows[0].cells.map((cell) => cell.trim().toLowerCase()).join(",") : "";
  if (header === "premise,hypothesis") rows = rows.slice(1);
  return rows.map(({ cells, line }) => {
    if (cells.length !== 2) {
      throw new InputError(`line ${line}: expected 2 CSV fields, premise,hypothesis; got ${cells.length}`);
    }
    return { premise: cells[0], hypothesis: cells[1], line };
  });
}

function parseJsonLines(text) {
  const pairs = [];
  text.split("\n").forEach((raw, index) => {
    if (raw.trim() === "") return;
    let value;
    try {
      value = JSON.parse(raw);
    } catch (error) {
      throw new InputError(`line ${index + 1} is not valid JSON: ${error.message}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new InputError(`line ${index + 1} is not a JSON object`);
    }
    pairs.push({ premise: value.premise, hypothesis: value.hypothesis, line: index + 1 });
  });
  return pairs;
}

// Pairs from JSON lines (the first non-blank character is "{") or CSV, each with its line.
function parsePairs(text) {
  return text.trimStart().startsWith("{") ? parseJsonLines(text) : parseCsv(text);
}

function resultsTable(pairs, results) {
  const head = element(
    "tr",
    {},
    ...["#", "Premise", "Hypothesis", "Label", "Probabilities"].map((name) => element("th", { scope: "col" }, name)),
  );
  const rows = results.map((result, index) =>
    element(
      "tr",
      { "data-row": String(index) },
      element("td", {}, String(index + 1)),
      element("td", {}, pairs[index].premise),
      element("td", {}, pairs[index].hypothesis),
      element("td", { className: "row-label" }, result.label),
      element("td", {}, nliBars(result.scores)),
    ),
  );
  const table = element("table", {}, element("thead", {}, head), element("tbody", {}, ...rows));
  return element("div", { className: "table-wrap" }, table);
}

function downloadLink(pairs, results) {
  const lines = results.map((result, index) => {
    const { premise, hypothesis } = pairs[index];
    return `${JSON.stringify({ premise, hypothesis, label: result.label, scores: result.scores })}\n`;
  });
  if (downloadUrl !== null) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob(lines, { type: "application/jsonl" }));
  const attributes = { className: "button", id: "batch-download", href: downloadUrl, download: "nli-results.jsonl" };
  return element("a", attributes, "Download the results (JSONL)");
}

async function submitBatch(form) {
  const result = document.getElementById("batch-result");
  result.replaceChildren();
  let pairs;
  try {
    pairs = parsePairs(form.elements.pairs.value);
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    return showError(form, error.message, "pairs");
  }
  if (pairs.length === 0) return showError(form, "paste at least one pair", "pairs");
  if (model !== null && pairs.length > model.max_pairs) {
    return showError(form, `${pairs.length} pairs: this server takes at most ${model.max_pairs} a request`, "pairs");
  }
  const body = { pairs: pairs.map(({ premise, hypothesis }) => ({ premise, hypothesis })) };
  const answer = await call("POST", "batch-predict", body);
  if (!answer.ok) {
    // "pairs[3].premise must ..." -> "line 5: premise must ...": the line of the box, not the index
    const shown = answer.data.error?.replace(/^pairs\[(\d+)\]\./, (_, index) => `line ${pairs[Number(index)].line}: `);
    return fail(form, answer, shown);
  }
  const { results } = answer.data;
  result.append(resultsTable(pairs, results), downloadLink(pairs, results), latency(answer));
}

// Ctrl+Enter (Cmd+Enter) in a box submits its form.
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.form) {
    event.preventDefault();
    event.target.form.requestSubmit();
  }
});

onSubmit(document.getElementById("key-form"), submitKey);
onSubmit(document.getElementById("pair-form"), submitPair);
onSubmit(document.getElementById("zs-form"), submitZeroShot);
onSubmit(document.getElementById("verify-form"), submitVerify);
onSubmit(document.getElementById("batch-form"), submitBatch);
loadModel();
