"""A local stand-in for Slack: Web API server, and requests as Slack sends them."""
