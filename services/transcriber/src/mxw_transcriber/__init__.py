"""mxw_transcriber."""
