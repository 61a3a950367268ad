"""nerfstudio integration: the da3-data dataparser (see dataparser.py)."""
