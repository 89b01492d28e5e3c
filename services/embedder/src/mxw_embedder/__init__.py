"""mxw_embedder."""
