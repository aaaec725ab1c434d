"""A public benchmark protocol in `eval`: Marqo's KAGL ground truth (marqo-FashionCLIP's `gt_query_doc` files),
scored the way that repository scores it (BEIR's evaluator), over the products an evaluation holds out.

A protocol folder holds one JSON file per task, `{"query": {"<product id>": 1, ...}}`. Relevant ids are
restricted to the held-out products; a query left with none is dropped. For the top 10 of each query:
R@k = |relevant in top k| / |relevant|, P@k = |relevant in top k| / k, MRR = 1 / rank of the first relevant
result (0 if none in the top k), each averaged over queries.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclip_qdrant.errors import QueryError

# task file stem -> what the leaderboard reports for it (recall for text-to-image, precision for the categories)
TASKS: dict[str, str] = {"text-to-image": "recall", "category": "precision", "sub-category": "precision",
                         "fine-category": "precision", "colour": "precision"}


@dataclass(frozen=True)
class ProtocolTask:
    name: str
    queries: dict[str, frozenset[str]]  # query text -> relevant product ids


@dataclass(frozen=True)
class ProtocolRow:
    task: str
    ranking: str
    queries: int
    metrics: dict[str, float]  # "R@1", "R@10", "P@1", "P@10", "MRR"


def read_protocol(folder: str | Path) -> list[ProtocolTask]:
    """The tasks of TASKS found in `folder`, in that order; a folder with none, or a malformed file, is one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QueryError(f"--protocol {folder}: not a folder of ground-truth files")
    tasks = []
    for name in TASKS:
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise QueryError(f"--protocol: cannot read {path.name}: {str(e).splitlines()[0]}") from None
        if not isinstance(doc, dict) or not all(isinstance(q, str) and isinstance(rel, dict) for q, rel in doc.items()):
            raise QueryError(f'--protocol: {path.name} must map each query to {{"<product id>": 1, ...}}')
        queries = {q.strip(): frozenset(str(i) for i, v in rel.items() if v) for q, rel in doc.items() if q.strip()}
        tasks.append(ProtocolTask(name, {q: r for q, r in queries.items() if r}))
    if not tasks:
        raise QueryError(f"--protocol {folder}: none of {', '.join(f'{t}.json' for t in TASKS)} is there")
    return tasks


def restrict(task: ProtocolTask, ids: Collection[str]) -> dict[str, frozenset[str]]:
    """The task's queries with their relevant ids cut to `ids` (the held-out products); empty ones dropped."""
    keep = set(ids)
    out = {q: rel & keep for q, rel in task.queries.items()}
    return {q: frozenset(rel) for q, rel in out.items() if rel}


def score(results: Sequence[Sequence[str]], relevant: Sequence[frozenset[str]], top_k: int = 10) -> dict[str, float]:
    """The protocol's metrics for one ranking: R@1, R@top_k, P@1, P@top_k, MRR (within top_k), query means."""
    if not results:
        return {}
    sums = {"R@1": 0.0, f"R@{top_k}": 0.0, "P@1": 0.0, f"P@{top_k}": 0.0, "MRR": 0.0}
    for ids, rel in zip(results, relevant, strict=True):
        flags = [i in rel for i in list(ids)[:top_k]]
        sums["R@1"] += sum(flags[:1]) / len(rel)
        sums[f"R@{top_k}"] += sum(flags) / len(rel)
        sums["P@1"] += sum(flags[:1])
        sums[f"P@{top_k}"] += sum(flags) / top_k
        sums["MRR"] += 1.0 / (flags.index(True) + 1) if any(flags) else 0.0
    return {k: v / len(results) for k, v in sums.items()}
