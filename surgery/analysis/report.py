"""The files of a ``surgery similarity`` run: written here, read back here (one owner for their names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from surgery.analysis.similarity import SimilarityResult
from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_json, atomic_write_text

FILES = {
    "summary": "similarity.json",
    "matrix_json": "matrix.json",
    "matrix_npy": "matrix.npy",
    "heatmap": "heatmap.png",
    "variance": "variance.png",
}


def write_result(out_dir: Path, result: SimilarityResult, record: dict[str, Any]) -> None:
    """Write the matrix (``.npy`` exact, ``.json`` rounded to 6 decimals) and the summary ``record``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / FILES["matrix_npy"], result.matrix)
    matrix_record = {"labels": result.labels, "matrix": np.round(result.matrix, 6).tolist()}
    atomic_write_text(out_dir / FILES["matrix_json"], json.dumps(matrix_record) + "\n")
    atomic_write_json(out_dir / FILES["summary"], {**record, "files": FILES})


def read_result(directory: str | Path) -> SimilarityResult:
    """Read back the result a ``surgery similarity`` run wrote to ``directory`` (to re-plot or compare runs).

    Uses ``matrix.npy`` when present, else the rounded ``matrix.json``.
    """
    directory = Path(directory)
    try:
        summary = json.loads((directory / FILES["summary"]).read_text())
        if (directory / FILES["matrix_npy"]).is_file():
            matrix = np.load(directory / FILES["matrix_npy"])
        else:  # matrix.json holds it rounded to 6 decimals
            matrix = np.array(json.loads((directory / FILES["matrix_json"]).read_text())["matrix"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise SurgeryError(f"no similarity result in {directory}: {exc}") from exc
    hidden = summary["hidden_states"]

    def array(key: str) -> np.ndarray:
        return np.array([np.nan if value is None else value for value in hidden[key]], dtype=np.float64)

    return SimilarityResult(
        matrix=matrix,
        variance=array("variance"),
        mean_norm=array("mean_norm"),
        variance_text=array("variance_text_tokens"),
        mean_norm_text=array("mean_norm_text_tokens"),
        steps=[tuple(step) for step in hidden["steps"]],
        num_texts=hidden["texts"],
        num_tokens=hidden["tokens"],
        num_special_tokens=hidden["special_tokens"],
        num_truncated=hidden["truncated_texts"],
        max_length=hidden["max_length"],
        final_norm_applied=hidden["final_norm_applied"],
        exclude_special_tokens=hidden["exclude_special_tokens"],
        plan=summary["config"].get("plan_canonical"),
        executed=hidden["executed"],
    )
