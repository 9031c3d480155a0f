"""Analyses of (planned) models: hidden-state similarity between layers (paper §3.1, Appendix A.3/A.4)."""
