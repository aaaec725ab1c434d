"""load_bundle: verify a bundle's files against its manifest, then open it on the ONNX or the torch engine."""

from __future__ import annotations

from pathlib import Path

from enclip_qdrant.bundle.clusters import load_clusters
from enclip_qdrant.bundle.manifest import (
    Bundle,
    EnsembleEngine,
    check_folder_inside,
    inside,
    read_manifest,
    verify_files,
)
from enclip_qdrant.bundle.names import CLUSTERS
from enclip_qdrant.errors import BundleError


def load_bundle(path: str | Path, verify: bool = True, engine: str = "auto", check_onnx: bool = True,
                device: str = "auto") -> Bundle:
    """Load a bundle; with `verify`, refuse it unless its files hash to the fingerprint it claims.

    `engine`: "onnx" runs the exported towers on ONNX Runtime (no torch imported), "torch" the open_clip
    members, "auto" ONNX when the bundle has it. The ONNX engine checks the files it reads (ONNX towers,
    member configs, clusters) and never reads the torch weights; the torch engine hashes the ONNX towers too
    (the fingerprint covers them), unless `check_onnx` is off: `export --force`, which rebuilds them.
    `device` (auto, cpu, cuda, mps): where the members run; ONNX Runtime uses its CUDA provider on cuda (and on
    auto when onnxruntime-gpu sees a GPU)."""
    from enclip_qdrant.engine.devices import check_device, onnx_providers
    from enclip_qdrant.engine.onnx import choose_engine

    check_device(device)

    path = Path(path)
    manifest = read_manifest(path)
    folders = []
    for m in manifest["members"]:
        folder = inside(path, m["path"], f"member {m['name']!r}")
        check_folder_inside(path, folder, f"member {m['name']!r}")
        folders.append(folder)
    cpath = inside(path, CLUSTERS, "clusters")
    if not cpath.is_file():
        raise BundleError(f"{path} has no {CLUSTERS}")
    engine = choose_engine(manifest, engine)
    if verify:
        verify_files(path, manifest, folders, cpath, weights=engine == "torch", onnx=check_onnx)
    ensemble: EnsembleEngine
    if engine == "onnx":
        from enclip_qdrant.engine.onnx import OnnxEnsemble

        ensemble = OnnxEnsemble(path, manifest, folders, verify=verify, providers=onnx_providers(device))
    else:
        from enclip_qdrant.engine.torch.device import resolve_device
        from enclip_qdrant.engine.torch.load import load_member
        from enclip_qdrant.engine.torch.members import Ensemble

        where = resolve_device(device)
        ensemble = Ensemble([load_member(folder, m["vector"])
                             for m, folder in zip(manifest["members"], folders, strict=True)]).to(where)
    clusters = load_clusters(cpath, manifest["clusters"]["criterion"])
    return Bundle(path, manifest, ensemble, clusters)
