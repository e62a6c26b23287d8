"""detector: real-time anomaly detection on Kafka streams with a stateful LSTM autoencoder."""

__version__ = "0.1.0"
