"""Build targets for `fleetimg build`: one directory per target with its Dockerfile,
target.toml (metadata) and app files; releases.toml maps L4T releases to NGC base images.

Installed as the package fleetimg.dockerfiles; see pyproject.toml.
"""
