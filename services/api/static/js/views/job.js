// One job: status, progress and ETA, live charts over the WebSocket, actions and artifacts.

import { JOBS, api, download, getToken } from "../api.js";
import {
  badge,
  duration,
  errorBox,
  h,
  isFinished,
  num,
  percent,
  progressBar,
  when,
} from "../dom.js";
import { LiveJob } from "../live.js";
import { JobCharts } from "./job-charts.js";
import { JobEvaluation } from "./job-eval.js";

export function jobView(root, { params: [jobId], query }) {
  const url = `${JOBS}/${encodeURIComponent(jobId)}`;
  // `#/jobs/<id>?replay=1`: what `heimdall replay` re-emits, drawn from the start.
  const replay = query?.get("replay") === "1";
  let job = null;
  let live = null;
  let stopped = false;
  const charts = new JobCharts();
  const evaluation = new JobEvaluation(url);

  const title = h("h1", {}, "Job");
  const statusSlot = h("span");
  const connection = h("span", { class: "connection", dataset: { state: "idle" } });
  const cancelButton = h(
    "button",
    { type: "button", class: "danger-outline", dataset: { action: "cancel" }, onclick: cancel },
    "Cancel",
  );
  // One button: Pause while the job is queued or running, Resume while it is paused.
  const pauseButton = h(
    "button",
    { type: "button", dataset: { action: "pause" }, onclick: togglePause },
    "Pause",
  );
  const deleteButton = h(
    "button",
    { type: "button", class: "danger", dataset: { action: "delete" }, onclick: remove },
    "Delete",
  );
  const actionError = h("div");
  const progress = h("div", { class: "progress-block" });
  const queueInfo = h("p", { class: "queue-info muted", hidden: true });
  const noData = h("p", { class: "no-data muted", hidden: true });
  const replayNote = replay
    ? h(
        "p",
        { class: "replay-note warning-box" },
        "Replay: this page shows the events `heimdall replay` re-emits, from the start. ",
        h("a", { href: `#/jobs/${jobId}` }, "Back to the recorded job"),
      )
    : "";
  const failure = h("div");
  const stats = h("dl", { class: "stats" });
  const artifacts = h("div", { class: "artifacts" });
  const configBox = h("div");
  root.append(
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "toolbar" },
        title,
        statusSlot,
        h("div", { class: "spacer" }),
        connection,
        h("a", { class: "button", href: `#/compare?ids=${jobId}` }, "Compare…"),
        pauseButton,
        cancelButton,
        deleteButton,
      ),
      h("p", { class: "muted mono" }, jobId),
      replayNote,
      actionError,
      progress,
      queueInfo,
      failure,
      noData,
      stats,
      artifacts,
    ),
    charts.element,
    evaluation.element,
    h("section", { class: "panel" }, h("h2", {}, "Configuration"), configBox),
  );

  charts.mount();

  function eta() {
    if (!job || job.status !== "running") return null;
    const total = job.total_epochs ?? 0;
    const done = ((job.progress_percent ?? 0) / 100) * total;
    const left = total - done;
    const times = charts.epochTimes();
    if (times.length) return (left * times.reduce((a, b) => a + b, 0)) / times.length;
    const started = job.started_at ? Date.parse(job.started_at) : NaN;
    if (Number.isFinite(started) && done > 0.05)
      return (((Date.now() - started) / 1000) * left) / done;
    return null;
  }

  function renderStatus() {
    if (!job) return;
    title.textContent = job.job_name ?? "Job";
    document.title = `${job.job_name} · Heimdall Training`;
    statusSlot.replaceChildren(badge(job.status));
    cancelButton.disabled = isFinished(job.status);
    renderPauseButton();
    renderProgress();
    renderDetails();
    renderNoData();
  }

  function renderProgress() {
    const parts = [`epoch ${job.current_epoch ?? 0}/${job.total_epochs}`];
    if (job.status === "running" && job.total_batches) {
      parts.push(`batch ${job.current_batch ?? 0}/${job.total_batches}`);
    }
    parts.push(`${(job.progress_percent ?? 0).toFixed(1)} %`);
    const left = eta();
    if (left != null) parts.push(`ETA ${duration(left)}`);
    progress.replaceChildren(progressBar(job.progress_percent, parts.join(" · ")));
    renderQueue();
  }

  function renderQueue() {
    const queued = job.status === "queued" && job.waiting_for;
    queueInfo.hidden = !queued;
    if (!queued) return;
    const place = job.queue_position
      ? `In the queue at position ${job.queue_position} of ${job.queue_length}; `
      : "Queued; ";
    queueInfo.dataset.queuePosition = job.queue_position ?? "";
    queueInfo.textContent = `${place}waiting for ${job.waiting_for}.`;
  }

  /** A failed job with no epoch and no batch has nothing to chart: say so instead. */
  function renderNoData() {
    const empty = charts.epochs.size === 0 && charts.batch.x.length === 0;
    const none = job?.status === "failed" && empty;
    noData.hidden = !none;
    noData.textContent = none ? "No data: the job failed before the first epoch." : "";
    charts.element.hidden = none;
  }

  function renderDetails() {
    failure.replaceChildren(
      job.status === "failed"
        ? h(
            "div",
            { class: "error-box failure", role: "alert" },
            h("strong", {}, "Training failed: "),
            job.error_message ?? "no error message",
          )
        : job.error_message
          ? h("div", { class: "warning-box" }, job.error_message)
          : "",
    );
    const m = job.metrics ?? {};
    // A failed job shows only what it has; a live one keeps every box (values are coming).
    const failed = job.status === "failed";
    const item = (term, value) =>
      failed && value === "—" ? [] : [h("div", {}, h("dt", {}, term), h("dd", {}, value))];
    const split =
      job.train_samples == null || job.val_samples == null
        ? ""
        : ` · ${job.train_samples} train / ${job.val_samples} val` +
          (job.test_samples ? ` / ${job.test_samples} test` : "");
    stats.replaceChildren(
      ...item("train loss", num(m.train_loss ?? job.train_loss)),
      ...item("val loss", num(m.val_loss ?? job.val_loss)),
      ...item("train acc", percent(m.train_accuracy ?? job.train_accuracy)),
      ...item("val acc", percent(m.val_accuracy ?? job.val_accuracy)),
      ...item(
        "learning rate",
        m.learning_rate == null ? "—" : Number(m.learning_rate).toExponential(2),
      ),
      ...item(
        "best epoch",
        job.best_epoch == null
          ? "—"
          : job.monitor && job.monitor !== "val_loss" && job.best_value != null
            ? `${job.best_epoch} (${job.monitor.replace("_", " ")} ${num(job.best_value)})`
            : `${job.best_epoch} (val loss ${num(job.best_val_loss)})`,
      ),
      ...item("model", job.model_architecture ?? "—"),
      ...item(
        "dataset",
        job.dataset ? `${job.dataset}${split}` : "—",
      ),
      ...item("created", when(job.created_at)),
      ...item("started", when(job.started_at)),
      ...item("finished", when(job.completed_at)),
    );
    const links = [];
    if (job.checkpoint_path) links.push(["checkpoint", "Checkpoint (.pt)"]);
    if (job.onnx_model_path) links.push(["onnx", "ONNX model"]);
    artifacts.replaceChildren(
      ...(links.length
        ? [
            h("span", { class: "muted" }, "Artifacts: "),
            ...links.map(([kind, text]) =>
              h(
                "a",
                {
                  class: "button",
                  href: `${url}/artifacts/${kind}`,
                  download: "",
                  dataset: { artifact: kind },
                  onclick: (event) => {
                    if (!getToken()) return; // the plain link needs no header
                    event.preventDefault();
                    download(`${url}/artifacts/${kind}`).catch((error) =>
                      actionError.replaceChildren(errorBox(error)),
                    );
                  },
                },
                `⬇ ${text}`,
              ),
            ),
          ]
        : []),
    );
  }

  function renderConfig() {
    const config = job?.config ?? {};
    const entries = Object.entries(config).sort(([a], [b]) => a.localeCompare(b));
    configBox.replaceChildren(
      h(
        "dl",
        { class: "config" },
        entries.map(([k, v]) =>
          h("div", {}, h("dt", {}, k), h("dd", { class: "mono" }, JSON.stringify(v))),
        ),
      ),
    );
  }

  function setConnection(state, detail) {
    connection.dataset.state = state;
    connection.textContent = {
      connecting: "connecting…",
      live: "● live",
      retrying: `reconnecting in ${duration((detail ?? 0) / 1000)}`,
      closed: "finished",
      error: `live feed: ${detail}`,
      idle: "",
    }[state];
    if (state === "closed" || state === "error") refresh();
  }

  function onMessage(message) {
    switch (message.event) {
      case "training_status": {
        const { event, metrics, timestamp, ...fields } = message;
        job = { ...job, ...fields, metrics: { ...(job?.metrics ?? {}), ...metrics } };
        if (message.status === "running" && message.current_batch && message.total_batches) {
          charts.addBatch(
            message.current_epoch - 1 + message.current_batch / message.total_batches,
            message.batch_loss,
          );
        }
        renderStatus();
        break;
      }
      case "epoch_completed":
        charts.addEpochs([message]);
        break;
      case "evaluation":
        evaluation.add(message);
        break;
      case "error":
        actionError.replaceChildren(errorBox(message.message));
        break;
    }
  }

  async function refresh() {
    try {
      // The API answers with the job as it stands (shared/job_state: the row plus what the
      // recorder has not written yet), so a job the socket saw finish reads finished here too.
      const detail = await api(url);
      if (stopped) return;
      job = { ...job, ...detail.job };
      charts.addEpochs(detail.recent_metrics ?? [], true);
      renderStatus();
    } catch (error) {
      if (!stopped) actionError.replaceChildren(errorBox(error));
    }
  }

  async function cancel() {
    actionError.replaceChildren();
    cancelButton.disabled = true;
    try {
      const body = await api(`${url}/cancel`, { method: "POST" });
      job = { ...job, ...body.job };
      renderStatus();
    } catch (error) {
      actionError.replaceChildren(errorBox(error));
      cancelButton.disabled = isFinished(job?.status);
    }
  }

  function renderPauseButton() {
    const paused = job?.status === "paused";
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.dataset.action = paused ? "resume" : "pause";
    pauseButton.disabled = !["queued", "running", "paused"].includes(job?.status);
  }

  async function togglePause() {
    const action = pauseButton.dataset.action;
    actionError.replaceChildren();
    pauseButton.disabled = true;
    try {
      const body = await api(`${url}/${action}`, { method: "POST" });
      job = { ...job, ...body.job };
      renderStatus();
    } catch (error) {
      actionError.replaceChildren(errorBox(error));
      renderPauseButton();
    }
  }

  async function remove() {
    if (!confirm(`Delete job “${job?.job_name ?? jobId}” and all its metrics, events and files?`))
      return;
    try {
      await api(url, { method: "DELETE" });
      location.hash = "#/jobs";
    } catch (error) {
      actionError.replaceChildren(errorBox(error));
    }
  }

  async function load() {
    // The job first, then its metrics: the WebSocket resumes after the job's last event id,
    // so anything the metrics miss arrives on the socket (epochs are keyed, so none doubles).
    const detail = await api(url);
    job = detail.job;
    renderStatus();
    renderConfig();
    const [epochRows, batchRows] = await Promise.all([
      api(`${url}/metrics?phase=epoch`),
      api(`${url}/metrics?phase=train&points=1000`),
    ]);
    if (stopped) return;
    if (replay) {
      live = new LiveJob(jobId, { onMessage, onState: setConnection, path: "/ws/replay/" });
      return;
    }
    charts.addEpochs(epochRows.metrics);
    charts.fillBatches(batchRows.metrics, job.total_batches);
    renderStatus();
    await evaluation.load();
    if (!isFinished(job.status)) {
      live = new LiveJob(jobId, {
        after: job.last_event_id ?? "0-0",
        onMessage,
        onState: setConnection,
      });
    }
  }

  load().catch((error) => {
    if (!stopped) actionError.replaceChildren(errorBox(error));
  });
  const tick = setInterval(() => job?.status === "running" && renderProgress(), 1000);

  return () => {
    stopped = true;
    clearInterval(tick);
    live?.stop();
    charts.destroy();
  };
}
