"""mxw_chunker."""
