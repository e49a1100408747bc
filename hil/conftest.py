"""The HIL scenarios run with the rig's pytest plugin (hil/plugin.py, loaded by pyproject's addopts)."""
