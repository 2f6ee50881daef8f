"""crypto layer of secure_fed."""
