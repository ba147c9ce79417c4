"""Write a transfer set as an ImageFolder-like tree plus a JSON of answers, for other tools.

`<out>/images/<victim label>/<position>_<pool index>.png` holds the exact images the victim saw
(the same pixels, `pixels_sha256`; the same bytes as sent, `sha256`, where they were PNG made
by this machine's encoder or stored); `<out>/answers.json` holds the run and, per image, the
answer as the API returned it. Folder names are the victim's label indices, zero-padded so that
sorting them keeps their order; only labels that occur get a folder, so an ImageFolder's own
class index can differ from the victim's: use the `label` in answers.json for that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attacker.store import image_format, iter_queries, load_run, open_store
from attacker.transfer import sent_payloads
from shared.errors import TestbedError
from shared.imaging import encode_image


@dataclass
class ExportResult:
    run_id: int
    images: int
    out: Path
    answers_json: Path


def export_run(db: str | Path, out: str | Path, run_id: int | None = None) -> ExportResult:
    """Export run `run_id` (default: the latest) of the transfer set in `db` to `out`."""
    db, out = Path(db), Path(out)
    if not db.exists():
        raise TestbedError(f"transfer set {db} does not exist")
    factory = open_store(db)
    with factory() as session:
        run = load_run(session, run_id)
        queries = list(iter_queries(session, run.id))
        fmt = image_format(run)
        # a file per image: the bytes sent when they were PNG, else (v2's raw pixels) as PNG
        files = [
            data if fmt == "png" else encode_image(image, "png")
            for image, data in sent_payloads(session, run, queries)
        ]
    width = len(str(max((run.num_outputs or 1) - 1, 0)))
    images_dir = out / "images"
    entries = []
    for query, data in zip(queries, files, strict=True):
        relative = (
            Path("images")
            / f"{query.label:0{width}d}"
            / (f"{query.position:06d}_{query.pool_index}.png")
        )
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)
        entries.append(
            {
                "position": query.position,
                "pool_index": query.pool_index,
                "reference": query.reference,
                "sha256": query.sha256,
                "pixels_sha256": query.pixels_sha256,
                "file": relative.as_posix(),
                "label": query.label,
                "answer": query.answer,
                "latency_ms": query.latency_ms,
                "created_at": query.created_at.isoformat() if query.created_at else None,
            }
        )
    document = {
        "run": {
            "id": run.id,
            "victim_url": run.victim_url,
            "pool": run.pool,
            "pool_size": run.pool_size,
            "pool_image_size": run.pool_image_size,
            "seed": run.seed,
            "strategy": run.strategy,
            "budget": run.budget,
            "status": run.status,
            "output_mode": run.output_mode,
            "num_outputs": run.num_outputs,
            "input_size": run.input_size,
            "params": run.params,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        },
        "images_dir": images_dir.name,
        "queries": entries,
    }
    out.mkdir(parents=True, exist_ok=True)
    answers = out / "answers.json"
    tmp = answers.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(answers)
    return ExportResult(run.id, len(entries), out, answers)
