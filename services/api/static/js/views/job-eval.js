// A job's evaluation: confusion-matrix heat map (validation per epoch, and the test set),
// per-class table, accuracy by SNR, live from `evaluation` messages; and "Try the model".

import { api } from "../api.js";
import { errorBox, h, num, percent } from "../dom.js";

/** Background for a cell holding `share` (0–1) of its row. */
const heat = (share) => `rgba(37, 99, 235, ${(0.08 + 0.82 * share).toFixed(3)})`;

function heatMap(classes, matrix, phase, epoch) {
  const head = h("tr", {}, h("th", {}, "true ↓ / predicted →"), classes.map((c) => h("th", {}, c)));
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return h(
      "tr",
      {},
      h("th", {}, classes[i]),
      row.map((count, j) =>
        h(
          "td",
          {
            dataset: { count: String(count), diagonal: String(i === j) },
            style: `background:${heat(total ? count / total : 0)}`,
            title: `${classes[i]} → ${classes[j]}: ${count}`,
          },
          String(count),
        ),
      ),
    );
  });
  return h(
    "table",
    { class: "heatmap", dataset: { heatmap: phase, epoch: String(epoch) } },
    h("thead", {}, head),
    h("tbody", {}, rows),
  );
}

function perClassTable(classes, perClass) {
  return h(
    "table",
    { class: "per-class", dataset: { perClass: "" } },
    h(
      "thead",
      {},
      h("tr", {}, ["class", "precision", "recall", "F1", "support"].map((t) => h("th", {}, t))),
    ),
    h(
      "tbody",
      {},
      classes.map((c) => {
        const m = perClass[c] ?? {};
        return h(
          "tr",
          {},
          h("td", {}, c),
          h("td", {}, num(m.precision, 3)),
          h("td", {}, num(m.recall, 3)),
          h("td", {}, num(m.f1, 3)),
          h("td", {}, String(m.support ?? 0)),
        );
      }),
    ),
  );
}

/** Accuracy per SNR band as a small line (SVG), one point per band. */
function snrCurve(bands) {
  if (!bands.length) return h("p", { class: "muted" }, "No SNR on these recordings.");
  const w = 360;
  const hgt = 120;
  const x = (i) => (bands.length === 1 ? w / 2 : 20 + (i * (w - 40)) / (bands.length - 1));
  const y = (acc) => hgt - 15 - acc * (hgt - 30);
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("class", "snr-curve");
  svg.dataset.bands = String(bands.length);
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", bands.map((b, i) => `${x(i)},${y(b.accuracy)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2563eb");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  bands.forEach((b, i) => {
    const label = document.createElementNS(svgNs, "text");
    label.setAttribute("x", String(x(i)));
    label.setAttribute("y", String(hgt - 2));
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("font-size", "9");
    label.textContent = `${b.snr_db_min}…${b.snr_db_max} dB`;
    const dot = document.createElementNS(svgNs, "circle");
    dot.setAttribute("cx", String(x(i)));
    dot.setAttribute("cy", String(y(b.accuracy)));
    dot.setAttribute("r", "3");
    dot.setAttribute("fill", "#2563eb");
    const tip = document.createElementNS(svgNs, "title");
    tip.textContent = `${b.snr_db_min} to ${b.snr_db_max} dB: ${percent(b.accuracy)} of ${b.support}`;
    dot.append(tip);
    svg.append(label, dot);
  });
  return svg;
}

