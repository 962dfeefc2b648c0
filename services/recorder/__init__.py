"""The recorder: persists every event of the events stream to PostgreSQL, exactly once.

- `app.py`: `run_recorder(settings, stop=..., consumer=...)`, the consume → write → ack loop.
- `stream.py`: the consumer group: XREADGROUP, XAUTOCLAIM, XACK, safe XTRIM MINID.
- `entries.py`: stream entries parsed into events and rows (metric ids are uuid5s).
- `store.py`: one transaction per batch, set-based and idempotent; waits out outages.
- `projection.py`: `training_jobs` as the one reducer (`shared.live_state`) folds the events.
- `timescale.py`: compression/retention policies on TimescaleDB.
- `settings.py`: the recorder's own settings (`HEIMDALL_RECORDER_*`, `HEIMDALL_METRICS_*`).

Run one with `python -m services.recorder` (or `heimdall recorder`).
"""
