"""mxw_notifier."""
