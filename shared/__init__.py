"""Code both services use: settings, message schemas, broker topology, storage."""
