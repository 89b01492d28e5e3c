"""mxw_local."""
