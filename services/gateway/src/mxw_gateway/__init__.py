"""mxw_gateway."""
