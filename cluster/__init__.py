"""Ray execution: long-lived trial actors, the actor pool backend, local and remote clusters."""
