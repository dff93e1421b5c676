"""LeadScout Outbound: process wiring shared by the API, the worker and the CLI."""
