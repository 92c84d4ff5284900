"""The federation coordinator: FedAvg rounds over federated sites, released like a trained
model."""
