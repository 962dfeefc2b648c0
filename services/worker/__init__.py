"""The training worker: takes jobs from the arq queue, trains them, reports events.

Entry points: `services.worker.app.run_worker(settings, *, burst=False, max_jobs=1)` (what
`heimdall worker` runs) and `create_worker(settings, ...)` (an arq Worker, for tests). The arq
task is `train_job(ctx, job_id)`.

Layout, one concern per module:
- `app` — arq wiring, resources opened at start-up and closed at shutdown;
- `runner` — one job from the queue to its final event (checks, cancel, supervision);
- `listener` — the commands stream (cancel/delete), read by every worker;
- `process` — training process(es) and the one-shot gate for the final event;
- `trainer` — the training loop as plain typed functions; `ddp` — data parallelism;
- `data`, `features`, `model`, `optim`, `progress`, `artifacts`, `checkpoint`, `onnx_export`.

The worker never writes job rows: it reads the job and its recordings and emits events, which
the recorder projects into the database.
"""
