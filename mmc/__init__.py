"""mmc: an open management service for fleets of Eclipse Mosquitto brokers."""

__version__ = "0.1.0"
