"""fleetimg: build, push and flash images for small NVIDIA Jetson clusters."""

__version__ = "0.1.0"
