"""The bundle on disk: file names, manifest and fingerprint, clusters, routers and labels. Imports only the
foundation; loading a bundle into an engine is `engine.load`.

Public: `manifest.Bundle`, `manifest.read_manifest`, `names`, `routers.ClusterModel`.
"""
