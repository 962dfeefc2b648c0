"""`heimdall workers`: the connected workers as a table."""

from __future__ import annotations

from typing import Any

DASH = "—"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) and value else DASH


def _weights(worker: dict[str, Any]) -> str:
    if worker.get("hub_reachable"):
        return "downloadable"
    cached = [arch for arch, ok in (worker.get("pretrained_cached") or {}).items() if ok]
    return ("cached: " + ", ".join(sorted(cached))) if cached else "none"


def _devices(worker: dict[str, Any]) -> str:
    gpus = int(worker.get("gpu_count") or 0)
    if not gpus:
        return "cpu"
    names = sorted(set(worker.get("gpu_names") or []))
    return f"{gpus} gpu" + (f" ({', '.join(names)})" if names else "")


def render_workers(workers: list[dict[str, Any]]) -> str:
    """One block per worker, or a sentence saying there is none."""
    if not workers:
        return "no worker is connected (start one with `heimdall worker` or `heimdall up`)"
    lines = []
    for w in workers:
        running = w.get("running") or []
        lines.append(
            f"{w['id']}  {_devices(w)}  {w.get('cpu_threads') or DASH} threads"
            f"  {_gib(w.get('memory_bytes'))}  jobs {len(running)}/{w.get('max_jobs') or 1}"
        )
        cuda = w.get("cuda_version") or "none"
        lines.append(
            f"    torch {w.get('torch_version') or DASH}  CUDA {cuda}"
            f"  ImageNet weights: {_weights(w)}  seen {w.get('seen_at') or DASH}"
        )
        for job_id in running:
            lines.append(f"    running {job_id}")
    lines.append(f"{len(workers)} worker{'s' if len(workers) != 1 else ''}")
    return "\n".join(lines)
