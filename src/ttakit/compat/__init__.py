"""Drop-in modules for users of other TTA libraries, built on ttakit's views and model-free core.

``import ttakit.compat.ttach as tta`` offers ttach 0.0.3's public API (see :mod:`.ttach`).

Example:
    >>> import ttakit.compat.ttach as tta
    >>> len(tta.aliases.d4_transform())
    8
"""