export class JobEvaluation {
  constructor(url) {
    this.url = url;
    this.classes = [];
    this.val = new Map(); // epoch → split
    this.test = null;
    this.choice = "latest";
    this.select = h("select", {
      dataset: { evalChoice: "" },
      onchange: () => {
        this.choice = this.select.value;
        this.render();
      },
    });
    this.body = h("div", { class: "evaluation-body" }, h("p", { class: "muted" }, "No evaluation yet."));
    this.result = h("div", { class: "prediction", dataset: { prediction: "" } });
    const input = h("input", {
      type: "file",
      multiple: true,
      accept: ".wav,.sigmf-meta,.sigmf-data",
      dataset: { predictInput: "" },
      onchange: () => this.predict([...input.files]),
    });
    this.drop = h(
      "div",
      {
        class: "drop-box",
        dataset: { dropBox: "" },
        ondragover: (e) => {
          e.preventDefault();
          this.drop.classList.add("over");
        },
        ondragleave: () => this.drop.classList.remove("over"),
        ondrop: (e) => {
          e.preventDefault();
          this.drop.classList.remove("over");
          this.predict([...(e.dataTransfer?.files ?? [])]);
        },
      },
      "Drop a recording here (WAV, or a SigMF pair), or ",
      h("label", {}, "choose files", input),
    );
    this.element = h(
      "section",
      { class: "panel evaluation" },
      h("div", { class: "toolbar" }, h("h2", {}, "Evaluation"), h("div", { class: "spacer" }), this.select),
      this.body,
      h("h3", {}, "Try the model"),
      this.drop,
      this.result,
    );
  }

  async load() {
    const body = await api(`${this.url}/evaluation`);
    this.classes = body.classes;
    if (body.splits.val) this.val.set(body.splits.val.epoch, body.splits.val);
    if (body.splits.test) this.test = body.splits.test;
    this.epochs = body.val_epochs ?? [];
    this.render();
  }

  /** An `evaluation` WebSocket message. */
  add(message) {
    this.classes = message.classes;
    if (message.phase === "test") this.test = message;
    else {
      this.val.set(message.epoch, message);
      if (!this.epochs?.includes(message.epoch)) this.epochs = [...(this.epochs ?? []), message.epoch];
    }
    this.render();
  }

  async current() {
    if (this.choice === "test") return this.test;
    if (this.choice === "latest") return this.val.get(Math.max(...this.val.keys()));
    const epoch = Number(this.choice);
    if (!this.val.has(epoch)) {
      const body = await api(`${this.url}/evaluation?epoch=${epoch}`);
      this.val.set(epoch, body.splits.val);
    }
    return this.val.get(epoch);
  }

  renderSelect() {
    const options = [["latest", "validation · latest epoch"]];
    for (const e of [...(this.epochs ?? [])].sort((a, b) => b - a))
      options.push([String(e), `validation · epoch ${e}`]);
    if (this.test) options.push(["test", `test set · epoch ${this.test.epoch}`]);
    this.select.replaceChildren(
      ...options.map(([value, text]) => h("option", { value, selected: value === this.choice }, text)),
    );
  }

  async render() {
    this.renderSelect();
    if (!this.classes.length || (this.val.size === 0 && !this.test)) return;
    let split;
    try {
      split = await this.current();
    } catch (error) {
      this.body.replaceChildren(errorBox(error));
      return;
    }
    if (!split) return;
    const phase = this.choice === "test" ? "test" : "val";
    this.body.replaceChildren(
      h(
        "p",
        {},
        `${phase === "test" ? "Test set" : "Validation"}, epoch ${split.epoch}: accuracy `,
        percent(split.accuracy),
        " · macro-F1 ",
        num(split.macro_f1, 3),
      ),
      h(
        "div",
        { class: "evaluation-grid" },
        heatMap(this.classes, split.confusion_matrix, phase, split.epoch),
        h("div", {}, perClassTable(this.classes, split.per_class), h("h3", {}, "Accuracy by SNR"), snrCurve(split.accuracy_by_snr ?? [])),
      ),
    );
  }

  async predict(files) {
    if (!files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    this.result.replaceChildren(h("p", { class: "muted" }, "Predicting…"));
    try {
      const body = await api(`${this.url}/predict`, { method: "POST", body: form });
      this.result.replaceChildren(
        ...body.predictions.map((p) =>
          h(
            "div",
            { class: "prediction-row", dataset: { file: p.file, label: p.label } },
            h("strong", {}, p.file),
            " → ",
            h("span", { class: "label" }, p.label),
            ` (${percent(p.probabilities[p.label])})`,
          ),
        ),
      );
    } catch (error) {
      this.result.replaceChildren(errorBox(error));
    }
  }
}
