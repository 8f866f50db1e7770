"""Infrastructure every stage shares: column names and types, errors, the build-dir layout and tier
manifest, resumable units, Ray start-up, failpoints and the one tar reader/writer.

Nothing here imports a stage: stages (``curate.download``, ``curate.annotate``, ...) import from here.
"""
