"""protocol layer of secure_fed."""
