"""JSON Schemas shipped with sophon_core (installed as the ``sophon_core.schemas`` package)."""
