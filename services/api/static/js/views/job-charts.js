// The job page's charts: loss, accuracy and learning rate per epoch, and loss per batch.
// Epochs are keyed by number, so a row that arrives twice (REST fill, then a WebSocket replay)
// is drawn once.

import { lineChart } from "../charts.js";
import { h } from "../dom.js";

const MAX_BATCH_POINTS = 4000;

export class JobCharts {
  constructor() {
    const box = (name) => h("div", { class: "chart", dataset: { chart: name } });
    this.boxes = {
      loss: box("loss"),
      accuracy: box("accuracy"),
      lr: box("lr"),
      batch: box("batch"),
    };
    this.element = h("section", { class: "charts" }, Object.values(this.boxes));
    this.epochs = new Map();
    this.batch = { x: [], loss: [] };
    this.charts = null;
  }

  /** Draws the (empty) charts; call once `element` is in the document, so widths are known. */
  mount() {
    const perEpoch = { points: true, integerX: true };
    this.charts = {
      loss: lineChart(this.boxes.loss, {
        title: "Loss per epoch",
        series: [{ label: "train loss" }, { label: "val loss" }],
        ...perEpoch,
      }),
      accuracy: lineChart(this.boxes.accuracy, {
        title: "Accuracy per epoch",
        series: [
          { label: "train acc", color: "#16a34a" },
          { label: "val acc", color: "#9333ea" },
        ],
        ...perEpoch,
      }),
      lr: lineChart(this.boxes.lr, {
        title: "Learning rate",
        series: [{ label: "learning rate", color: "#ea580c" }],
        ...perEpoch,
      }),
      batch: lineChart(this.boxes.batch, {
        title: "Training loss per batch",
        series: [{ label: "batch loss", color: "#0891b2" }],
        points: false,
      }),
    };
  }

  /** Epoch rows (metrics endpoint or `epoch_completed` messages); `keep`: don't overwrite. */
  addEpochs(rows, keep = false) {
    for (const row of rows) {
      if (!(keep && this.epochs.has(row.epoch))) this.epochs.set(row.epoch, row);
    }
    const sorted = [...this.epochs.values()].sort((a, b) => a.epoch - b.epoch);
    const xs = sorted.map((r) => r.epoch);
    const col = (name) => sorted.map((r) => r[name] ?? null);
    this.charts.loss.set(xs, col("train_loss"), col("val_loss"));
    this.charts.accuracy.set(xs, col("train_accuracy"), col("val_accuracy"));
    this.charts.lr.set(xs, col("learning_rate"));
  }

  /** The recent epochs' durations in seconds, oldest first. */
  epochTimes(last = 5) {
    return [...this.epochs.values()]
      .sort((a, b) => a.epoch - b.epoch)
      .map((r) => r.epoch_time_s)
      .filter((t) => t > 0)
      .slice(-last);
  }

  /** Per-batch rows of the metrics endpoint (phase=train); x is the fractional epoch. */
  fillBatches(rows, batchesPerEpoch) {
    const maxBatch = new Map();
    for (const r of rows) maxBatch.set(r.epoch, Math.max(maxBatch.get(r.epoch) ?? 0, r.batch ?? 0));
    for (const r of rows) {
      const n = batchesPerEpoch || maxBatch.get(r.epoch) || 1;
      this.addBatch(r.epoch - 1 + (r.batch ?? n) / n, r.train_loss, false);
    }
    this.drawBatches();
  }

  /** One live batch point; ignored unless it lies after the last one drawn. */
  addBatch(x, loss, draw = true) {
    const { batch } = this;
    if (loss == null || !Number.isFinite(x)) return;
    if (batch.x.length && x <= batch.x[batch.x.length - 1]) return;
    batch.x.push(x);
    batch.loss.push(loss);
    if (batch.x.length > MAX_BATCH_POINTS) {
      // Keep long jobs light: halve the density of the older half.
      const half = Math.floor(batch.x.length / 2);
      const thin = (values) =>
        values
          .slice(0, half)
          .filter((_, i) => i % 2 === 0)
          .concat(values.slice(half));
      batch.x = thin(batch.x);
      batch.loss = thin(batch.loss);
    }
    if (draw) this.drawBatches();
  }

  drawBatches() {
    this.charts.batch.set(this.batch.x.slice(), this.batch.loss.slice());
  }

  destroy() {
    for (const chart of Object.values(this.charts ?? {})) chart.destroy();
  }
}
