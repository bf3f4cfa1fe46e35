"""HTTP: the server (app, routes, the connection guard, the deliveries' short path), the
webhook, health and metrics, the operators' API and console, and the keep-alive client the
Graph API is called with."""
