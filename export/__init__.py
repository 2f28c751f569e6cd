"""Modality-aware pruning and export of MAPEX specialists (lands with the export issue)."""
