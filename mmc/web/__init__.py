"""HTTP plumbing shared by every resource: middlewares, body parsing."""
