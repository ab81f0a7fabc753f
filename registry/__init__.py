"""CNCF Distribution registry configuration for `fleetimg registry up`.

Installed as the package fleetimg.registry_files; see pyproject.toml.
"""
