"""The bundled search-space files, one ``<workload>.toml`` per workload (package data, not code).

They live at the top of the repository and install as this package's data, so that
``importlib.resources`` finds them from a wheel as well as from a checkout (see
:func:`autotune.space.bundled_space`).
"""
