"""Held-out evaluation and Marqo's KAGL protocol. Above search, indexing and training (trains only when
no bundle is given, lazily). Public: `run.evaluate`, `report.EvalReport`, `protocol.read_protocol`.
"""
