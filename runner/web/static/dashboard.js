// wan-batch serve: keeps its pages current from the JSON API, without reloading them.
// Everything shown is set with textContent: text from a manifest or from fal is never HTML.
"use strict";

const REFRESH_MS = 1500;
// The gallery keeps the latest this many, as the server sends them: a tab left open on a big batch stays small.
const GALLERY_KEPT = 48;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  const s = Math.round(Number(seconds));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function showTimes(root) {
  for (const node of root.querySelectorAll("[data-time]")) {
    node.textContent = new Date(Number(node.dataset.time) * 1000).toLocaleString();
  }
  for (const node of root.querySelectorAll("[data-eta]")) {
    node.textContent = node.dataset.eta === "" ? "–" : duration(node.dataset.eta);
  }
}

function stamp(text) {
  const updated = document.getElementById("updated");
  if (updated) updated.textContent = text;
}

function countsText(counts) {
  return Object.entries(counts).filter(([, n]) => n).map(([status, n]) => n + " " + status).join(", ");
}

function renderBatches(rows) {
  const body = document.getElementById("batches");
  body.replaceChildren(...rows.map((b) => el("tr", {"data-batch": b.batch_id},
    el("td", {}, el("a", {href: b.url}, b.batch_id)),
    el("td", {class: "state"}, b.state),
    el("td", {}, el("progress", {max: b.jobs || 1, value: b.ended}), " ",
      el("span", {class: "ended"}, b.ended), "/", el("span", {class: "jobs"}, b.jobs)),
    el("td", {class: "counts"}, countsText(b.counts)),
    el("td", {class: "in-flight"}, b.in_flight + "/" + b.window),
    el("td", {class: "cost"}, b.cost_shown || "—"),
    el("td", {class: "started", "data-time": b.created_at}),
    el("td", {class: "eta", "data-eta": b.eta_s === null ? "" : b.eta_s}))));
  showTimes(body);
}

function renderBatch(b) {
  document.getElementById("progress").max = b.jobs || 1;
  document.getElementById("progress").value = b.ended;
  document.getElementById("ended").textContent = b.ended;
  document.getElementById("jobs").textContent = b.jobs;
  document.getElementById("state").textContent = b.state;
  document.getElementById("in-flight-count").textContent = b.in_flight;
  document.getElementById("eta").dataset.eta = b.eta_s === null ? "" : b.eta_s;
  document.getElementById("cost-line").hidden = !b.cost_shown;
  document.getElementById("cost").textContent = b.cost_shown || "";
  showTimes(document.querySelector(".progress"));
  for (const [status, n] of Object.entries(b.counts)) {
    const span = document.querySelector('#counts [data-status="' + status + '"]');
    if (!span) continue;
    span.querySelector("b").textContent = n;
    span.classList.toggle("zero", n === 0);
  }
  const failures = Object.entries(b.errors).map(([type, group]) => el("details", {},
    el("summary", {}, el("b", {}, type), ": " + group.count),
    el("ul", {}, ...group.latest.map((l) => el("li", {}, l.job_id + " (row " + l.row + "): " + (l.message || ""))))));
  document.getElementById("failures").replaceChildren(...(failures.length ? failures : [el("p", {class: "meta"}, "none")]));
  document.getElementById("in-flight").replaceChildren(...b.in_flight_jobs.map((j) => el("tr", {},
    el("td", {}, j.job_id), el("td", {}, j.row), el("td", {}, j.status),
    el("td", {}, j.queue_position === null ? "" : j.queue_position), el("td", {}, j.last_log || ""))));
  const gallery = document.getElementById("gallery");
  const shown = new Set(Array.from(gallery.children, (f) => f.dataset.job));
  for (const job of b.gallery.slice().reverse()) {
    if (shown.has(job.job_id)) continue;
    const links = job.outputs.map((o, i) => el("a", {href: o.href},
      el("img", {src: o.thumb, alt: job.name + " output " + (i + 1), loading: "lazy"})));
    gallery.prepend(el("figure", {class: "job", "data-job": job.job_id}, ...links,
      el("figcaption", {}, el("b", {}, job.name), " ", el("span", {class: "prompt"}, job.prompt || ""))));
  }
  while (gallery.children.length > GALLERY_KEPT) gallery.lastElementChild.remove();
}

async function refresh(render) {
  const api = document.body.dataset.api;
  try {
    const answer = await fetch(api, {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (answer.ok) {
      render(await answer.json());
      stamp(new Date().toLocaleTimeString());
    } else {
      stamp("not updated: " + answer.status + " " + answer.statusText);
    }
  } catch (error) {
    stamp("not updated: the server does not answer (a run that served this page has ended?)");
  } finally {
    setTimeout(() => refresh(render), REFRESH_MS);
  }
}

async function act(button) {
  if (button.id === "cancel" && !window.confirm("Cancel this batch? Its requests at fal are cancelled too.")) return;
  const result = document.getElementById("action-result");
  button.disabled = true;
  try {
    const answer = await fetch(button.dataset.url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: "{}"});
    const data = await answer.json();
    result.textContent = answer.ok ? JSON.stringify(data) : (data.error || answer.statusText);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  showTimes(document);
  const page = document.body.dataset.page;
  if (page === "batches") refresh(renderBatches);
  if (page === "batch") refresh(renderBatch);
  for (const button of document.querySelectorAll(".actions button")) {
    button.addEventListener("click", () => act(button));
  }
});
