"""MASA-efficient: use the meta predictions to skip (gating) and shorten (cutoff) solution rollouts."""
