"""Templates fleetimg writes onto SD cards (string.Template, $name placeholders).

Installed as the package fleetimg.overlays; see pyproject.toml.
"""
