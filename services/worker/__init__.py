"""The training worker: takes jobs from the arq queue, trains them, reports events.

Entry points: `services.worker.app.run_worker(settings, *, burst=False, max_jobs=1)` (what
`heimdall worker` runs) and `create_worker(settings, ...)` (an arq Worker, for tests). The arq
task is `train_job(ctx, job_id)`.

Layout, one concern per module:
- `app` — arq wiring, resources opened at start-up and closed at shutdown;
- `runner` — one job from the queue to its final event (checks, cancel, supervision);
- `listener` — the commands stream (cancel/delete), read by every worker;
- `process` — training process(es) and the one-shot gate for the final event;
- `preempt` — pause, suspend and cancel as one enum (hold signal, `Held`, exit codes);
- `trainer` — a job's training from start or checkpoint to its JobCompleted;
- `run` — what to train (`TrainSpec`) and the run built for it (`prepare`); `loop` — its epochs;
- `state` — what a checkpoint holds, saved and restored over one key table; `resume` — where a
  run stands and which checkpoint it continues from; `artifacts` — writing checkpoints, ONNX;
- `split`, `data`, `features`, `model`, `optim`, `progress`, `ddp`, `checkpoint`, `onnx_export`.

The worker never writes job rows: it reads the job and its recordings and emits events, which
the recorder projects into the database.
"""
