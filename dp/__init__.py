"""dp layer of secure_fed."""
