"""Fused arrays: K same-shape trials trained as one batched model (``fused``), the session that runs
them in one actor (``fused_session``) and their per-member diagnostics (``fused_diagnostics``).
"""
