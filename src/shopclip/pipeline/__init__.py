"""Pipeline steps over a work folder: validate → (ground, enrich, train) → embed → index."""
