"""mxw_shared."""
