// peerix dashboards: live figures and charts of the last hour, from the JSON endpoint the page names
// (<body data-live="URL" data-every="MS">). Elements say what they show:
//   data-field="a.b" data-format="size"   the value at a.b of the answer, formatted;
//   <figure data-series="a.b">             a chart of the series at a.b ({step, end, values});
//   <tbody data-rows="a" data-template=T>  a row per item of the list at a (cells: data-item="field",
//                                          or "." for the whole item).
// When a field that <body data-refresh-on="a.b,c.d"> names changes (a transfer ended), the page's
// [data-refresh] parts are fetched again as the server renders them. Without JavaScript the rest of
// the page still works.
"use strict";
(() => {
  const body = document.body.dataset;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const size = (n) => {
    let unit = 0;
    for (; n >= 1024 && unit < units.length - 1; unit++) n /= 1024;
    return unit ? `${n.toFixed(1)} ${units[unit]}` : `${Math.round(n)} B`;
  };
  const span = (s) => s < 60 ? `${Math.round(s)} s` : s < 3600 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
    : `${(s / 3600).toFixed(1)} h`;
  const formats = {
    text: String,
    size,
    rate: (n) => `${size(n)}/s`,
    count: (n) => n.toLocaleString("en"),
    decimal: (n) => n.toLocaleString("en", {maximumFractionDigits: 1}),
    percent: (n) => `${Math.round(n * 100)}%`,
    span,
    name: (path) => path.slice(path.lastIndexOf("/") + 1),
    shares: (list) => {
      const total = list.reduce((sum, s) => sum + s.bytes, 0) || 1;
      return list.length === 1 ? list[0].name : list.map((s) => `${s.name} ${Math.round(100 * s.bytes / total)}%`)
        .join(", ");
    },
    // A transfer in flight: to a peer, or to Nix from its sources (none credited yet: from this host's store)
    parties: (t) => t.kind === "upload" ? `to peer ${t.peer.name || t.peer.id.slice(0, 10)}`
      : `to Nix from ${t.sources.length ? formats.shares(t.sources) : t.bytes ? "this host" : "(starting)"}`,
  };
  const show = (value, format) => value === null || value === undefined ? "-" : formats[format || "text"](value);
  const get = (data, path) => path === "." ? data
    : path.split(".").reduce((value, key) => value == null ? value : value[key], data);

  function fill(elements, data, attribute) {
    for (const element of elements) {
      const value = get(data, element.getAttribute(attribute));
      if (element.tagName === "PROGRESS") {
        element.max = get(data, element.dataset.max) || 1;
        element.value = value || 0;
        element.setAttribute("aria-valuetext", `${size(element.value)} of ${size(element.max)}`);
      } else {
        element.textContent = show(value, element.dataset.format);
      }
    }
  }

  function rows(tbody, items) {
    const template = document.getElementById(tbody.dataset.template).content.firstElementChild;
    const made = items.map((item) => {
      const row = template.cloneNode(true);
      fill(row.querySelectorAll("[data-item]"), item, "data-item");
      return row;
    });
    if (!made.length) {
      const row = document.createElement("tr"), cell = row.insertCell();
      cell.colSpan = template.cells.length;
      cell.className = "empty";
      cell.textContent = tbody.dataset.empty;
      made.push(row);
    }
    tbody.replaceChildren(...made);
  }

  function draw(figure, series) {
    const values = series.values, known = values.filter((v) => v !== null);
    const peak = Math.max(0, ...known), top = Number(figure.dataset.top) || peak || 1;
    let line = "", area = "";
    values.forEach((value, i) => {  // each slot a step across its width, shaded below; gaps where no data is
      if (value === null) return;
      const width = 360 / values.length, x = (i * width).toFixed(1), next = ((i + 1) * width).toFixed(1);
      const y = (98 - 94 * value / top).toFixed(1), steps = `L${x} ${y}L${next} ${y}`;
      const first = i === 0 || values[i - 1] === null, last = i === values.length - 1 || values[i + 1] === null;
      line += first ? `M${x} ${y}L${next} ${y}` : steps;
      area += `${first ? `M${x} 100` : ""}${steps}${last ? `L${next} 100Z` : ""}`;
    });
    const [fill, stroke] = figure.querySelectorAll("path");
    fill.setAttribute("d", area);
    stroke.setAttribute("d", line);
    const format = figure.dataset.format, now = known.length ? known[known.length - 1] : null;
    const summary = `now ${show(now, format)}, peak ${show(known.length ? peak : null, format)}`;
    figure.querySelector("figcaption span").textContent = summary;
    figure.querySelector("svg").setAttribute("aria-label",
      `${figure.querySelector("figcaption b").textContent}, last hour: ${summary}`);
  }

  async function refresh() {
    const page = new DOMParser().parseFromString(await (await fetch(location.href, {cache: "no-store"})).text(),
      "text/html");
    for (const part of document.querySelectorAll("[data-refresh]")) {
      const fresh = page.getElementById(part.id);
      if (fresh) part.replaceWith(document.adoptNode(fresh));
    }
  }

  let seen = null;  // the values of the fields that body.refreshOn names, at the last poll
  async function poll() {
    const state = document.getElementById("live-state");
    try {
      if (!document.hidden) {
        const answer = await fetch(body.live, {cache: "no-store"});
        if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
        const data = await answer.json();
        fill(document.querySelectorAll("[data-field]"), data, "data-field");
        for (const figure of document.querySelectorAll("figure[data-series]")) draw(figure, get(data, figure.dataset.series));
        for (const tbody of document.querySelectorAll("tbody[data-rows]")) rows(tbody, get(data, tbody.dataset.rows));
        const now = JSON.stringify((body.refreshOn || "").split(",").map((field) => get(data, field)));
        if (seen !== null && now !== seen) await refresh();
        seen = now;
        if (state) state.textContent = `live, updated ${new Date().toLocaleTimeString()}`;
      }
    } catch (error) {
      if (state) state.textContent = `live updates paused: ${error.message}`;
    }
    setTimeout(poll, Number(body.every) || 2000);
  }
  if (body.live) poll();
})();
