"""One module per defense; each registers itself with `defense.registry` when imported.

The registry imports every module here, so a new defense is a new file in this folder.
"""
