"""S2 coordination: rate limits, fair share, actuator leases and zombie detection."""
