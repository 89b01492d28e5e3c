"""Webhook endpoints: users register URLs that the notifier calls, signed, when a job ends."""
