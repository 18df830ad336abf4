"""What a notebook shows: widgets and the `%lx` magics (ipywidgets/IPython are imported here only)."""
