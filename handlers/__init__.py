"""Serving-side code. Everything here ships inside the .mar and must not import `training`."""
