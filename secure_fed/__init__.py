"""secure_fed: privacy-hardened FedHPro (federated hyper-prototype learning)."""

__version__ = "0.1.0"
