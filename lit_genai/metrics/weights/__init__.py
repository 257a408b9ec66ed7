"""Weights shipped with lit_genai (data files; see experiments/eval/ for how each was made)."""
