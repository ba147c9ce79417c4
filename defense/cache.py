"""The revision of what the defense side caches on disk: re-encoded images (`defense.ood`),
backbone features (`defense.features`) and trained filters (the OOD benchmark's and the
experiments'). Their names say which images, weights and settings they came from, not which
code: a change that makes other encodings, features or filters from the same inputs bumps
REVISION, and the older files are left unused instead of passing for the new code's."""

REVISION = 1
"""1 since 2026-12-07, when it entered the names: files cached before are made again."""
